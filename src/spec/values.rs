//! Value types of the YAML contract: durations, sizes, status-code patterns, page URLs and
//! domain names. Each parses from the text an operator writes and says what was expected when
//! it cannot.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written as `500ms`, `2s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("invalid duration {s:?} ({e}); expected a value like 500ms, 2s or 5m"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FromStrVisitor::<Dur>::new("a duration like 500ms, 2s or 5m"))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size in bytes written as `64KiB`, `1MiB`, `256MiB` (or a plain number of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("invalid size {s:?} ({e}); expected a value like 64KiB or 1MiB"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FromStrVisitor::<Size>::new("a size like 64KiB or 1MiB"))
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&bytesize::ByteSize(self.0).display().iec_short().to_string())
    }
}

/// Deserializes a string (or a bare number, which YAML may produce for sizes) through `FromStr`.
struct FromStrVisitor<T> {
    expected: &'static str,
    _marker: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    fn new(expected: &'static str) -> Self {
        FromStrVisitor {
            expected,
            _marker: std::marker::PhantomData,
        }
    }
}

impl<T: FromStr<Err = String>> Visitor<'_> for FromStrVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expected)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// Which statuses a custom page rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodePattern {
    /// `404`
    Exact(u16),
    /// `[500, 502]`
    List(Vec<u16>),
    /// `"500-504"`, both ends included
    Range(u16, u16),
    /// `"4xx"` or `"5xx"`: the hundreds digit
    Class(u16),
}

/// Error statuses a rule may name.
pub const ERROR_CODES: std::ops::RangeInclusive<u16> = 400..=599;

fn error_code(n: u64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|c| ERROR_CODES.contains(c))
        .ok_or_else(|| format!("status {n} is not an error status; expected a code from 400 to 599"))
}

fn parse_error_code(s: &str) -> Result<u16, String> {
    let n: u64 = s.trim().parse().map_err(|_| {
        format!("{s:?} is not a status code; expected 404, [500, 502], \"500-504\" or \"5xx\"")
    })?;
    error_code(n)
}

impl CodePattern {
    /// Whether `status` falls under the pattern.
    pub fn matches(&self, status: u16) -> bool {
        match self {
            CodePattern::Exact(c) => *c == status,
            CodePattern::List(codes) => codes.contains(&status),
            CodePattern::Range(lo, hi) => (*lo..=*hi).contains(&status),
            CodePattern::Class(hundreds) => status / 100 == *hundreds,
        }
    }

    /// Orders patterns from most to least specific: an exact code, then a list, then the
    /// narrowest range, then a class. Lower sorts first.
    pub fn specificity(&self) -> (u8, u16) {
        match self {
            CodePattern::Exact(_) => (0, 1),
            CodePattern::List(_) => (1, 0),
            CodePattern::Range(lo, hi) => (2, hi - lo),
            CodePattern::Class(_) => (3, 100),
        }
    }

    fn from_list(items: Vec<u64>) -> Result<Self, String> {
        if items.is_empty() {
            return Err("an empty list of codes matches nothing; give at least one code".into());
        }
        let mut codes = Vec::with_capacity(items.len());
        for item in items {
            let code = error_code(item)?;
            if codes.contains(&code) {
                return Err(format!("code {code} is listed twice"));
            }
            codes.push(code);
        }
        Ok(CodePattern::List(codes))
    }
}

impl FromStr for CodePattern {
    type Err = String;
    /// Parses the forms used in files and in admin API paths: `404`, `500-504`, `5xx`.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        if let Some(hundreds) = lower.strip_suffix("xx") {
            return match hundreds {
                "4" => Ok(CodePattern::Class(4)),
                "5" => Ok(CodePattern::Class(5)),
                _ => Err(format!(
                    "{s:?} is not a status class; expected \"4xx\" or \"5xx\""
                )),
            };
        }
        if let Some((lo, hi)) = t.split_once('-') {
            let (lo, hi) = (parse_error_code(lo)?, parse_error_code(hi)?);
            if lo > hi {
                return Err(format!("range {s:?} is empty; write the lower code first"));
            }
            return Ok(CodePattern::Range(lo, hi));
        }
        parse_error_code(t).map(CodePattern::Exact)
    }
}

impl fmt::Display for CodePattern {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            CodePattern::Exact(c) => write!(f, "{c}"),
            CodePattern::List(codes) => {
                let list: Vec<String> = codes.iter().map(u16::to_string).collect();
                write!(f, "[{}]", list.join(", "))
            }
            CodePattern::Range(lo, hi) => write!(f, "{lo}-{hi}"),
            CodePattern::Class(h) => write!(f, "{h}xx"),
        }
    }
}

