//! A domain spec: one accelerated domain, its origin, its cache policy and its custom page
//! rules, as written in a domain file (or a store key), and the checks of its values.

use super::values::{CodePattern, DomainName, Dur, PageUrl};
use super::{ConfigError, Location};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// A domain spec as written. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    /// The name served: `exp.example.com` or `*.example.com`.
    pub domain: String,
    /// Where requests for the domain go.
    pub origin: OriginSpec,
    /// Freshness defaults of the content cache.
    #[serde(default)]
    pub cache: DomainCacheSpec,
    /// The custom page rules.
    #[serde(default)]
    pub custom_pages: Vec<RuleSpec>,
    /// Whether the origin may keep its own error with `Custom-Page: off`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub custom_pages_opt_out: bool,
    /// The domain's certificate for HTTPS clients (chosen by SNI): files, or issued by ACME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DomainTls>,
    /// `Strict-Transport-Security` on the domain's HTTPS responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<HstsSpec>,
    /// Answer cleartext requests with a redirect to `https://`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub https_redirect: bool,
    /// Filters to run for this domain, in order: a name, or a name with its settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<serde_yaml::Value>,
}

/// The `origin:` section of a domain spec.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSpec {
    /// `host:port` of each origin server, tried in order on connect failure.
    pub servers: Vec<String>,
    /// Host header sent to the origin; by default the requested host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Bound of one connection attempt.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Bound of one read from the origin; a longer stall is answered 504.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Dur,
    /// Connect to the origin over TLS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
    /// Name sent as SNI and verified in the origin's certificate; by default `host`, else the
    /// requested host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Verify the origin's certificate and name.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub verify: bool,
    /// PEM file of the roots to trust instead of the system's, relative to the spec's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// A certificate chain and its private key, as PEM files (relative to the file naming them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertSpec {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, RSA or EC).
    pub key: PathBuf,
}

/// A domain's `tls:` section: a certificate and key as files, or `acme: true` (the edge orders
/// and renews one; see the edge file's `tls.acme`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainTls {
    /// The chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key (PKCS#8, RSA or EC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// A certificate from the edge's ACME directory instead of files.
    #[serde(default, skip_serializing_if = "is_false")]
    pub acme: bool,
}

