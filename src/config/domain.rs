//! A domain file: one accelerated domain, its origin, its cache policy and its custom page rules.

use super::values::{CodePattern, DomainName, Dur, PageUrl};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A domain file as written. Unknown keys are errors.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainFile {
    /// The name served: `exp.example.com` or `*.example.com`.
    pub domain: String,
    /// Where requests for the domain go.
    pub origin: OriginSection,
    /// Freshness defaults of the content cache.
    #[serde(default)]
    pub cache: DomainCacheSection,
    /// The custom page rules.
    #[serde(default)]
    pub custom_pages: Vec<RuleSpec>,
    /// Filters to run for this domain, in order: a name, or a name with its settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<serde_yaml::Value>,
}

/// The `origin:` section of a domain file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSection {
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
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_read_timeout() -> Dur {
    Dur(Duration::from_secs(15))
}

/// The `cache:` section of a domain file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainCacheSection {
    /// Freshness when the origin gives none; zero means such responses are not cached.
    #[serde(default)]
    pub default_ttl: Dur,
    /// Minimum freshness of an origin 4xx/5xx (negative caching); zero turns it off.
    #[serde(default)]
    pub error_ttl: Dur,
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
    /// The page (served in place) or the redirect target.
    pub url: PageUrl,
    /// Whether the rule applies to origin statuses, edge statuses or both.
    #[serde(default, skip_serializing_if = "is_any")]
    pub source: Source,
    /// Status to answer with instead of the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Redirect code: redirect to `url` instead of serving it in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<u16>,
}

fn is_any(s: &Source) -> bool {
    *s == Source::Any
}

/// The statuses a redirect rule may answer with.
pub const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

impl RuleSpec {
    /// Checks what the types alone cannot. Returns the offending key and the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(status) = self.status {
            if !(200..=599).contains(&status) {
                return Err((
                    "status",
                    format!("{status} is not a status to answer with; expected 200 to 599"),
                ));
            }
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

/// A validated domain, ready for routing.
#[derive(Debug, Clone)]
pub struct Domain {
    /// The name, for routing.
    pub name: DomainName,
    /// The name as written (`*.example.com`), for logs, metrics and filters.
    pub label: String,
    /// Where requests go.
    pub origin: Origin,
    /// Which of the origin's servers answered their last connection attempt. Runtime state:
    /// a reload starts with every server up.
    pub health: std::sync::Arc<crate::upstream::OriginHealth>,
    /// Freshness of responses that give none (0: not cached).
    pub default_ttl: Duration,
    /// Minimum freshness of origin errors (0: off).
    pub error_ttl: Duration,
    /// The custom page rules, in file order.
    pub rules: Vec<Rule>,
    /// The domain's filters, in order.
    pub filters: crate::filters::FilterChain,
    /// The file this domain came from, for messages and for writes by the admin API.
    pub file: std::path::PathBuf,
    /// The file as written, so the admin API can change rules and keep the rest.
    pub spec: DomainFile,
}

/// A validated origin configuration.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `host:port` each, tried in order on connect failure.
    pub servers: Vec<String>,
    /// Host header to send; `None` keeps the requested host.
    pub host: Option<String>,
    /// Bound of one connection attempt.
    pub connect_timeout: Duration,
    /// Bound of one read from the origin.
    pub read_timeout: Duration,
}

/// A validated custom page rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Which statuses the rule answers.
    pub code: CodePattern,
    /// Which source of status the rule answers.
    pub source: Source,
    /// The page, or the redirect target.
    pub url: PageUrl,
    /// Status to answer with instead of the original (in-place rules only).
    pub status: Option<u16>,
    /// Redirect code: answer with a redirect to `url` instead of serving it in place.
    pub redirect: Option<u16>,
}

impl Rule {
    /// The validated form of a rule as written.
    pub fn from_spec(spec: &RuleSpec) -> Rule {
        Rule {
            code: spec.code.clone(),
            source: spec.source,
            url: spec.url.clone(),
            status: spec.status,
            redirect: spec.redirect,
        }
    }

    /// Whether the page is served in place (not a redirect rule).
    pub fn in_place(&self) -> bool {
        self.redirect.is_none()
    }
}
