//! Pages as templates: `{{status}}`, `{{reason}}`, `{{host}}`, `{{path}}`, `{{request_id}}` and
//! `{{time}}` are filled per response, escaped for the page's media type. A page is parsed
//! once, when it is fetched; one without placeholders has no template and is served as it is,
//! without a copy.

use bytes::{Bytes, BytesMut};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// A value a page may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Status,
    Reason,
    Host,
    Path,
    RequestId,
    Time,
}

impl Field {
    fn named(name: &str) -> Option<Field> {
        Some(match name {
            "status" => Field::Status,
            "reason" => Field::Reason,
            "host" => Field::Host,
            "path" => Field::Path,
            "request_id" => Field::RequestId,
            "time" => Field::Time,
            _ => return None,
        })
    }
}

#[derive(Debug)]
enum Segment {
    Text(Range<usize>),
    Field(Field),
}

/// How values are escaped: by the page's media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    Html,
    Json,
    None,
}

/// A page with placeholders, parsed.
#[derive(Debug)]
pub struct Template {
    segments: Vec<Segment>,
    escape: Escape,
}

/// What a template is filled with.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// The status answered.
    pub status: u16,
    /// The request's host.
    pub host: &'a str,
    /// The request's path.
    pub path: &'a str,
    /// The request's id.
    pub request_id: &'a str,
}

impl Template {
    /// The template of a page with this body and `Content-Type`, if it has a placeholder the
    /// edge knows; and the names of the placeholders it does not know (left as written).
    ///
    /// Only HTML and XML, JSON and plain text pages are templates: a value could not be
    /// escaped safely for anything else (a script, a stylesheet).
    pub fn parse(body: &[u8], content_type: &str) -> (Option<Template>, Vec<String>) {
        let media = super::response::essence(content_type);
        let escape = if media == "text/html" || media.ends_with("+xml") || media.ends_with("/xml") {
            Escape::Html
        } else if media.ends_with("/json") || media.ends_with("+json") {
            Escape::Json
        } else if media == "text/plain" {
            Escape::None
        } else {
            return (None, Vec::new());
        };
        // Names reported in the log: nothing that could forge a log line.
        let reportable = |n: &str| {
            n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-. ".contains(&b))
        };
        let mut segments = Vec::new();
        let mut unknown = Vec::new();
        let (mut text_from, mut at) = (0, 0);
        while let Some(open) = find(&body[at..], b"{{").map(|i| at + i) {
            let Some(close) = find(&body[open + 2..], b"}}").map(|i| open + 2 + i) else {
                break;
            };
            let name = String::from_utf8_lossy(&body[open + 2..close]).trim().to_string();
            match Field::named(&name) {
                Some(field) => {
                    if text_from < open {
                        segments.push(Segment::Text(text_from..open));
                    }
                    segments.push(Segment::Field(field));
                    text_from = close + 2;
                }
                None => {
                    if reportable(&name) && !unknown.contains(&name) {
                        unknown.push(name);
                    }
                }
            }
            at = close + 2;
        }
        if !segments.iter().any(|s| matches!(s, Segment::Field(_))) {
            return (None, unknown);
        }
        if text_from < body.len() {
            segments.push(Segment::Text(text_from..body.len()));
        }
        (Some(Template { segments, escape }), unknown)
    }

    /// The page `body` (the one this template was parsed from) filled with `values`.
    pub fn render(&self, body: &Bytes, values: &Values<'_>) -> Bytes {
        let mut out = BytesMut::with_capacity(body.len() + 64);
        for segment in &self.segments {
            match segment {
                Segment::Text(range) => out.extend_from_slice(&body[range.clone()]),
                Segment::Field(field) => {
                    let value = match field {
                        Field::Status => values.status.to_string(),
                        Field::Reason => http::StatusCode::from_u16(values.status)
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("Error")
                            .to_string(),
                        Field::Host => values.host.to_string(),
                        Field::Path => values.path.to_string(),
                        Field::RequestId => values.request_id.to_string(),
                        Field::Time => {
                            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
                        }
                    };
                    self.escape_into(&mut out, &value);
                }
            }
        }
        out.freeze()
    }