impl DomainTls {
    /// The files, when the certificate is given as files.
    pub fn files(&self) -> Option<CertSpec> {
        match (&self.cert, &self.key, self.acme) {
            (Some(cert), Some(key), false) => Some(CertSpec {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// A domain's `hsts:` section (RFC 6797).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HstsSpec {
    /// How long browsers remember to use HTTPS only.
    #[serde(default = "default_hsts_max_age")]
    pub max_age: Dur,
    /// The subdomains too.
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_subdomains: bool,
    /// Ask to be put on the browsers' preload lists.
    #[serde(default, skip_serializing_if = "is_false")]
    pub preload: bool,
}

fn default_hsts_max_age() -> Dur {
    Dur(Duration::from_secs(180 * 24 * 3600))
}

impl HstsSpec {
    /// The header value: `max-age=15552000; includeSubDomains; preload`.
    pub fn header_value(&self) -> String {
        let mut value = format!("max-age={}", self.max_age.0.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        value
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}
fn yes() -> bool {
    true
}

impl Default for OriginSpec {
    /// No server, and the default timeouts.
    fn default() -> Self {
        OriginSpec {
            servers: Vec::new(),
            host: None,
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            tls: false,
            sni: None,
            verify: true,
            ca_file: None,
        }
    }
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_read_timeout() -> Dur {
    Dur(Duration::from_secs(15))
}

/// The `cache:` section of a domain spec.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainCacheSpec {
    /// Freshness when the origin gives none; zero means such responses are not cached.
    #[serde(default)]
    pub default_ttl: Dur,
    /// Minimum freshness of an origin 4xx/5xx (negative caching); zero turns it off.
    #[serde(default)]
    pub error_ttl: Dur,
    /// One cache entry for `http://` and `https://` requests of a URL (by default each scheme
    /// has its own, so an origin redirecting one to the other cannot make a cached loop).
    #[serde(default, skip_serializing_if = "is_false")]
    pub share_schemes: bool,
    /// A targeted cache-control field of this domain's own (RFC 9213), obeyed before
    /// `CDN-Cache-Control` and `Cache-Control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeted_field: Option<String>,
    /// Remove the targeted fields from responses (by default they are forwarded, as RFC 9213
    /// intends for chains of CDNs: a cache downstream may obey them too).
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_targeted: bool,
}

/// Where an error status came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The origin sent the status.
    Origin,
    /// The edge produced it: no usable origin response (502) or a timeout (504).
    Edge,
    /// Either.
    #[default]
    Any,
}

impl Source {
    /// Whether a rule with this source applies to a status that came from `actual`.
    pub fn admits(self, actual: Source) -> bool {
        self == Source::Any || self == actual
    }
}

/// A custom page rule as written in a file or sent to the admin API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Which statuses the rule answers.
    pub code: CodePattern,
    /// The page (served in place) or the redirect target; none for a `skip` rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<PageUrl>,
    /// Which requests the rule is for (none: every request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<WhenSpec>,
    /// No custom page for the requests the rule is for: the origin's own response.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip: bool,
    /// Whether the rule applies to origin statuses, edge statuses or both.
    #[serde(default, skip_serializing_if = "is_any")]
    pub source: Source,
    /// Status to answer with instead of the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Redirect code: redirect to `url` instead of serving it in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<u16>,
    /// Pages for other media types (`application/json: url`, or `{url, languages}` for a
    /// page with translations), chosen by the client's `Accept`; `url` is the HTML page. In
    /// order: the first wins a tie.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "ordered_map")]
    pub variants: Vec<(String, VariantSpec)>,
    /// Pages in other languages (`fr: url`), chosen by `Accept-Language`; `url` is the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "ordered_map")]
    pub languages: Vec<(String, PageUrl)>,
    /// The language of `url`'s page and of each variant's own page (`en`): said in
    /// `Content-Language`, and a client preferring it keeps the default page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Whether the edge makes the rule's HTML pages self-contained (stylesheets, images and
    /// fonts inlined); `false` serves them as the origin wrote them.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub inline: bool,
}

/// A rule's `when:`: the requests it is for. Every part given must match: one of the
/// `paths`, one of the `methods`, and every one of the `headers`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    /// Globs on the request's path (without the query): `*` within a segment, `**` across.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Request methods (upper case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Request header fields and their exact values (`*`: present with any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "ordered_map")]
    pub headers: Vec<(String, String)>,
}

/// The methods a `when.methods` may name.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

impl WhenSpec {
    /// Checks each part; the key is relative to `when` (`paths[0]`).
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.paths.is_none() && self.methods.is_none() && self.headers.is_empty() {
            return Err((
                String::new(),
                "an empty condition; give paths, methods or headers (or leave when out)".into(),
            ));
        }
        if let Some(paths) = &self.paths {
            if paths.is_empty() {
                return Err((
                    "paths".into(),
                    "an empty list matches nothing; give at least one glob like /shop/*".into(),
                ));
            }
            for (j, glob) in paths.iter().enumerate() {
                if let Err(m) = check_glob(glob) {
                    return Err((format!("paths[{j}]"), m));
                }
            }
        }
        if let Some(methods) = &self.methods {
            if methods.is_empty() {
                return Err((
                    "methods".into(),
                    "an empty list matches nothing; give methods like [GET, HEAD]".into(),
                ));
            }
            for (j, method) in methods.iter().enumerate() {
                if !METHODS.contains(&method.as_str()) {
                    return Err((
                        format!("methods[{j}]"),
                        format!(
                            "{method:?} is not a method; expected one of {}",
                            METHODS.join(", ")
                        ),
                    ));
                }
            }
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    format!("headers.{name}"),
                    format!("{name:?} is not a header field name (a token, like X-App)"),
                ));
            }
            if value.is_empty() || http::HeaderValue::from_str(value).is_err() {
                return Err((
                    format!("headers.{name}"),
                    format!("{value:?} is not a value to compare with; give the exact value, or \"*\" for present"),
                ));
            }
        }
        Ok(())
    }

    /// The condition in a few words, for logs and the console (`paths /shop/*, /cart`).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(paths) = &self.paths {
            parts.push(format!("paths {}", paths.join(", ")));
        }
        if let Some(methods) = &self.methods {
            parts.push(format!("methods {}", methods.join(", ")));
        }
        if !self.headers.is_empty() {
            let headers: Vec<String> = self.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
            parts.push(format!("headers {}", headers.join(", ")));
        }
        parts.join("; ")
    }
}