impl<'de> Deserialize<'de> for CodePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PatternVisitor;
        impl<'de> Visitor<'de> for PatternVisitor {
            type Value = CodePattern;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a status code (404), a list ([500, 502]), a range (\"500-504\") or a class (\"5xx\")",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CodePattern, E> {
                error_code(v).map(CodePattern::Exact).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CodePattern, E> {
                Err(E::custom(format!(
                    "status {v} is not an error status; expected a code from 400 to 599"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CodePattern, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<CodePattern, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<u64>()? {
                    items.push(item);
                }
                CodePattern::from_list(items).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(PatternVisitor)
    }
}

impl Serialize for CodePattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CodePattern::Exact(c) => s.serialize_u16(*c),
            CodePattern::List(codes) => codes.serialize(s),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

/// A complete page URL: scheme, host and path, no control characters. Its parts are shared,
/// so a copy (the spec, its compiled rule, the page store's index) costs reference counts,
/// not allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageUrl {
    /// Shared, so a response can name the page it served without copying the URL.
    raw: std::sync::Arc<str>,
    /// Lower-cased host without port.
    host: std::sync::Arc<str>,
    /// Path and query, as sent to the origin.
    path_and_query: std::sync::Arc<str>,
}

impl PageUrl {
    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The URL as written, shared (a reference count, no copy).
    pub fn shared(&self) -> std::sync::Arc<str> {
        self.raw.clone()
    }
    /// Lower-cased host, without port.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// Path and query, as requested from the origin.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }
    /// The path without the query, as requests are compared against it.
    pub fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or("/")
    }
}

impl FromStr for PageUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(c) = s.chars().find(|c| c.is_control() || *c == ' ') {
            return Err(format!(
                "URL {s:?} contains the character {c:?}; control characters and spaces are not allowed"
            ));
        }
        let uri: http::Uri = s.parse().map_err(|e| {
            format!(
                "{s:?} is not a URL ({e}); expected a complete URL like http://exp.example.com/error404.html"
            )
        })?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            Some(other) => return Err(format!("URL {s:?} has scheme {other:?}; expected http or https")),
            None => {
                return Err(format!(
                    "URL {s:?} is not complete; expected scheme, host and path like http://exp.example.com/error404.html"
                ))
            }
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("URL {s:?} has no host"))?;
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        if !path_and_query.starts_with('/') || path_and_query == "/" && !s.ends_with('/') {
            return Err(format!(
                "URL {s:?} has no path; expected e.g. http://{host}/error404.html"
            ));
        }
        let host = normalize_host(host);
        let is_ip = host.parse::<std::net::Ipv4Addr>().is_ok()
            || host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
        if !is_ip && !matches!(host.parse::<DomainName>(), Ok(DomainName::Exact(_))) {
            return Err(format!("URL {s:?} has no valid host"));
        }
        Ok(PageUrl {
            raw: std::sync::Arc::from(s),
            host: std::sync::Arc::from(host),
            path_and_query: std::sync::Arc::from(path_and_query),
        })
    }
}

impl<'de> Deserialize<'de> for PageUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Serialize for PageUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lower-cases a host and drops its port and any trailing dot: `Exp.Example.COM.:8080` is
/// `exp.example.com`. Bracketed IPv6 literals keep their brackets.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The name a domain file claims: `exp.example.com`, or a wildcard `*.example.com` that matches
/// any name below `example.com` (not `example.com` itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DomainName {
    /// A single name.
    Exact(String),
    /// The suffix after `*`, with its leading dot: `.example.com`.
    Wildcard(String),
}