    fn escape_into(&self, out: &mut BytesMut, value: &str) {
        // Control characters (a decoded `%1b` in a path) have no place in a page.
        let value: String = value.chars().filter(|c| !c.is_control()).collect();
        let value = value.as_str();
        match self.escape {
            Escape::None => out.extend_from_slice(value.as_bytes()),
            Escape::Html => out.extend_from_slice(super::response::escape_html(value).as_bytes()),
            Escape::Json => {
                // The inside of a JSON string: serde_json's own escaping, without the quotes.
                let quoted = serde_json::to_string(value).unwrap_or_default();
                let inside = quoted
                    .strip_prefix('"')
                    .and_then(|q| q.strip_suffix('"'))
                    .unwrap_or_default();
                out.extend_from_slice(inside.as_bytes());
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The id of a request: the client's `X-Request-Id` when it is a sane token (1 to 128 of
/// `A-Z a-z 0-9 - _ . :`), else a new one, unique to this edge process.
pub fn request_id(client_id: Option<&[u8]>) -> String {
    if let Some(id) = client_id.filter(|id| {
        !id.is_empty()
            && id.len() <= 128
            && id
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    }) {
        return String::from_utf8_lossy(id).into_owned();
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        started ^ (u64::from(std::process::id()) << 40)
    });
    format!("{:016x}{:08x}", *PROCESS, NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values<'static> {
        Values {
            status: 404,
            host: "a.com",
            path: "/x/<script>\"",
            request_id: "r-1",
        }
    }

    #[test]
    fn placeholders_are_filled_and_escaped_by_media_type() {
        let body = Bytes::from_static(b"<p>{{status}} {{ reason }} {{path}} {{request_id}} {{nope}}</p>");
        let (template, unknown) = Template::parse(&body, "text/html; charset=utf-8");
        assert_eq!(unknown, ["nope"]);
        let out = template.expect("a template").render(&body, &values());
        assert_eq!(
            &out[..],
            b"<p>404 Not Found /x/&lt;script&gt;&quot; r-1 {{nope}}</p>"
        );
        let body = Bytes::from_static(b"{\"path\": \"{{path}}\", \"host\": \"{{host}}\"}");
        let (template, _) = Template::parse(&body, "application/problem+json");
        let out = template.expect("a template").render(&body, &values());
        assert_eq!(&out[..], br#"{"path": "/x/<script>\"", "host": "a.com"}"#);
        let body = Bytes::from_static(b"{{path}}");
        let out = Template::parse(&body, "text/plain")
            .0
            .expect("a template")
            .render(&body, &values());
        assert_eq!(&out[..], b"/x/<script>\"");
    }

    #[test]
    fn only_html_json_and_text_pages_are_templates_and_controls_go() {
        let body = Bytes::from_static(b"var p = \"{{path}}\";");
        assert!(Template::parse(&body, "text/javascript").0.is_none());
        assert!(Template::parse(&body, "text/css").0.is_none());
        let body = Bytes::from_static(b"{{path}}");
        let mut v = values();
        v.path = "/a\u{1b}$B\n";
        let out = Template::parse(&body, "text/plain")
            .0
            .expect("a template")
            .render(&body, &v);
        assert_eq!(&out[..], b"/a$B");
        let (_, unknown) = Template::parse(b"{{x\nFAKE LOG}} {{ok_name}}", "text/html");
        assert_eq!(
            unknown,
            ["ok_name"],
            "names that could forge log lines are not reported"
        );
    }

    #[test]
    fn xml_pages_are_escaped_as_html_and_time_is_rfc_3339() {
        for media in ["application/xml", "text/xml", "application/atom+xml"] {
            let body = Bytes::from_static(b"<p>{{path}}</p>");
            let (template, _) = Template::parse(&body, media);
            let out = template.expect(media).render(&body, &values());
            assert_eq!(&out[..], b"<p>/x/&lt;script&gt;&quot;</p>", "{media}");
        }
        let body = Bytes::from_static(b"{{time}}");
        let out = Template::parse(&body, "text/plain")
            .0
            .expect("a template")
            .render(&body, &values());
        let time = std::str::from_utf8(&out).expect("text");
        let parsed = humantime::parse_rfc3339(time).expect("RFC 3339");
        let off = parsed
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(off < std::time::Duration::from_secs(5), "{time}");
    }

    #[test]
    fn an_empty_placeholder_is_text_and_the_next_one_is_filled() {
        let body = Bytes::from_static(b"{{}}{{status}}{{}}");
        let out = Template::parse(&body, "text/plain")
            .0
            .expect("a template")
            .render(&body, &values());
        assert_eq!(&out[..], b"{{}}404{{}}");
    }

    #[test]
    fn pages_without_known_placeholders_have_no_template() {
        assert!(Template::parse(b"<p>plain {{unknown}} {{ and {{", "text/html")
            .0
            .is_none());
        assert!(Template::parse(b"", "text/html").0.is_none());
    }

    #[test]
    fn request_ids_are_the_clients_when_sane() {
        assert_eq!(request_id(Some(b"abc-123_x.y:z")), "abc-123_x.y:z");
        for insane in [&b""[..], b"a b", b"<script>", &[b'a'; 129]] {
            let id = request_id(Some(insane));
            assert_eq!(id.len(), 24, "{id}");
        }
        assert_ne!(request_id(None), request_id(None));
    }
}