/// A path glob: absolute, and one `globset` compiles with `*` kept within a segment.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if !glob.starts_with('/') {
        return Err(format!(
            "{glob:?} is not a path; a glob starts with / (like /shop/*)"
        ));
    }
    path_glob(glob)
        .map(|_| ())
        .map_err(|e| format!("{glob:?} is not a glob: {e}"))
}

/// The matcher of a path glob: `*` within a segment, `**` across segments.
pub fn path_glob(glob: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(glob).literal_separator(true).build()
}

/// The page of one variant: its URL, and its translations (chosen like a rule's `languages`).
/// Written as the URL alone, or as `{url, languages}`.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantSpec {
    /// The page.
    pub url: PageUrl,
    /// The page in other languages (`fr: url`).
    pub languages: Vec<(String, PageUrl)>,
}

impl From<PageUrl> for VariantSpec {
    fn from(url: PageUrl) -> VariantSpec {
        VariantSpec {
            url,
            languages: Vec::new(),
        }
    }
}

/// The long form of a variant, as written.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct VariantWritten {
    url: PageUrl,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "ordered_map")]
    languages: Vec<(String, PageUrl)>,
}

impl<'de> Deserialize<'de> for VariantSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = VariantSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a page URL, or a map with url and languages")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<VariantSpec, E> {
                s.parse::<PageUrl>().map(VariantSpec::from).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<VariantSpec, A::Error> {
                let written = VariantWritten::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(VariantSpec {
                    url: written.url,
                    languages: written.languages,
                })
            }
        }
        d.deserialize_any(Either)
    }
}

impl Serialize for VariantSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.languages.is_empty() {
            return self.url.serialize(s);
        }
        VariantWritten {
            url: self.url.clone(),
            languages: self.languages.clone(),
        }
        .serialize(s)
    }
}

/// A YAML or JSON map kept in its written order: `Vec<(String, T)>` as a map.
pub mod ordered_map {
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::marker::PhantomData;

    /// Writes the entries as a map.
    pub fn serialize<S: Serializer, T: Serialize>(entries: &[(String, T)], s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(entries.len()))?;
        for (key, value) in entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }

    /// Reads a map into entries, in order.
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<(String, T)>, D::Error> {
        struct Entries<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Entries<T> {
            type Value = Vec<(String, T)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of names to page URLs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    entries.push(entry);
                }
                Ok(entries)
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

/// A media type as `variants` names it: `type/subtype`, lower case, no parameters or wildcards.
fn is_media_type(media: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&^_.+-".contains(&b))
    };
    media
        .split_once('/')
        .is_some_and(|(kind, sub)| token(kind) && token(sub))
}

/// A language tag as `languages` names it (BCP 47 shape): `fr`, `zh-hant`, `pt-BR`.
fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    parts
        .next()
        .is_some_and(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()))
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn is_any(s: &Source) -> bool {
    *s == Source::Any
}

/// The statuses a redirect rule may answer with.
pub const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

impl RuleSpec {
    /// Checks what the types alone cannot. Returns the offending key and the reason.
    pub fn check(&self) -> Result<(), (String, String)> {
        self.check_parts().map_err(|(key, m)| (key.to_string(), m))?;
        if let Some(when) = &self.when {
            when.check().map_err(|(key, m)| match key.is_empty() {
                true => ("when".to_string(), m),
                false => (format!("when.{key}"), m),
            })?;
        }
        Ok(())
    }

