//! The rules, and which one answers an error: pure functions, no I/O.

use crate::spec::{CodePattern, PageUrl, RuleSpec, Source, WhenSpec};
use pingora_http::RequestHeader;
use std::sync::Arc;

/// A variant's page, and that page in other languages (by lower-case tag).
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The page.
    pub url: PageUrl,
    /// Its translations, in order.
    pub languages: Vec<(String, PageUrl)>,
}

/// Language tags compare case-insensitively; rules keep them in lower case.
fn lower_tags(languages: &[(String, PageUrl)]) -> Vec<(String, PageUrl)> {
    languages
        .iter()
        .map(|(tag, url)| (tag.to_ascii_lowercase(), url.clone()))
        .collect()
}

/// A custom page rule, ready to match.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Which statuses the rule answers.
    pub code: CodePattern,
    /// `code` as written (`404`, `5xx`), made once for the logs and metrics of each response.
    pub label: Arc<str>,
    /// Which source of status the rule answers.
    pub source: Source,
    /// The page, or the redirect target.
    pub url: PageUrl,
    /// Status to answer with instead of the original (in-place rules only).
    pub status: Option<u16>,
    /// Redirect code: answer with a redirect to `url` instead of serving it in place.
    pub redirect: Option<u16>,
    /// Pages for other media types than `url`'s HTML, in order (see [`super::negotiate`]).
    pub variants: Vec<(String, Variant)>,
    /// Pages in other languages than `url`'s, by lower-case tag.
    pub languages: Vec<(String, PageUrl)>,
    /// The language of `url`'s page (lower case), if the rule says.
    pub language: Option<String>,
    /// Whether the rule's HTML pages are made self-contained (see [`super::inline`]).
    pub inline: bool,
    /// Which requests the rule is for (none: every request).
    pub when: Option<Arc<When>>,
    /// The rule serves no page: the response passes as it is (its `url` is never used).
    pub skip: bool,
}

/// A rule's condition, compiled once per change: path globs as one set, methods, headers.
#[derive(Debug)]
pub struct When {
    paths: Option<globset::GlobSet>,
    /// The literal start of each path glob (up to its first special character): a path that
    /// starts with none of them cannot match, which a comparison of bytes tells before the
    /// glob set runs (50 conditional rules then cost a few dozen nanoseconds, not microseconds).
    prefixes: Vec<Box<str>>,
    methods: Vec<http::Method>,
    /// Each field with its exact value, or none for "present".
    headers: Vec<(http::HeaderName, Option<http::HeaderValue>)>,
    /// The condition in a few words, for the access log.
    pub summary: Arc<str>,
}

impl PartialEq for When {
    fn eq(&self, other: &When) -> bool {
        self.summary == other.summary
    }
}

impl When {
    /// The condition a checked spec describes.
    pub fn compile(spec: &WhenSpec) -> Result<When, String> {
        let paths = match &spec.paths {
            None => None,
            Some(globs) => {
                let mut set = globset::GlobSetBuilder::new();
                for glob in globs {
                    set.add(crate::spec::domain::path_glob(glob).map_err(|e| format!("{glob:?}: {e}"))?);
                }
                Some(set.build().map_err(|e| e.to_string())?)
            }
        };
        let prefixes = spec
            .paths
            .iter()
            .flatten()
            .map(|glob| {
                let literal = glob.find(['*', '?', '[', '{', '\\']).unwrap_or(glob.len());
                Box::from(&glob[..literal])
            })
            .collect();
        let methods = spec
            .methods
            .iter()
            .flatten()
            .map(|m| http::Method::from_bytes(m.as_bytes()).map_err(|e| format!("{m:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let headers = spec
            .headers
            .iter()
            .map(|(name, value)| {
                let name =
                    http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name:?}: {e}"))?;
                let value = match value.as_str() {
                    "*" => None,
                    v => Some(http::HeaderValue::from_str(v).map_err(|e| format!("{v:?}: {e}"))?),
                };
                Ok::<_, String>((name, value))
            })
            .collect::<Result<_, _>>()?;
        Ok(When {
            paths,
            prefixes,
            methods,
            headers,
            summary: Arc::from(spec.summary()),
        })
    }

    /// Whether `req` is one of the requests the condition names. No allocation.
    pub fn matches(&self, req: &RequestHeader) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(&req.method) {
            return false;
        }
        let headers_match = self
            .headers
            .iter()
            .all(|(name, wanted)| match (req.headers.get(name), wanted) {
                (Some(_), None) => true,
                (Some(value), Some(wanted)) => value == wanted,
                (None, _) => false,
            });
        if !headers_match {
            return false;
        }
        let Some(set) = &self.paths else {
            return true;
        };
        let path = req.uri.path();
        self.prefixes.iter().any(|prefix| path.starts_with(&**prefix)) && set.is_match(path)
    }
}

/// What a skip rule's `url` is: a reserved name (RFC 2606), never fetched nor served.
const SKIP_URL: &str = "http://skip.invalid/";

impl Rule {
    /// A rule serving `url` in place for the statuses `code` names, from any source.
    pub fn in_place(code: CodePattern, url: PageUrl) -> Rule {
        Rule {
            label: Arc::from(code.to_string()),
            code,
            source: Source::Any,
            url,
            status: None,
            redirect: None,
            variants: Vec::new(),
            languages: Vec::new(),
            language: None,
            inline: true,
            when: None,
            skip: false,
        }
    }

