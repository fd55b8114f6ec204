//! Replacing the origin's body chunks by the page, one chunk at a time.

use bytes::Bytes;

/// What happens to the origin's body chunks of one response.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Replacement {
    /// They pass: nothing is replaced.
    #[default]
    Pass,
    /// The page goes out in place of the first chunk.
    AtFirstChunk(Bytes),
    /// The page goes out in place of the chunk that ends the body; the others are dropped.
    /// For a body being written to the cache: the proxy must read the origin to its end, and
    /// Pingora's HTTP/1.1 writer stops it once a complete `Content-Length` went out.
    AtEndOfStream(Bytes),
    /// The page went out (or none is due, as for HEAD): every chunk is dropped.
    Drop,
}

impl Replacement {
    /// Applies the replacement to one chunk (`None` after it: nothing is written).
    pub fn on_chunk(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        match std::mem::take(self) {
            Replacement::Pass => {}
            Replacement::AtFirstChunk(page) => {
                *body = Some(page);
                *self = Replacement::Drop;
            }
            Replacement::AtEndOfStream(page) if end_of_stream => {
                *body = Some(page);
                *self = Replacement::Drop;
            }
            waiting @ (Replacement::AtEndOfStream(_) | Replacement::Drop) => {
                *body = None;
                *self = waiting;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: Bytes = Bytes::from_static(b"<p>page</p>");

    /// What goes out for each `(chunk, end_of_stream)` given.
    fn run(mut replacement: Replacement, chunks: &[(&'static str, bool)]) -> Vec<Option<Bytes>> {
        chunks
            .iter()
            .map(|(chunk, end)| {
                let mut body = Some(Bytes::from_static(chunk.as_bytes()));
                replacement.on_chunk(&mut body, *end);
                body
            })
            .collect()
    }

    #[test]
    fn pass_leaves_every_chunk() {
        let out = run(Replacement::Pass, &[("a", false), ("b", true)]);
        assert_eq!(out, [Some(Bytes::from("a")), Some(Bytes::from("b"))]);
    }

    #[test]
    fn at_first_chunk_sends_the_page_once_and_drops_the_rest() {
        let out = run(
            Replacement::AtFirstChunk(PAGE),
            &[("a", false), ("b", false), ("c", true)],
        );
        assert_eq!(out, [Some(PAGE), None, None]);
    }

    #[test]
    fn at_end_of_stream_waits_for_the_last_chunk() {
        let out = run(
            Replacement::AtEndOfStream(PAGE),
            &[("a", false), ("b", false), ("", true), ("late", true)],
        );
        assert_eq!(out, [None, None, Some(PAGE), None]);
        let single = run(Replacement::AtEndOfStream(PAGE), &[("whole", true)]);
        assert_eq!(single, [Some(PAGE)]);
    }

    #[test]
    fn drop_sends_nothing() {
        let out = run(Replacement::Drop, &[("a", false), ("b", true)]);
        assert_eq!(out, [None, None]);
    }
}