    /// The checks of the rule's own keys (not `when`).
    fn check_parts(&self) -> Result<(), (&'static str, String)> {
        match (&self.url, self.skip) {
            (None, false) => {
                return Err((
                    "url",
                    "missing: give the page's URL (or skip: true for no page)".into(),
                ))
            }
            (Some(_), true) => return Err(("url", "a skip rule serves no page: leave url out".into())),
            (None, true) => {
                let extras = [
                    ("redirect", self.redirect.is_some()),
                    ("status", self.status.is_some()),
                    ("variants", !self.variants.is_empty()),
                    ("languages", !self.languages.is_empty()),
                ];
                if let Some((key, _)) = extras.iter().find(|(_, set)| *set) {
                    return Err((key, "a skip rule serves no page: leave it out".into()));
                }
            }
            (Some(_), false) => {}
        }
        if let Some(status) = self.status {
            if !(200..=599).contains(&status) {
                return Err((
                    "status",
                    format!("{status} is not a status to answer with; expected 200 to 599"),
                ));
            }
        }
        for (media, _) in &self.variants {
            if !is_media_type(media) {
                return Err((
                    "variants",
                    format!("{media:?} is not a media type; expected one like application/json (lower case, no wildcard)"),
                ));
            }
        }
        let tags = self.languages.iter().map(|(tag, _)| ("languages", tag));
        let variant_tags = self
            .variants
            .iter()
            .flat_map(|(_, v)| v.languages.iter().map(|(tag, _)| ("variants", tag)));
        let tags = tags.chain(variant_tags);
        for (key, tag) in tags.chain(self.language.as_ref().map(|tag| ("language", tag))) {
            if !is_language_tag(tag) {
                return Err((
                    key,
                    format!("{tag:?} is not a language tag; expected one like fr, zh-hant or pt-BR"),
                ));
            }
        }
        if self.redirect.is_some() && !(self.variants.is_empty() && self.languages.is_empty()) {
            return Err((
                "redirect",
                "a redirect rule has no pages to choose from; remove variants and languages".into(),
            ));
        }
        if let Some(code) = self.redirect {
            if !REDIRECT_CODES.contains(&code) {
                return Err((
                    "redirect",
                    format!("{code} is not a redirect status; expected one of 301, 302, 303, 307, 308"),
                ));
            }
            if self.status.is_some() {
                return Err((
                    "status",
                    "a redirect rule answers with its redirect code; remove status or redirect".into(),
                ));
            }
        }
        Ok(())
    }
}