    /// The rule a checked spec describes, the `index`th of its domain: a conditional rule's
    /// label says which (`404#1`), so logs and metrics tell it from the domain's default.
    pub fn from_spec(index: usize, spec: &RuleSpec) -> Result<Rule, String> {
        let when = spec.when.as_ref().map(When::compile).transpose()?.map(Arc::new);
        let label = match &when {
            Some(_) => format!("{}#{index}", spec.code),
            None => spec.code.to_string(),
        };
        let url = match &spec.url {
            Some(url) => url.clone(),
            None if spec.skip => SKIP_URL.parse()?,
            None => return Err("a rule without url must be a skip rule".into()),
        };
        Ok(Rule {
            code: spec.code.clone(),
            label: Arc::from(label),
            source: spec.source,
            url,
            status: spec.status,
            redirect: spec.redirect,
            variants: spec
                .variants
                .iter()
                .map(|(media, v)| {
                    let variant = Variant {
                        url: v.url.clone(),
                        languages: lower_tags(&v.languages),
                    };
                    (media.clone(), variant)
                })
                .collect(),
            languages: lower_tags(&spec.languages),
            language: spec.language.as_ref().map(|tag| tag.to_ascii_lowercase()),
            inline: spec.inline,
            when,
            skip: spec.skip,
        })
    }

    /// The page the rule serves in place, if it is not a redirect (or skip) rule.
    pub fn page(&self) -> Option<&PageUrl> {
        (self.redirect.is_none() && !self.skip).then_some(&self.url)
    }

    /// Every page the rule may serve in place: `url`, its languages, its variants and theirs.
    pub fn pages(&self) -> impl Iterator<Item = &PageUrl> {
        let in_place = self.redirect.is_none() && !self.skip;
        let variants = self
            .variants
            .iter()
            .flat_map(|(_, v)| std::iter::once(&v.url).chain(v.languages.iter().map(|(_, url)| url)));
        std::iter::once(&self.url)
            .chain(self.languages.iter().map(|(_, url)| url))
            .chain(variants)
            .filter(move |_| in_place)
    }
}

/// The rule for `status` from `source` answering `req`: the first rule with a condition (in
/// file order) whose code, source and condition match; else, among rules without one whose
/// code and source match, the most specific code pattern (exact, list, narrowest range,
/// class), ties going to the first in the file. A skip rule chosen means no page (`None`).
pub fn select<'a>(rules: &'a [Rule], req: &RequestHeader, status: u16, source: Source) -> Option<&'a Rule> {
    winner(rules, req, status, source).filter(|rule| !rule.skip)
}

/// The rule [`select`] decides by, a skip rule included (a trace shows which one skipped).
pub fn winner<'a>(rules: &'a [Rule], req: &RequestHeader, status: u16, source: Source) -> Option<&'a Rule> {
    let applies = |r: &&Rule| r.source.admits(source) && r.code.matches(status);
    let chosen = rules
        .iter()
        .filter(applies)
        .find(|r| r.when.as_ref().is_some_and(|when| when.matches(req)))
        .or_else(|| {
            rules
                .iter()
                .filter(applies)
                .filter(|r| r.when.is_none())
                .min_by_key(|r| r.code.specificity())
        });
    chosen
}

