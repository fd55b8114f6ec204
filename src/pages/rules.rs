//! The rules, and which one answers an error: pure functions, no I/O.

use crate::spec::{CodePattern, PageUrl, RuleSpec, Source};
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
}

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
        }
    }

    /// The rule a checked spec describes.
    pub fn from_spec(spec: &RuleSpec) -> Rule {
        Rule {
            code: spec.code.clone(),
            label: Arc::from(spec.code.to_string()),
            source: spec.source,
            url: spec.url.clone(),
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
        }
    }

    /// The page the rule serves in place, if it is not a redirect rule.
    pub fn page(&self) -> Option<&PageUrl> {
        self.redirect.is_none().then_some(&self.url)
    }

    /// Every page the rule may serve in place: `url`, its languages, its variants and theirs.
    pub fn pages(&self) -> impl Iterator<Item = &PageUrl> {
        let in_place = self.redirect.is_none();
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

/// The rule for `status` from `source`: among rules whose code and source match, the most
/// specific code pattern wins (exact, list, narrowest range, class); ties go to the first in
/// the file.
pub fn select(rules: &[Rule], status: u16, source: Source) -> Option<&Rule> {
    rules
        .iter()
        .filter(|r| r.source.admits(source) && r.code.matches(status))
        .min_by_key(|r| r.code.specificity())
}

/// Whether a request (normalized host, path without query) is for the page a rule serves or
/// redirects to. Such a request never gets that rule, so a missing page cannot loop.
pub fn is_own_page(rule: &Rule, host: &str, path: &str) -> bool {
    rule.url.host() == host && rule.url.path() == path
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
        select(rules, status, source).map(|r| r.url.path())
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
        Rule::from_spec(&spec)
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
