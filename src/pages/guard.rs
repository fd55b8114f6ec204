//! The loop guard (RFC 8586 `CDN-Loop`): every request the edge sends carries its token, so a
//! request that comes back through the edge is recognized. A page fetch coming back once is
//! served without custom pages (a missing page can never be answered with itself); anything
//! seen twice is a loop and answered 508 at once.

use pingora_error::Result;
use pingora_http::RequestHeader;

/// The `CDN-Loop` token this edge adds to its own requests.
pub const CDN_LOOP_TOKEN: &str = "custom-pages";

/// What the `CDN-Loop` header says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hops {
    /// The edge has not seen it: a client's request.
    First,
    /// The edge sent it once: one of its own page fetches (or a forwarded request) coming back.
    Second,
    /// The edge sent it twice or more: a loop.
    Looping,
}

/// How many times this edge already handled `req`.
pub fn hops(req: &RequestHeader) -> Hops {
    let seen = req
        .headers
        .get_all("cdn-loop")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .filter(|token| token.split(';').next().unwrap_or_default().trim() == CDN_LOOP_TOKEN)
        .count();
    match seen {
        0 => Hops::First,
        1 => Hops::Second,
        _ => Hops::Looping,
    }
}

/// Adds the edge's token to a request it sends (to an origin, or for a page).
pub fn mark(req: &mut RequestHeader) -> Result<()> {
    req.append_header("cdn-loop", CDN_LOOP_TOKEN).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cdn_loop: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for value in cdn_loop {
            req.append_header("cdn-loop", *value).unwrap();
        }
        req
    }

    #[test]
    fn counts_only_this_edges_token() {
        assert_eq!(hops(&request(&[])), Hops::First);
        assert_eq!(hops(&request(&["other-cdn, cloudflare"])), Hops::First);
        assert_eq!(hops(&request(&["other-cdn, custom-pages; v=1"])), Hops::Second);
        assert_eq!(hops(&request(&["custom-pages", "custom-pages"])), Hops::Looping);
        let mut marked = request(&["custom-pages"]);
        mark(&mut marked).unwrap();
        assert_eq!(hops(&marked), Hops::Looping);
    }
}
