//! What the content cache keeps, and for how long: the origin's Cache-Control/Expires as
//! Pingora interprets them, plus the domain's `default_ttl` (responses that say nothing) and
//! `error_ttl` (negative caching: an origin 4xx/5xx is kept at least that long).
//!
//! Two things Pingora's filters leave out are done here:
//! - **targeted cache control** (RFC 9213): a valid `CDN-Cache-Control` (or the domain's own
//!   targeted field, checked first) replaces `Cache-Control` for this edge;
//! - **age** (RFC 9111 §4.2.3): what the origin says of the response's age (`Age`, and `Date`
//!   against our clock) is counted, so freshness runs from when the response was generated,
//!   and `Age` on hits includes it.

use pingora_cache::cache_control::{CacheControl, Cacheable as CcCacheable, InterpretCacheControl};
use pingora_cache::filters::{calculate_fresh_until, calculate_serve_stale_durations};
use pingora_cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// The field every CDN honours (RFC 9213).
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// Freshness the origin did not give is decided below, per domain, so Pingora's defaults
/// give none.
const ORIGIN_ONLY: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// Statuses cached with `default_ttl` when the origin gives no freshness (RFC 9110's
/// heuristically cacheable successes and redirects).
const DEFAULT_TTL_STATUSES: [u16; 5] = [200, 203, 204, 301, 308];

/// Per-domain freshness settings.
#[derive(Debug, Clone, Default)]
pub struct TtlPolicy {
    /// Freshness of responses that give none (0: not cached).
    pub default_ttl: Duration,
    /// Minimum freshness of origin 4xx/5xx (0: no negative caching).
    pub error_ttl: Duration,
    /// A targeted cache-control field of the domain's own, checked before `CDN-Cache-Control`.
    pub targeted_field: Option<http::HeaderName>,
    /// Whether responses lose their targeted fields (by default they are forwarded).
    pub strip_targeted: bool,
}

impl TtlPolicy {
    /// The targeted fields this edge obeys, most specific first.
    pub fn targeted_fields(&self) -> impl Iterator<Item = &str> {
        self.targeted_field
            .iter()
            .map(http::HeaderName::as_str)
            .chain(std::iter::once(CDN_CACHE_CONTROL))
    }
}

/// The cache control this edge obeys: the first targeted field present with valid syntax, else
/// `Cache-Control` (RFC 9213 §2.2: an invalid targeted field is ignored).
fn cache_control(resp: &ResponseHeader, policy: &TtlPolicy) -> Option<CacheControl> {
    for name in policy.targeted_fields() {
        let values: Vec<&[u8]> = resp.headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
        if !values.is_empty() && values.iter().all(|v| is_dictionary(v)) {
            return CacheControl::from_resp_headers_named(name, resp);
        }
    }
    CacheControl::from_resp_headers(resp)
}

/// The directives whose value is a non-negative Integer in targeted cache control.
const INTEGER_DIRECTIVES: [&str; 4] = ["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"];
/// The directives that are Booleans (written bare, or `?1`/`?0`).
const BOOLEAN_DIRECTIVES: [&str; 7] = [
    "no-store",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "no-transform",
    "immutable",
    "must-understand",
];

/// Whether a field value is a Structured Fields dictionary (RFC 8941 §3.2) as targeted cache
/// control uses it: `key` or `key=value` members, keys lower case, values integers, booleans,
/// tokens or quoted strings, and the known directives of their type (RFC 9213 §2.1: a field
/// with a directive of the wrong type is invalid, and ignored as a whole).
fn is_dictionary(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    let is_key = |k: &str| {
        let mut bytes = k.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))
    };
    let is_value = |v: &str| {
        let integer = v.strip_prefix('-').unwrap_or(v);
        (!integer.is_empty() && integer.len() <= 15 && integer.bytes().all(|b| b.is_ascii_digit()))
            || (v.len() >= 2 && v.starts_with('"') && v.ends_with('"') && !v[1..v.len() - 1].contains('"'))
            || v.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*')
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"\",;=()<>@[]{}".contains(&b))
    };
    let is_integer = |v: &str| !v.is_empty() && v.len() <= 15 && v.bytes().all(|b| b.is_ascii_digit());
    let is_boolean = |v: &str| v == "?1" || v == "?0";
    text.split(',').all(|member| {
        let member = member.trim_matches([' ', '\t']);
        match member.split_once('=') {
            Some((key, value)) if INTEGER_DIRECTIVES.contains(&key) => is_integer(value),
            Some((key, value)) if BOOLEAN_DIRECTIVES.contains(&key) => is_boolean(value),
            Some((key, value)) => is_key(key) && (is_value(value) || is_boolean(value)),
            None => is_key(member) && !INTEGER_DIRECTIVES.contains(&member),
        }
    })
}