impl DomainSpec {
    /// Every page its rules serve in place, with the key naming it (`custom_pages[0].url`,
    /// `custom_pages[1].variants.application/json.languages.fr`): the pages fetched through
    /// their domain's origin, so their hosts must be domains the edge serves.
    pub fn in_place_pages(&self) -> impl Iterator<Item = (String, &PageUrl)> {
        self.custom_pages
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.redirect.is_none())
            .filter_map(|(i, rule)| Some((i, rule, rule.url.as_ref()?)))
            .flat_map(|(i, rule, url)| {
                let variants = rule.variants.iter().flat_map(move |(m, v)| {
                    let translations = v
                        .languages
                        .iter()
                        .map(move |(l, u)| (format!("custom_pages[{i}].variants.{m}.languages.{l}"), u));
                    std::iter::once((format!("custom_pages[{i}].variants.{m}"), &v.url)).chain(translations)
                });
                std::iter::once((format!("custom_pages[{i}].url"), url))
                    .chain(variants)
                    .chain(
                        rule.languages
                            .iter()
                            .map(move |(l, u)| (format!("custom_pages[{i}].languages.{l}"), u)),
                    )
            })
    }

    /// Checks what the types alone cannot, on this spec alone. Returns the domain's name, or
    /// every error found, each located at `at`.
    pub fn check(&self, at: &Location) -> Result<DomainName, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |key: String, msg: String| errors.push(ConfigError::new(at.clone(), key, msg));
        let name = self
            .domain
            .parse::<DomainName>()
            .map_err(|m| err("domain".into(), m))
            .ok();
        if self.origin.servers.is_empty() {
            err(
                "origin.servers".into(),
                "no origin server; expected a list like [\"127.0.0.1:8080\"]".into(),
            );
        }
        for (i, server) in self.origin.servers.iter().enumerate() {
            if let Err(m) = check_server(server) {
                err(format!("origin.servers[{i}]"), m);
            }
        }
        if let Some(host) = &self.origin.host {
            if host.is_empty() || http::HeaderValue::from_str(host).is_err() || host.contains(['/', ' ']) {
                err(
                    "origin.host".into(),
                    format!("{host:?} is not a host name to send to the origin"),
                );
            }
        }
        if let Some(tls) = &self.tls {
            match (&tls.cert, &tls.key, tls.acme) {
                (Some(_), Some(_), false) => {}
                (None, None, true) => {
                    if name
                        .as_ref()
                        .is_some_and(|n| matches!(n, DomainName::Wildcard(_)))
                    {
                        err(
                            "tls.acme".into(),
                            "a wildcard name needs a DNS-01 challenge, which the edge does not do; give tls.cert and tls.key".into(),
                        );
                    }
                }
                (_, _, true) => err(
                    "tls.acme".into(),
                    "either acme: true or cert and key, not both".into(),
                ),
                (None, _, false) => err(
                    "tls.cert".into(),
                    "missing: give cert and key, or acme: true".into(),
                ),
                (_, None, false) => err(
                    "tls.key".into(),
                    "missing: give cert and key, or acme: true".into(),
                ),
            }
        }
        if let Some(hsts) = &self.hsts {
            if self.tls.is_none() {
                err(
                    "hsts".into(),
                    "applies to HTTPS responses: the domain has no tls section".into(),
                );
            }
            if hsts.preload
                && (hsts.max_age.0 < Duration::from_secs(365 * 24 * 3600) || !hsts.include_subdomains)
            {
                err(
                    "hsts.preload".into(),
                    "preload lists want max_age of at least 365d and include_subdomains: true".into(),
                );
            }
        }
        if let Some(sni) = &self.origin.sni {
            if !is_sni(sni) {
                err(
                    "origin.sni".into(),
                    format!("{sni:?} is not a server name; expected a DNS name like origin.example.net"),
                );
            }
        }
        if !self.origin.tls {
            for (key, set) in [
                ("origin.sni", self.origin.sni.is_some()),
                ("origin.verify", !self.origin.verify),
                ("origin.ca_file", self.origin.ca_file.is_some()),
            ] {
                if set {
                    err(
                        key.into(),
                        "applies to TLS origins only; add origin.tls: true".into(),
                    );
                }
            }
        }
        for (key, d) in [
            ("origin.connect_timeout", self.origin.connect_timeout),
            ("origin.read_timeout", self.origin.read_timeout),
        ] {
            if d.0.is_zero() {
                err(key.into(), "must be longer than 0s".into());
            }
        }
        if let Some(field) = &self.cache.targeted_field {
            let reserved = [
                "cache-control",
                "cdn-cache-control",
                "expires",
                "age",
                "date",
                "vary",
            ];
            if http::HeaderName::from_bytes(field.as_bytes()).is_err()
                || reserved.contains(&field.to_ascii_lowercase().as_str())
            {
                err(
                    "cache.targeted_field".into(),
                    format!("{field:?} is not a field name of its own; expected one like Edge-Cache-Control"),
                );
            }
        }
        let mut seen: Vec<(String, Option<&WhenSpec>)> = Vec::new();
        for (i, rule) in self.custom_pages.iter().enumerate() {
            if let Err((key, m)) = rule.check() {
                err(format!("custom_pages[{i}].{key}"), m);
            }
            let code = rule.code.to_string();
            if let Some(first) = seen
                .iter()
                .position(|(c, w)| *c == code && *w == rule.when.as_ref())
            {
                let condition = if rule.when.is_some() {
                    " with this condition"
                } else {
                    ""
                };
                err(
                    format!("custom_pages[{i}].code"),
                    format!("{code} already has a rule{condition} (custom_pages[{first}]); one rule per code and condition"),
                );
            }
            seen.push((code, rule.when.as_ref()));
        }
        match name {
            Some(name) if errors.is_empty() => Ok(name),
            _ => Err(errors),
        }
    }
}

/// Checks specs that each passed [`DomainSpec::check`] against each other: one spec per
/// domain name (the first in order keeps it), and every page served in place is on a domain
/// this edge serves, since it is fetched through that domain's origin.
pub fn check_together(specs: &[(&Location, &DomainSpec, &DomainName)]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut claimed: HashMap<&DomainName, &Location> = HashMap::new();
    for (at, _, name) in specs {
        match claimed.get(name) {
            Some(first) => errors.push(ConfigError::new(
                (*at).clone(),
                "domain",
                format!("{name} is already claimed by {first}; one spec per domain"),
            )),
            None => {
                claimed.insert(name, at);
            }
        }
    }
    let wildcards: Vec<&DomainName> = claimed
        .keys()
        .copied()
        .filter(|n| matches!(n, DomainName::Wildcard(_)))
        .collect();
    let served = |host: &str| {
        claimed.contains_key(&DomainName::Exact(host.to_string())) || wildcards.iter().any(|w| w.covers(host))
    };
    for (at, spec, _) in specs {
        for (key, url) in spec.in_place_pages() {
            if !served(url.host()) {
                errors.push(not_served(at, key, url.host()));
            }
        }
    }
    errors
}