/// Whether a request (normalized host, path without query) is for the page a rule serves or
/// redirects to. Such a request never gets that rule, so a missing page cannot loop.
pub fn is_own_page(rule: &Rule, host: &str, path: &str) -> bool {
    !rule.skip && rule.url.host() == host && rule.url.path() == path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(code: &str, source: Source, url: &str) -> Rule {
        let code = if code.starts_with('[') {
            serde_yaml::from_str(code).unwrap()
        } else {
            code.parse::<CodePattern>().unwrap()
        };
        Rule {
            source,
            ..Rule::in_place(code, url.parse().unwrap())
        }
    }

    fn chosen(rules: &[Rule], status: u16, source: Source) -> Option<&str> {
        let req = RequestHeader::build("GET", b"/x", None).unwrap();
        select(rules, &req, status, source).map(|r| r.url.path())
    }

    #[test]
    fn most_specific_wins_whatever_the_order() {
        let rules = vec![
            rule("5xx", Source::Any, "http://a.com/class"),
            rule("500-599", Source::Any, "http://a.com/wide"),
            rule("502-504", Source::Any, "http://a.com/narrow"),
            rule("[502, 503]", Source::Any, "http://a.com/list"),
            rule("503", Source::Any, "http://a.com/exact"),
        ];
        assert_eq!(chosen(&rules, 503, Source::Origin), Some("/exact"));
        assert_eq!(chosen(&rules, 502, Source::Origin), Some("/list"));
        assert_eq!(chosen(&rules, 504, Source::Origin), Some("/narrow"));
        assert_eq!(chosen(&rules, 501, Source::Origin), Some("/wide"));
        assert_eq!(chosen(&rules, 404, Source::Origin), None);
    }

    #[test]
    fn equal_specificity_goes_to_the_first() {
        let rules = vec![
            rule("[500, 502]", Source::Any, "http://a.com/first"),
            rule("[502, 504]", Source::Any, "http://a.com/second"),
        ];
        assert_eq!(chosen(&rules, 502, Source::Edge), Some("/first"));
    }

    #[test]
    fn source_filters_rules() {
        let rules = vec![
            rule("502", Source::Edge, "http://a.com/edge"),
            rule("5xx", Source::Origin, "http://a.com/origin"),
        ];
        assert_eq!(chosen(&rules, 502, Source::Edge), Some("/edge"));
        assert_eq!(chosen(&rules, 502, Source::Origin), Some("/origin"));
        assert_eq!(chosen(&rules, 504, Source::Edge), None);
    }

    fn from_yaml(yaml: &str) -> Rule {
        let spec: RuleSpec = serde_yaml::from_str(yaml).expect("a rule spec");
        Rule::from_spec(0, &spec).expect("a rule")
    }

    #[test]
    fn language_tags_from_the_spec_are_kept_in_lower_case() {
        let rule = from_yaml(
            "code: 404\nurl: http://a.com/en.html\nlanguage: EN\n\
             languages: {FR-ca: 'http://a.com/fr.html'}\n\
             variants:\n  application/json:\n    url: http://a.com/e.json\n    languages: {DE: 'http://a.com/de.json'}\n",
        );
        assert_eq!(rule.language.as_deref(), Some("en"));
        let tags: Vec<&str> = rule.languages.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tags, ["fr-ca"]);
        let (media, variant) = &rule.variants[0];
        assert_eq!(media, "application/json");
        let tags: Vec<&str> = variant.languages.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tags, ["de"]);
    }

    #[test]
    fn an_in_place_rule_serves_its_pages_and_a_redirect_rule_none() {
        let in_place = from_yaml(
            "code: 404\nurl: http://a.com/p.html\nlanguages: {fr: 'http://a.com/fr.html'}\n\
             variants: {application/json: 'http://a.com/p.json'}\n",
        );
        assert_eq!(in_place.page().map(|u| u.path()), Some("/p.html"));
        let pages: Vec<&str> = in_place.pages().map(|u| u.path()).collect();
        assert_eq!(pages, ["/p.html", "/fr.html", "/p.json"]);
        let redirect = from_yaml("code: 404\nurl: http://a.com/p.html\nredirect: 302\n");
        assert_eq!(redirect.page(), None);
        assert_eq!(redirect.pages().count(), 0);
    }

    #[test]
    fn own_page_is_recognized() {
        let r = rule("404", Source::Any, "http://exp.example.com/error404.html?v=2");
        assert!(is_own_page(&r, "exp.example.com", "/error404.html"));
        assert!(!is_own_page(&r, "exp.example.com", "/other.html"));
        assert!(!is_own_page(&r, "www.example.com", "/error404.html"));
    }
}
