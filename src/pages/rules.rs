//! Which rule answers an error: pure functions, no I/O.

use crate::config::{Rule, Source};

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
    use crate::config::CodePattern;

    fn rule(code: &str, source: Source, url: &str) -> Rule {
        let code = if code.starts_with('[') {
            serde_yaml::from_str(code).unwrap()
        } else {
            code.parse::<CodePattern>().unwrap()
        };
        Rule {
            code,
            source,
            url: url.parse().unwrap(),
            status: None,
            redirect: None,
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

    #[test]
    fn own_page_is_recognized() {
        let r = rule("404", Source::Any, "http://exp.example.com/error404.html?v=2");
        assert!(is_own_page(&r, "exp.example.com", "/error404.html"));
        assert!(!is_own_page(&r, "exp.example.com", "/other.html"));
        assert!(!is_own_page(&r, "www.example.com", "/error404.html"));
    }
}