impl FromStr for DomainName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, labels) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if labels.is_empty() || labels.len() > 253 || !labels.split('.').all(valid_label) {
            return Err(format!(
                "{s:?} is not a domain name; expected a name like exp.example.com or a wildcard like *.example.com"
            ));
        }
        Ok(if wildcard {
            DomainName::Wildcard(format!(".{labels}"))
        } else {
            DomainName::Exact(name)
        })
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DomainName::Exact(n) => f.write_str(n),
            DomainName::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl DomainName {
    /// Whether a normalized host falls under this name.
    pub fn covers(&self, host: &str) -> bool {
        match self {
            DomainName::Exact(n) => n == host,
            DomainName::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// Compares secrets (tokens, staging keys) without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_as_written() {
        assert_eq!("500ms".parse::<Dur>().unwrap().0, Duration::from_millis(500));
        assert_eq!("5m".parse::<Dur>().unwrap().0, Duration::from_secs(300));
        assert!("5 parsecs"
            .parse::<Dur>()
            .unwrap_err()
            .contains("expected a value like"));
        assert_eq!("64KiB".parse::<Size>().unwrap().0, 65536);
        assert_eq!("1MiB".parse::<Size>().unwrap().0, 1 << 20);
        assert!("lots".parse::<Size>().is_err());
    }

    #[test]
    fn code_patterns_parse_every_form() {
        assert_eq!("404".parse::<CodePattern>().unwrap(), CodePattern::Exact(404));
        assert_eq!(
            "500-504".parse::<CodePattern>().unwrap(),
            CodePattern::Range(500, 504)
        );
        assert_eq!("5XX".parse::<CodePattern>().unwrap(), CodePattern::Class(5));
        let list: CodePattern = serde_yaml::from_str("[500, 502]").unwrap();
        assert_eq!(list, CodePattern::List(vec![500, 502]));
        let exact: CodePattern = serde_yaml::from_str("404").unwrap();
        assert_eq!(exact, CodePattern::Exact(404));
    }

    #[test]
    fn classes_one_code_ranges_and_wrong_types_say_what_they_are() {
        assert_eq!("4xx".parse::<CodePattern>(), Ok(CodePattern::Class(4)));
        assert_eq!(" 4XX ".parse::<CodePattern>(), Ok(CodePattern::Class(4)));
        assert_eq!(
            "500-500".parse::<CodePattern>(),
            Ok(CodePattern::Range(500, 500)),
            "a range of one code"
        );
        // A narrower range ranks before a wider one wherever they lie.
        let (narrow, wide) = (CodePattern::Range(450, 460), CodePattern::Range(400, 499));
        assert!(narrow.specificity() < wide.specificity());
        let e = serde_yaml::from_str::<Dur>("[5]").unwrap_err().to_string();
        assert!(e.contains("expected a duration like 500ms, 2s or 5m"), "{e}");
        let e = serde_yaml::from_str::<Size>("{a: 1}").unwrap_err().to_string();
        assert!(e.contains("expected a size like 64KiB or 1MiB"), "{e}");
    }

    #[test]
    fn code_patterns_reject_non_error_codes() {
        for bad in ["200", "600", "3xx", "504-500", "abc", "4044", "", "-"] {
            assert!(bad.parse::<CodePattern>().is_err(), "{bad} should be rejected");
        }
        assert!(serde_yaml::from_str::<CodePattern>("[]").is_err());
        assert!(serde_yaml::from_str::<CodePattern>("[500, 500]").is_err());
        assert!(serde_yaml::from_str::<CodePattern>("-1").is_err());
    }

    #[test]
    fn code_patterns_match_and_rank() {
        let exact = CodePattern::Exact(503);
        let list = CodePattern::List(vec![500, 503]);
        let narrow = CodePattern::Range(502, 504);
        let wide = CodePattern::Range(500, 599);
        let class = CodePattern::Class(5);
        for p in [&exact, &list, &narrow, &wide, &class] {
            assert!(p.matches(503));
            assert!(!p.matches(404));
        }
        let mut ranked = vec![&class, &wide, &narrow, &list, &exact];
        ranked.sort_by_key(|p| p.specificity());
        assert_eq!(ranked, vec![&exact, &list, &narrow, &wide, &class]);
    }

    #[test]
    fn page_urls_must_be_complete() {
        let url: PageUrl = "http://Exp.Example.com:8080/error404.html?v=1".parse().unwrap();
        assert_eq!(url.host(), "exp.example.com");
        assert_eq!(url.path_and_query(), "/error404.html?v=1");
        assert_eq!(url.path(), "/error404.html");
        for bad in [
            "/error404.html",
            "exp.example.com/error404.html",
            "http:///error404.html",
            "ftp://exp.example.com/e.html",
            "http://exp.example.com",
            "http://exp.example.com/a\nb",
            "http://exp.example.com/a b",
            "http://a..b/e.html",
            "http://-a.com/e.html",
        ] {
            assert!(bad.parse::<PageUrl>().is_err(), "{bad:?} should be rejected");
        }
        let e = "http://exp.example.com/a b".parse::<PageUrl>().unwrap_err();
        assert!(e.contains("contains the character ' '"), "{e}");
        for ip in ["http://127.0.0.1:8080/e.html", "http://[::1]/e.html"] {
            assert!(ip.parse::<PageUrl>().is_ok(), "{ip}");
        }
    }

    #[test]
    fn hosts_normalize_and_domains_cover() {
        assert_eq!(normalize_host("Exp.Example.COM.:8080"), "exp.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        let wild: DomainName = "*.Example.com".parse().unwrap();
        assert!(wild.covers("a.example.com"));
        assert!(wild.covers("a.b.example.com"));
        assert!(!wild.covers("example.com"));
        assert!(!wild.covers("badexample.com"));
        for bad in ["", "*.", "exa mple.com", "-a.com", "a..com", "*.*.com"] {
            assert!(bad.parse::<DomainName>().is_err(), "{bad:?} should be rejected");
        }
    }
}