/// The error of a page served in place (named by `key` in the spec at `at`) on a host no
/// domain of the edge serves.
pub fn not_served(at: &Location, key: String, host: &str) -> ConfigError {
    ConfigError::new(
        at.clone(),
        key,
        format!(
            "host {host:?} is not a domain this edge serves; a page served in place is fetched through its domain's origin (add redirect: 302 to send clients to another site)"
        ),
    )
}

/// A name to send as SNI: DNS labels of letters, digits and `-`, dot-separated.
fn is_sni(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An origin server is `host:port` (IPv6 in brackets).
fn check_server(server: &str) -> Result<(), String> {
    let expected = "expected host:port like 127.0.0.1:8080 or origin.example.net:80";
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| format!("{server:?} has no port; {expected}"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{server:?} has no valid port; {expected}")),
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    };
    if host_ok {
        Ok(())
    } else {
        Err(format!("{server:?} has no valid host; {expected}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_yaml;
    use std::path::Path;

    const EXP: &str = "domain: exp.example.com\norigin: {servers: [\"127.0.0.1:8080\"]}\n";

    /// Every error of the given specs, checked alone and together, as `file: key`.
    fn errors(files: &[(&str, &str)]) -> Vec<String> {
        let parsed: Vec<(Location, DomainSpec)> = files
            .iter()
            .map(|(file, yaml)| {
                (
                    Location::from(Path::new(file)),
                    parse_yaml(Path::new(file), yaml).unwrap(),
                )
            })
            .collect();
        let mut all = Vec::new();
        let mut valid = Vec::new();
        for (at, spec) in &parsed {
            match spec.check(at) {
                Ok(name) => valid.push((at, spec, name)),
                Err(e) => all.extend(e),
            }
        }
        let valid: Vec<(&Location, &DomainSpec, &DomainName)> =
            valid.iter().map(|(at, spec, name)| (*at, *spec, name)).collect();
        all.extend(check_together(&valid));
        all.iter().map(|e| format!("{}: {}", e.at, e.key)).collect()
    }

    /// A spec as the admin API writes it back (its YAML), read again.
    fn written_and_read(spec: &DomainSpec) -> (String, DomainSpec) {
        let yaml = serde_yaml::to_string(spec).expect("serializes");
        let read = parse_yaml(Path::new("w.yaml"), &yaml).expect("reads back");
        (yaml, read)
    }

    #[test]
    fn flags_survive_a_write_and_defaults_are_left_out() {
        let plain =
            format!("{EXP}custom_pages:\n  - {{code: 404, url: \"http://exp.example.com/e.html\"}}\n");
        let plain: DomainSpec = parse_yaml(Path::new("a.yaml"), &plain).unwrap();
        let (yaml, read) = written_and_read(&plain);
        assert_eq!(read, plain);
        for default in [
            "custom_pages_opt_out",
            "https_redirect",
            "tls",
            "verify",
            "share_schemes",
            "inline",
            "source",
        ] {
            assert!(
                !yaml.contains(default),
                "{default} written at its default:\n{yaml}"
            );
        }
        let flagged: DomainSpec = parse_yaml(
            Path::new("a.yaml"),
            "domain: exp.example.com\n\
             origin: {servers: [\"127.0.0.1:8080\"], tls: true, verify: false}\n\
             cache: {share_schemes: true}\n\
             custom_pages_opt_out: false\nhttps_redirect: true\n\
             custom_pages:\n  - {code: 404, url: \"http://exp.example.com/e.html\", inline: false, source: edge}\n",
        )
        .unwrap();
        let (yaml, read) = written_and_read(&flagged);
        assert_eq!(read, flagged, "{yaml}");
        for (key, value) in [
            ("custom_pages_opt_out", false),
            ("https_redirect", true),
            ("tls", true),
            ("verify", false),
            ("share_schemes", true),
            ("inline", false),
        ] {
            assert!(yaml.contains(&format!("{key}: {value}")), "{key}:\n{yaml}");
        }
        assert!(yaml.contains("source: edge"), "{yaml}");
    }

    #[test]
    fn a_variant_or_languages_of_the_wrong_shape_say_what_they_take() {
        let rule = |rest: &str| {
            let yaml = format!(
                "{EXP}custom_pages:\n  - {{code: 404, url: \"http://exp.example.com/e.html\", {rest}}}\n"
            );
            parse_yaml::<DomainSpec>(Path::new("a.yaml"), &yaml)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let e = rule("variants: {application/json: 5}");
        assert!(e.contains("a page URL, or a map with url and languages"), "{e}");
        let e = rule("languages: [fr]");
        assert!(e.contains("a map of names to page URLs"), "{e}");
    }

    #[test]
    fn variants_are_named_by_plain_media_types() {
        for valid in [
            "application/json",
            "application/problem+json",
            "text/plain",
            "image/svg+xml",
            "a.b/c-d_1",
        ] {
            assert!(is_media_type(valid), "{valid}");
        }
        for invalid in [
            "application",
            "Application/json",
            "*/*",
            "text/*",
            "/json",
            "text/",
            "application/json; q=1",
            "a/b/c",
        ] {
            assert!(!is_media_type(invalid), "{invalid}");
        }
    }

    #[test]
    fn two_specs_for_one_domain_is_an_error() {
        assert_eq!(errors(&[("a.yaml", EXP), ("b.yaml", EXP)]), ["b.yaml: domain"]);
    }

    #[test]
    fn in_place_page_must_be_on_a_served_domain() {
        let yaml = format!(
            "{EXP}custom_pages:\n  - {{code: 404, url: \"http://exp.example.com/e.html\"}}\n  - {{code: 403, url: \"https://help.example.org/f.html\"}}\n  - {{code: 401, url: \"https://help.example.org/f.html\", redirect: 302}}\n"
        );
        assert_eq!(errors(&[("a.yaml", &yaml)]), ["a.yaml: custom_pages[1].url"]);
        let wildcard = "domain: \"*.example.org\"\norigin: {servers: [\"127.0.0.1:1\"]}\n";
        assert_eq!(
            errors(&[("a.yaml", &yaml), ("w.yaml", wildcard)]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn variants_are_a_url_or_a_url_with_translations_and_every_page_is_checked() {
        let rule = |variants: &str| {
            format!("{EXP}custom_pages:\n  - code: 404\n    url: http://exp.example.com/e.html\n    variants:\n{variants}")
        };
        let both = rule("      text/plain: http://exp.example.com/e.txt\n      application/json:\n        url: http://exp.example.com/e.json\n        languages: {fr: http://exp.example.com/e.fr.json}\n");
        let spec: DomainSpec = parse_yaml(Path::new("a.yaml"), &both).unwrap();
        let variants = &spec.custom_pages[0].variants;
        assert_eq!(
            variants[0],
            (
                "text/plain".into(),
                "http://exp.example.com/e.txt".parse::<PageUrl>().unwrap().into()
            )
        );
        assert_eq!(variants[1].1.languages[0].0, "fr");
        // Written back as read: the short form stays short.
        let json = serde_json::to_value(&spec.custom_pages[0]).unwrap();
        assert_eq!(json["variants"]["text/plain"], "http://exp.example.com/e.txt");
        assert_eq!(
            json["variants"]["application/json"]["languages"]["fr"],
            "http://exp.example.com/e.fr.json"
        );

        let bad_key = rule("      application/json: {url: \"http://exp.example.com/e.json\", langs: {}}\n");
        let e = parse_yaml::<DomainSpec>(Path::new("a.yaml"), &bad_key).unwrap_err();
        assert_eq!(e.key, "custom_pages[0].variants.application/json.langs");
        assert!(e.message.contains("unknown field `langs`"), "{}", e.message);
        let bad_tag = rule("      application/json: {url: \"http://exp.example.com/e.json\", languages: {\"fr_FR\": \"http://exp.example.com/f.json\"}}\n");
        assert_eq!(
            errors(&[("a.yaml", &bad_tag)]),
            ["a.yaml: custom_pages[0].variants"]
        );
        let elsewhere = rule("      application/json: {url: \"http://exp.example.com/e.json\", languages: {fr: \"http://other.example.org/f.json\"}}\n");
        assert_eq!(
            errors(&[("a.yaml", &elsewhere)]),
            ["a.yaml: custom_pages[0].variants.application/json.languages.fr"]
        );
    }

    #[test]
    fn rule_values_are_checked() {
        let yaml = format!(
            "{EXP}custom_pages:\n  - {{code: 404, url: \"http://exp.example.com/e.html\", redirect: 200}}\n  - {{code: \"5xx\", url: \"http://exp.example.com/e.html\", status: 700}}\n  - {{code: 404, url: \"http://exp.example.com/x.html\"}}\n"
        );
        assert_eq!(
            errors(&[("a.yaml", &yaml)]),
            [
                "a.yaml: custom_pages[0].redirect",
                "a.yaml: custom_pages[1].status",
                "a.yaml: custom_pages[2].code"
            ]
        );
    }

    #[test]
    fn a_redirect_rule_has_no_variants_and_language_tags_have_sane_subtags() {
        let yaml = format!(
            "{EXP}custom_pages:\n  - {{code: 404, url: \"http://exp.example.com/e.html\", redirect: 302, variants: {{application/json: \"http://exp.example.com/e.json\"}}}}\n"
        );
        assert_eq!(errors(&[("a.yaml", &yaml)]), ["a.yaml: custom_pages[0].redirect"]);
        for tag in ["fr", "zh-hant", "pt-BR", "de-CH-1901", "x-private1"] {
            assert!(is_language_tag(tag), "{tag}");
        }
        for tag in [
            "",
            "fr-",
            "-fr",
            "zh-abcdefghi",
            "abcdefghi",
            "f_r",
            "1fr",
            "fr--ch",
        ] {
            assert!(!is_language_tag(tag), "{tag}");
        }
    }

    #[test]
    fn the_origin_host_and_the_targeted_field_are_checked() {
        for (host, ok) in [
            ("exp.example.com", true),
            ("", false),
            ("a b", false),
            ("a/b", false),
        ] {
            let yaml = format!("domain: a.com\norigin: {{servers: [\"h:80\"], host: {host:?}}}\n");
            let expected: &[&str] = if ok { &[] } else { &["a.yaml: origin.host"] };
            assert_eq!(errors(&[("a.yaml", &yaml)]), expected, "host {host:?}");
        }
        for (field, ok) in [
            ("Edge-Cache-Control", true),
            ("Cache-Control", false),
            ("cdn-cache-control", false),
            ("Bad Field", false),
        ] {
            let yaml = format!("{EXP}cache: {{targeted_field: {field:?}}}\n");
            let expected: &[&str] = if ok {
                &[]
            } else {
                &["a.yaml: cache.targeted_field"]
            };
            assert_eq!(errors(&[("a.yaml", &yaml)]), expected, "field {field:?}");
        }
    }

    #[test]
    fn origin_tls_keys_need_tls_and_a_sane_name() {
        let yaml =
            "domain: a.com\norigin: {servers: [\"h:443\"], sni: o.net, verify: false, ca_file: ca.pem}\n";
        assert_eq!(
            errors(&[("a.yaml", yaml)]),
            [
                "a.yaml: origin.sni",
                "a.yaml: origin.verify",
                "a.yaml: origin.ca_file"
            ]
        );
        let yaml = "domain: a.com\norigin: {servers: [\"h:443\"], tls: true, sni: \"bad name\"}\n";
        assert_eq!(errors(&[("a.yaml", yaml)]), ["a.yaml: origin.sni"]);
        let yaml = "domain: a.com\norigin: {servers: [\"h:443\"], tls: true, sni: o.net, ca_file: ca.pem}\ntls: {cert: a.pem, key: a.key}\nhttps_redirect: true\n";
        assert_eq!(errors(&[("a.yaml", yaml)]), Vec::<String>::new());
    }

    #[test]
    fn servers_must_be_host_port() {
        let yaml =
            "domain: a.com\norigin: {servers: [\"127.0.0.1\", \"h:0\", \"h:80\", \"[::1]:80\", \"a b:1\"]}\n";
        assert_eq!(
            errors(&[("a.yaml", yaml)]),
            [
                "a.yaml: origin.servers[0]",
                "a.yaml: origin.servers[1]",
                "a.yaml: origin.servers[4]"
            ]
        );
    }
}
