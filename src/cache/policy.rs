//! What the content cache keeps, and for how long: the origin's Cache-Control/Expires as
//! Pingora interprets them, plus the domain's `default_ttl` (responses that say nothing) and
//! `error_ttl` (negative caching: an origin 4xx/5xx is kept at least that long).

use pingora_cache::cache_control::{CacheControl, Cacheable as CcCacheable, InterpretCacheControl};
use pingora_cache::filters::{calculate_fresh_until, calculate_serve_stale_durations};
use pingora_cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// Freshness the origin did not give is decided below, per domain, so Pingora's defaults
/// give none.
const ORIGIN_ONLY: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// Statuses cached with `default_ttl` when the origin gives no freshness (RFC 9110's
/// heuristically cacheable successes and redirects).
const DEFAULT_TTL_STATUSES: [u16; 5] = [200, 203, 204, 301, 308];

/// Per-domain freshness settings.
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    /// Freshness of responses that give none (0: not cached).
    pub default_ttl: Duration,
    /// Minimum freshness of origin 4xx/5xx (0: no negative caching).
    pub error_ttl: Duration,
}

/// Decides whether and how long to cache `resp`.
pub fn decide(resp: &ResponseHeader, authorization_present: bool, policy: TtlPolicy) -> RespCacheable {
    let status = resp.status.as_u16();
    let cc = CacheControl::from_resp_headers(resp);
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
    let from_origin = calculate_fresh_until(now, cc.as_ref(), resp, authorization_present, &ORIGIN_ONLY);
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
    let (stale_while_revalidate, stale_if_error) = calculate_serve_stale_durations(cc.as_ref(), &ORIGIN_ONLY);
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    RespCacheable::Cacheable(CacheMeta::new(
        fresh_until,
        now,
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
    };
    const TEN: TtlPolicy = TtlPolicy {
        default_ttl: Duration::from_secs(10),
        error_ttl: Duration::from_secs(10),
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
                NONE
            )),
            Some(60)
        );
        assert_eq!(
            ttl(decide(&resp(200, &[("cache-control", "no-store")]), false, TEN)),
            None
        );
        assert_eq!(
            ttl(decide(
                &resp(200, &[("cache-control", "private, max-age=60")]),
                false,
                TEN
            )),
            None
        );
        assert_eq!(
            ttl(decide(
                &resp(200, &[("vary", "*"), ("cache-control", "max-age=60")]),
                false,
                TEN
            )),
            None
        );
        for vary in ["*, *", ", *", "*, Foo", "Foo, *", "Foo,*"] {
            let r = resp(200, &[("vary", vary), ("cache-control", "max-age=60")]);
            assert_eq!(ttl(decide(&r, false, TEN)), None, "Vary: {vary}");
        }
    }

    #[test]
    fn default_ttl_applies_only_without_origin_freshness() {
        assert_eq!(ttl(decide(&resp(200, &[]), false, NONE)), None);
        assert_eq!(ttl(decide(&resp(200, &[]), false, TEN)), Some(10));
        assert_eq!(ttl(decide(&resp(302, &[]), false, TEN)), None);
    }

    #[test]
    fn error_ttl_is_a_floor_for_errors() {
        assert_eq!(ttl(decide(&resp(404, &[]), false, NONE)), None);
        assert_eq!(ttl(decide(&resp(404, &[]), false, TEN)), Some(10));
        assert_eq!(
            ttl(decide(&resp(500, &[("cache-control", "max-age=2")]), false, TEN)),
            Some(10)
        );
        assert_eq!(
            ttl(decide(&resp(404, &[("cache-control", "max-age=60")]), false, TEN)),
            Some(60)
        );
        assert_eq!(
            ttl(decide(&resp(503, &[("cache-control", "no-store")]), false, TEN)),
            None
        );
    }

    #[test]
    fn authorized_requests_need_explicit_permission() {
        assert_eq!(
            ttl(decide(&resp(200, &[("cache-control", "max-age=60")]), true, NONE)),
            None
        );
        assert_eq!(
            ttl(decide(
                &resp(200, &[("cache-control", "public, max-age=60")]),
                true,
                NONE
            )),
            Some(60)
        );
    }
}