/// How old the response already was when it arrived (RFC 9111 §4.2.3, without the request's
/// delay): its `Age`, or how far its `Date` is behind `now`, whichever is more. An `Age` that
/// is not a single non-negative integer is ignored.
fn initial_age(resp: &ResponseHeader, now: SystemTime) -> Duration {
    let single = |name: http::header::HeaderName| {
        let mut values = resp.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        }
    };
    let age_value = single(http::header::AGE)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        // Larger values than fit are "a very long time", as RFC 9111 §1.2.2 says.
        .map(|v| v.parse::<u64>().unwrap_or(u64::from(u32::MAX)))
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent_age = date(resp)
        .and_then(|date| now.duration_since(date).ok())
        .unwrap_or_default();
    age_value.max(apparent_age)
}

/// The response's `Date`, if it has one valid one.
fn date(resp: &ResponseHeader) -> Option<SystemTime> {
    let value = resp.headers.get(http::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok()
}

/// The stored response `stored` updated with the fields of a 304 (RFC 9111 §3.2, §4.3.4):
/// every field replaced or added, except the framing ones, which describe the stored body;
/// `Vary`, which the stored variance was computed from (Pingora keeps it); and `Set-Cookie`,
/// which was for the revalidating client, not for everyone.
pub fn updated_by_304(stored: &ResponseHeader, not_modified: &http::HeaderMap) -> ResponseHeader {
    use http::header::{
        CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, SET_COOKIE, TRANSFER_ENCODING, VARY,
    };
    let kept = [
        CONTENT_LENGTH,
        CONTENT_ENCODING,
        CONTENT_RANGE,
        TRANSFER_ENCODING,
        VARY,
        SET_COOKIE,
    ];
    let mut updated = stored.clone();
    for name in not_modified.keys() {
        if kept.contains(name) {
            continue;
        }
        updated.remove_header(name);
        for value in not_modified.get_all(name) {
            // Names and values come from a parsed response, so they are valid.
            let _ = updated.append_header(name.clone(), value.clone());
        }
    }
    updated
}

/// Decides whether and how long to cache `resp`.
pub fn decide(resp: &ResponseHeader, authorization_present: bool, policy: &TtlPolicy) -> RespCacheable {
    let status = resp.status.as_u16();
    let cc = cache_control(resp, policy);
    if cc.as_ref().is_some_and(|cc| cc.is_cacheable() == CcCacheable::No) {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    if authorization_present && cc.as_ref().is_none_or(|cc| !cc.allow_caching_authorized_req()) {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    // `*` anywhere in the list (`Vary: Foo, *`) means no request can be known to match.
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|name| name.trim_ascii() == b"*")
    }) {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let now = SystemTime::now();
    // Freshness runs from when the origin generated the response.
    let age = initial_age(resp, now);
    let created = now.checked_sub(age).unwrap_or(now);
    let lifetime_from_expires = || {
        // `Expires` against the origin's own `Date` (RFC 9111 §4.2.1), so clock skew between
        // the origin and this edge does not change the lifetime.
        let expires = pingora_cache::filters::calculate_expires_header_time(resp)?;
        let generated = date(resp)?;
        Some(created + expires.duration_since(generated).unwrap_or_default())
    };
    let from_origin = match cc.as_ref().and_then(|cc| cc.fresh_duration()) {
        Some(lifetime) => Some(created + lifetime),
        None => lifetime_from_expires()
            .or_else(|| calculate_fresh_until(now, cc.as_ref(), resp, authorization_present, &ORIGIN_ONLY)),
    };
    let at_least = |ttl: Duration| (!ttl.is_zero()).then(|| now + ttl);
    let fresh_until = if status >= 400 {
        match (from_origin, at_least(policy.error_ttl)) {
            (Some(origin), Some(floor)) => Some(origin.max(floor)),
            (origin, floor) => origin.or(floor),
        }
    } else if DEFAULT_TTL_STATUSES.contains(&status) {
        from_origin.or_else(|| at_least(policy.default_ttl))
    } else {
        from_origin
    };
    let Some(fresh_until) = fresh_until else {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    };
    let (stale_while_revalidate, stale_if_error) = match &cc {
        // A copy that must be revalidated every time is never served stale (RFC 9111 §4.2.4),
        // which Pingora checks for must-revalidate and proxy-revalidate but not no-cache.
        Some(cc) if cc.no_cache() => (0, 0),
        cc => calculate_serve_stale_durations(cc.as_ref(), &ORIGIN_ONLY),
    };
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    RespCacheable::Cacheable(CacheMeta::new(
        fresh_until,
        created,
        stale_while_revalidate,
        stale_if_error,
        header,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const NONE: TtlPolicy = TtlPolicy {
        default_ttl: Duration::ZERO,
        error_ttl: Duration::ZERO,
        targeted_field: None,
        strip_targeted: false,
    };
    const TEN: TtlPolicy = TtlPolicy {
        default_ttl: Duration::from_secs(10),
        error_ttl: Duration::from_secs(10),
        targeted_field: None,
        strip_targeted: false,
    };

    fn ttl(r: RespCacheable) -> Option<u64> {
        match r {
            RespCacheable::Cacheable(meta) => Some(meta.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn origin_freshness_rules() {
        assert_eq!(
            ttl(decide(
                &resp(200, &[("cache-control", "max-age=60")]),
                false,
                &NONE
            )),
            Some(60)
        );
        assert_eq!(
            ttl(decide(&resp(200, &[("cache-control", "no-store")]), false, &TEN)),
            None
        );
        assert_eq!(
            ttl(decide(
                &resp(200, &[("cache-control", "private, max-age=60")]),
                false,
                &TEN
            )),
            None
        );
        assert_eq!(
            ttl(decide(
                &resp(200, &[("vary", "*"), ("cache-control", "max-age=60")]),
                false,
                &TEN
            )),
            None
        );
        for vary in ["*, *", ", *", "*, Foo", "Foo, *", "Foo,*"] {
            let r = resp(200, &[("vary", vary), ("cache-control", "max-age=60")]);
            assert_eq!(ttl(decide(&r, false, &TEN)), None, "Vary: {vary}");
        }
    }

    #[test]
    fn default_ttl_applies_only_without_origin_freshness() {
        assert_eq!(ttl(decide(&resp(200, &[]), false, &NONE)), None);
        assert_eq!(ttl(decide(&resp(200, &[]), false, &TEN)), Some(10));
        assert_eq!(ttl(decide(&resp(302, &[]), false, &TEN)), None);
    }

    #[test]
    fn error_ttl_is_a_floor_for_errors() {
        assert_eq!(ttl(decide(&resp(404, &[]), false, &NONE)), None);
        assert_eq!(ttl(decide(&resp(404, &[]), false, &TEN)), Some(10));
        assert_eq!(
            ttl(decide(&resp(500, &[("cache-control", "max-age=2")]), false, &TEN)),
            Some(10)
        );
        assert_eq!(
            ttl(decide(
                &resp(404, &[("cache-control", "max-age=60")]),
                false,
                &TEN
            )),
            Some(60)
        );
        assert_eq!(
            ttl(decide(&resp(503, &[("cache-control", "no-store")]), false, &TEN)),
            None
        );
    }

    fn with_own_field() -> TtlPolicy {
        TtlPolicy {
            targeted_field: Some(http::HeaderName::from_static("edge-cache-control")),
            strip_targeted: false,
            ..NONE
        }
    }

    fn meta(r: RespCacheable) -> CacheMeta {
        match r {
            RespCacheable::Cacheable(meta) => meta,
            RespCacheable::Uncacheable(why) => panic!("uncacheable: {why:?}"),
        }
    }

    #[test]
    fn the_origins_age_and_date_count_as_age_already_spent() {
        let now = SystemTime::now();
        let date = |ago: u64| httpdate::fmt_http_date(now - Duration::from_secs(ago));
        let age = |headers: &[(&str, &str)]| initial_age(&resp(200, headers), now).as_secs();
        assert_eq!(age(&[]), 0);
        assert_eq!(age(&[("age", "100")]), 100);
        assert_eq!(age(&[("date", &date(50))]), 50);
        assert_eq!(age(&[("age", "100"), ("date", &date(50))]), 100, "the larger");
        assert_eq!(age(&[("age", "10"), ("date", &date(50))]), 50, "the larger");
        for ignored in ["soon", "", "-5", "1.5", "10, 20"] {
            assert_eq!(age(&[("age", ignored)]), 0, "Age: {ignored:?}");
        }
        assert_eq!(age(&[("age", "10"), ("age", "20")]), 0, "two Age fields");
        assert_eq!(age(&[("age", "99999999999999999999")]), u64::from(u32::MAX));
        assert_eq!(age(&[("date", "yesterday")]), 0);
        // A response already 100 s old lives 100 s less: created that long ago.
        let aged = meta(decide(
            &resp(200, &[("cache-control", "max-age=600"), ("age", "100")]),
            false,
            &NONE,
        ));
        assert!((100..=101).contains(&aged.age().as_secs()), "{:?}", aged.age());
    }

    #[test]
    fn expires_counts_from_the_origins_date() {
        let now = SystemTime::now();
        let at = |offset: u64| httpdate::fmt_http_date(now + Duration::from_secs(offset));
        // The origin's clock is an hour ahead; its response lives two minutes.
        let skewed = resp(200, &[("date", &at(3600)), ("expires", &at(3720))]);
        let fresh = meta(decide(&skewed, false, &NONE)).fresh_sec();
        assert!((119..=120).contains(&fresh), "{fresh}");
    }

    #[test]
    fn only_copies_that_may_be_reused_unrevalidated_are_served_stale() {
        let stale = |cc: &str| {
            let m = meta(decide(&resp(200, &[("cache-control", cc)]), false, &NONE));
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec())
        };
        assert_eq!(
            stale("max-age=60, stale-while-revalidate=10, stale-if-error=30"),
            (10, 30)
        );
        assert_eq!(
            stale("no-cache, stale-while-revalidate=10, stale-if-error=30"),
            (0, 0)
        );
    }

    #[test]
    fn targeted_directives_must_have_their_structured_type() {
        for valid in [
            "max-age=60",
            "no-store",
            "no-store=?1",
            "public, max-age=0",
            "private=\"set-cookie\"",
        ] {
            assert!(is_dictionary(valid.as_bytes()), "{valid}");
        }
        for invalid in [
            "max-age=\"60\"",
            "max-age",
            "max-age=-1",
            "s-maxage=1.5",
            "no-store=1",
            "public=\"yes\"",
        ] {
            assert!(!is_dictionary(invalid.as_bytes()), "{invalid}");
        }
    }

    #[test]
    fn an_age_with_anything_after_its_digits_is_ignored() {
        let now = SystemTime::now();
        for (age, expected) in [
            ("30", 30),
            ("30s", 0),
            ("30 ", 0),
            ("3 0", 0),
            ("+30", 0),
            ("", 0),
        ] {
            let mut r = ResponseHeader::build(200, None).unwrap();
            if let Ok(value) = http::HeaderValue::from_bytes(age.as_bytes()) {
                r.append_header(http::header::AGE, value).unwrap();
            }
            assert_eq!(
                initial_age(&r, now),
                Duration::from_secs(expected),
                "Age: {age:?}"
            );
        }
    }

    #[test]
    fn targeted_fields_are_the_domains_own_then_cdn_cache_control() {
        let own = with_own_field();
        let fields: Vec<&str> = own.targeted_fields().collect();
        assert_eq!(fields, ["edge-cache-control", "cdn-cache-control"]);
        let fields: Vec<&str> = NONE.targeted_fields().collect();
        assert_eq!(fields, ["cdn-cache-control"]);
    }

    #[test]
    fn a_valid_targeted_field_replaces_cache_control_and_an_invalid_one_is_ignored() {
        let fresh =
            |headers: &[(&str, &str)], policy: &TtlPolicy| ttl(decide(&resp(200, headers), false, policy));
        let both = [
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "max-age=600"),
        ];
        assert_eq!(fresh(&both, &NONE), Some(600));
        let own = [
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "max-age=600"),
            ("edge-cache-control", "max-age=6000"),
        ];
        assert_eq!(fresh(&own, &with_own_field()), Some(6000));
        assert_eq!(
            fresh(&own, &NONE),
            Some(600),
            "another domain's field is not ours"
        );
        let invalid = [
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "Max-Age=600"),
        ];
        assert_eq!(fresh(&invalid, &NONE), Some(60));
        let no_store = [("cache-control", "max-age=60"), ("cdn-cache-control", "no-store")];
        assert_eq!(fresh(&no_store, &NONE), None);
        // One invalid line of several invalidates the field as a whole.
        let lines = [
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "max-age=600"),
            ("cdn-cache-control", "MAX-AGE=6"),
        ];
        assert_eq!(fresh(&lines, &NONE), Some(60));
    }

    #[test]
    fn dictionaries_are_told_from_other_values() {
        for valid in [
            "max-age=60",
            "no-store",
            "max-age=60, stale-if-error=30",
            "max-age=60,\tmust-revalidate",
            "a=-5",
            "a=123456789012345",
            "a=\"quoted\"",
            "a=\"\"",
            "a=tok/en:1",
            "a=*star",
            "*key",
            "k_1.x-y*",
        ] {
            assert!(is_dictionary(valid.as_bytes()), "{valid:?}");
        }
        for invalid in [
            "",
            "Max-Age=60",
            "1a",
            "-a",
            "a=1234567890123456",
            "a=-",
            "a=",
            "a=\"",
            "a=\"x\"y\"",
            "a=b c",
            "a=(x)",
            "a=1a",
            "a,",
            "a=b;c",
            "a=b, B=c",
        ] {
            assert!(!is_dictionary(invalid.as_bytes()), "{invalid:?}");
        }
        assert!(!is_dictionary(b"a=\xff"));
    }

    #[test]
    fn authorized_requests_need_explicit_permission() {
        assert_eq!(
            ttl(decide(
                &resp(200, &[("cache-control", "max-age=60")]),
                true,
                &NONE
            )),
            None
        );
        assert_eq!(
            ttl(decide(
                &resp(200, &[("cache-control", "public, max-age=60")]),
                true,
                &NONE
            )),
            Some(60)
        );
    }
}
