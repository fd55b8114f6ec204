//! Self-contained pages. A page is served in place at whatever path failed (`/a/b/missing`),
//! often while its origin is down, so its relative links point at the wrong place and its
//! stylesheet and images fail exactly when it is shown. When the store fetches an HTML page it
//! therefore fetches the stylesheets, images and fonts the page uses from the domains this
//! edge serves (same limits and privacy as the page itself) and puts them into the page:
//! stylesheets as `<style>`, images and fonts as `data:` URIs, up to `pages.inline_budget`
//! bytes per page. Every other reference gets an absolute URL, and a page without a
//! `<base href>` gets one naming the page URL, so what scripts build resolves too.
//!
//! Two passes over the HTML, because fetching is async and the rewriter is not: [`references`]
//! lists what the page names, then [`rewrite`] writes the page with what was fetched.
//! HTML goes through Cloudflare's streaming rewriter (`lol_html`), CSS through Servo's
//! tokenizer (`cssparser`): comments, strings and escapes are theirs to get right.

use super::fetch::PageFetcher;
use super::page::Page;
use super::response::{escape_html, essence};
use crate::spec::{PageSettings, PageUrl};
use crate::upstream::Origin;
use base64::Engine;
use bytes::Bytes;
use cssparser::{Parser, ParserInput, Token};
use lol_html::html_content::ContentType;
use lol_html::{element, text, AsciiCompatibleEncoding, HtmlRewriter, Settings};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use tokio::time::Instant;
use url::Url;

/// Where sub-resources on other hosts than the page's are fetched: the origin of each domain
/// the edge serves.
pub trait Sites: Send + Sync {
    /// The origin serving `host` (lower case, no port), if the edge serves that domain.
    fn origin(&self, host: &str) -> Option<Arc<Origin>>;
}

/// No other domain: sub-resources are fetched from the page's own host only.
pub struct NoSites;

impl Sites for NoSites {
    fn origin(&self, _host: &str) -> Option<Arc<Origin>> {
        None
    }
}

/// Most sub-resources fetched for one page; references beyond keep an absolute URL.
const MAX_RESOURCES: usize = 64;

/// Attributes that hold one URL, made absolute when not inlined (`srcset` and the like are
/// left to the `<base href>`).
const URL_ATTRIBUTES: [&str; 7] = [
    "href",
    "src",
    "poster",
    "action",
    "formaction",
    "cite",
    "background",
];

/// A page made self-contained.
#[derive(Debug)]
pub struct Inlined {
    /// The rewritten page.
    pub body: Bytes,
    /// Sub-resources that could not be fetched (`url: reason`); the page refers to them by
    /// absolute URL instead. The store keeps its last good copy when this is not empty.
    pub failures: Vec<String>,
}

/// Makes the HTML page `body`, fetched from `page_url` through `origin`, self-contained (see
/// the module docs). Fetches run concurrently, each bounded by `deadline`.
pub async fn self_contained(
    fetched: &Page,
    page_url: &PageUrl,
    origin: &Arc<Origin>,
    sites: &dyn Sites,
    fetcher: &dyn PageFetcher,
    settings: &PageSettings,
    deadline: Instant,
) -> Inlined {
    let body = &fetched.body;
    let unchanged = |failures: Vec<String>| Inlined {
        body: body.clone(),
        failures,
    };
    let page = match Url::parse(page_url.as_str()) {
        Ok(url) => url,
        Err(e) => return unchanged(vec![format!("the page URL cannot be resolved against: {e}")]),
    };
    let encoding = encoding(&fetched.content_type);
    let found = match references(body, &page, encoding) {
        Ok(found) => found,
        Err(e) => return unchanged(vec![format!("the page cannot be read as HTML: {e}")]),
    };
    // A page that names nothing stays exactly as written.
    if found.urls.is_empty() && !found.relative {
        return unchanged(Vec::new());
    }
    let mut resources = Resources::default();
    let fetch = Fetch {
        page_host: page_url.host(),
        origin,
        sites,
        fetcher,
        settings: PageSettings {
            max_size: settings.max_size.min(settings.inline_budget),
            ..settings.clone()
        },
        deadline,
    };
    fetch.all(found.urls.clone(), &mut resources).await;
    // What the fetched stylesheets name (fonts, background images) is a second round.
    let named_by_sheets: Vec<Url> = resources
        .0
        .iter()
        .filter_map(|(url, got)| Some((url, got.stylesheet()?)))
        .flat_map(|(sheet, css)| {
            let named = css_references(css).into_iter().filter(|r| !r.import);
            named.filter_map(|r| sheet.join(&r.url).ok())
        })
        .collect();
    fetch.all(named_by_sheets, &mut resources).await;
    let failures = resources
        .0
        .iter()
        .filter_map(|(url, got)| match got {
            Got::Failed(reason) => Some(format!("{url}: {reason}")),
            _ => None,
        })
        .collect();
    match rewrite(body, &found, &resources, settings.inline_budget, encoding) {
        Ok(body) => Inlined { body, failures },
        Err(e) => unchanged(vec![format!("the page cannot be rewritten: {e}")]),
    }
}

/// The page's character encoding, from its `Content-Type` (UTF-8 when it names none or one
/// the rewriter cannot handle), so attributes are read and written in it.
fn encoding(content_type: &http::HeaderValue) -> AsciiCompatibleEncoding {
    let charset = content_type.to_str().ok().and_then(|ct| {
        ct.split(';')
            .filter_map(|param| param.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("charset"))
            .map(|(_, value)| value.trim().trim_matches('"').to_string())
    });
    charset
        .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes()))
        .and_then(AsciiCompatibleEncoding::new)
        .unwrap_or_else(AsciiCompatibleEncoding::utf_8)
}

/// What [`references`] found in a page.
#[derive(Debug)]
struct Found {
    /// What relative references resolve against: the page's `<base href>`, else its URL.
    base: Url,
    /// Whether the page has a `<base href>` of its own.
    has_base: bool,
    /// Whether the page has a relative reference (a fragment alone is not one) or a script
    /// (which may build one): then, without a base of its own, it gets one.
    relative: bool,
    /// Stylesheets, icons and images the page names (in `<link>`, `<img>`, `<style>` and
    /// `style` attributes), absolute, in document order.
    urls: Vec<Url>,
}

/// Pass one: what a page names that may be inlined.
fn references(
    html: &[u8],
    page: &Url,
    encoding: AsciiCompatibleEncoding,
) -> Result<Found, lol_html::errors::RewritingError> {
    let found = RefCell::new(Found {
        base: page.clone(),
        has_base: false,
        relative: false,
        urls: Vec::new(),
    });
    let style = RefCell::new(String::new());
    let add_css = |css: &str| {
        let mut found = found.borrow_mut();
        let references = css_references(css);
        found.relative |= references.iter().any(|r| is_relative(&r.url));
        let urls: Vec<Url> = references
            .into_iter()
            .filter(|r| !r.import)
            .filter_map(|r| found.base.join(&r.url).ok())
            .collect();
        found.urls.extend(urls);
    };
    let settings = Settings {
        element_content_handlers: vec![
            element!("*", |el| {
                let mut found = found.borrow_mut();
                let tag = el.tag_name();
                if tag == "base" && !found.has_base {
                    if let Some(base) = el.get_attribute("href").and_then(|h| page.join(&h).ok()) {
                        found.base = base;
                        found.has_base = true;
                    }
                }
                let inlinable = match tag.as_str() {
                    "link" => link_kind(&el.get_attribute("rel").unwrap_or_default()).map(|_| "href"),
                    "img" => Some("src"),
                    _ => None,
                };
                if let Some(url) = inlinable.and_then(|attr| el.get_attribute(attr)) {
                    if let Ok(url) = found.base.join(&url) {
                        found.urls.push(url);
                    }
                }
                let relative = URL_ATTRIBUTES
                    .iter()
                    .chain(&["srcset"])
                    .filter_map(|attr| el.get_attribute(attr))
                    .any(|value| is_relative(&value));
                found.relative |= relative || tag == "script";
                drop(found);
                if let Some(css) = el.get_attribute("style") {
                    add_css(&css);
                }
                Ok(())
            }),
            text!("style", |chunk| {
                style.borrow_mut().push_str(chunk.as_str());
                if chunk.last_in_text_node() {
                    add_css(&style.take());
                }
                Ok(())
            }),
        ],
        strict: false,
        encoding,
        ..Settings::new()
    };
    let mut rewriter = HtmlRewriter::new(settings, |_: &[u8]| {});
    rewriter.write(html)?;
    rewriter.end()?;
    Ok(found.into_inner())
}

/// What a `<link rel>` names that may be inlined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    Stylesheet,
    Icon,
}

fn link_kind(rel: &str) -> Option<LinkKind> {
    let has = |token: &str| {
        rel.split_ascii_whitespace()
            .any(|t| t.eq_ignore_ascii_case(token))
    };
    if has("stylesheet") && !has("alternate") {
        Some(LinkKind::Stylesheet)
    } else if has("icon") {
        Some(LinkKind::Icon)
    } else {
        None
    }
}

/// One fetched sub-resource.
#[derive(Debug)]
enum Got {
    /// The body and its media type (`image/png`, no parameters).
    Body { media: String, body: Bytes },
    /// Not fetched or not usable (another site, larger than the budget, an odd media type):
    /// referred to by absolute URL, and not a failure.
    Skipped,
    /// The fetch failed: why.
    Failed(String),
}

impl Got {
    /// The CSS text, if this is a stylesheet.
    fn stylesheet(&self) -> Option<&str> {
        match self {
            Got::Body { media, body } if media == "text/css" => std::str::from_utf8(body).ok(),
            _ => None,
        }
    }
}

/// Every sub-resource fetched for a page, by absolute URL.
#[derive(Debug, Default)]
struct Resources(HashMap<Url, Got>);

/// How sub-resources are fetched for one page.
struct Fetch<'a> {
    page_host: &'a str,
    origin: &'a Arc<Origin>,
    sites: &'a dyn Sites,
    fetcher: &'a dyn PageFetcher,
    /// The page settings, with `max_size` lowered to the inline budget.
    settings: PageSettings,
    deadline: Instant,
}

impl Fetch<'_> {
    /// Fetches every URL of `urls` not fetched yet, at once.
    async fn all(&self, urls: Vec<Url>, into: &mut Resources) {
        let mut wanted = Vec::new();
        for mut url in urls {
            url.set_fragment(None);
            if into.0.contains_key(&url) || wanted.contains(&url) {
                continue;
            }
            if into.0.len() + wanted.len() >= MAX_RESOURCES {
                into.0.insert(url, Got::Skipped);
                continue;
            }
            wanted.push(url);
        }
        let fetches = wanted.iter().map(|url| self.one(url));
        let results = futures::future::join_all(fetches).await;
        into.0.extend(wanted.into_iter().zip(results));
    }

    async fn one(&self, url: &Url) -> Got {
        let Ok(page_url) = url.as_str().parse::<PageUrl>() else {
            return Got::Skipped;
        };
        let origin = if page_url.host() == self.page_host {
            self.origin.clone()
        } else {
            match self.sites.origin(page_url.host()) {
                Some(origin) => origin,
                None => return Got::Skipped,
            }
        };
        let fetch = self.fetcher.fetch(&page_url, &origin, &self.settings);
        match tokio::time::timeout_at(self.deadline, fetch).await {
            Ok(Ok(page)) => match media_type(&page.content_type) {
                Some(media) => Got::Body {
                    media,
                    body: page.body,
                },
                None => Got::Skipped,
            },
            Ok(Err(e)) if e.kind == "too_large" => Got::Skipped,
            Ok(Err(e)) => Got::Failed(e.reason),
            Err(_) => Got::Failed("not fetched within pages.fetch_timeout".into()),
        }
    }
}

/// The essence of a `Content-Type` (`image/png`), if it is safe in a `data:` URI.
fn media_type(content_type: &http::HeaderValue) -> Option<String> {
    let essence = essence(content_type.to_str().ok()?);
    let (kind, sub) = essence.split_once('/')?;
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    (token(kind) && token(sub)).then_some(essence)
}

/// Spends the inline budget, in document order.
struct Inliner<'a> {
    resources: &'a Resources,
    left: usize,
}

impl Inliner<'_> {
    /// `url` as a `data:` URI, if it was fetched and fits in what is left of the budget.
    fn data_uri(&mut self, url: &Url) -> Option<String> {
        let Got::Body { media, body } = self.resources.get(url)? else {
            return None;
        };
        // What an origin sends without a Content-Type reads as HTML, never a sub-resource.
        if media == "text/html" {
            return None;
        }
        let encoded_len = body.len().div_ceil(3) * 4;
        let len = "data:;base64,".len() + media.len() + encoded_len;
        if len > self.left {
            return None;
        }
        self.left -= len;
        let mut uri = format!("data:{media};base64,");
        base64::engine::general_purpose::STANDARD.encode_string(body, &mut uri);
        Some(uri)
    }

    /// The stylesheet at `url`, with what it names inlined or made absolute, if it was fetched
    /// and fits, with what it names, in what is left of the budget.
    fn stylesheet(&mut self, url: &Url) -> Option<String> {
        let css = self.resources.get(url)?.stylesheet()?;
        let before = self.left;
        let css = self.css(css, url);
        match self.left.checked_sub(css.len()) {
            Some(left) => {
                self.left = left;
                Some(css)
            }
            None => {
                self.left = before;
                None
            }
        }
    }

    /// `css` with each `url()` that `base` resolves inlined when it fits, absolute otherwise.
    fn css(&mut self, css: &str, base: &Url) -> String {
        let mut out = String::with_capacity(css.len());
        let mut done = 0;
        for reference in css_references(css) {
            let Ok(url) = base.join(&reference.url) else {
                continue;
            };
            let inlined = if reference.import || reference.url.starts_with("data:") {
                None
            } else {
                self.data_uri(&url)
            };
            out.push_str(&css[done..reference.span.start]);
            out.push_str(&css_url(&inlined.unwrap_or_else(|| url.to_string())));
            done = reference.span.end;
        }
        out.push_str(&css[done..]);
        out
    }
}

impl Resources {
    fn get(&self, url: &Url) -> Option<&Got> {
        let mut url = url.clone();
        url.set_fragment(None);
        self.0.get(&url)
    }
}

/// Whether a reference is relative: not absolute, not empty, not a fragment alone.
fn is_relative(value: &str) -> bool {
    let value = value.trim();
    !value.is_empty() && !value.starts_with('#') && Url::parse(value).is_err()
}

/// Pass two: the page with what fits inlined and everything else absolute.
fn rewrite(
    html: &[u8],
    found: &Found,
    resources: &Resources,
    budget: usize,
    encoding: AsciiCompatibleEncoding,
) -> Result<Bytes, lol_html::errors::RewritingError> {
    let base = &found.base;
    let inliner = RefCell::new(Inliner {
        resources,
        left: budget,
    });
    let mut base_to_add = (!found.has_base && found.relative)
        .then(|| format!("<base href=\"{}\">", escape_html(base.as_str())));
    let style = RefCell::new(String::new());
    let absolute = |value: &str| {
        is_relative(value)
            .then(|| base.join(value.trim()).ok().map(String::from))
            .flatten()
    };
    let settings = Settings {
        element_content_handlers: vec![
            element!("*", |el| {
                let tag = el.tag_name();
                // The base goes first in <head>, or before the first element after <html>
                // (where the parser opens the head it lacks).
                if tag != "html" {
                    if let Some(tag_base) = base_to_add.take() {
                        if tag == "head" {
                            el.prepend(&tag_base, ContentType::Html);
                        } else {
                            el.before(&tag_base, ContentType::Html);
                        }
                    }
                }
                if tag == "base" && el.has_attribute("href") {
                    el.set_attribute("href", base.as_str())?;
                    return Ok(());
                }
                if let Some(css) = el.get_attribute("style") {
                    let css = inliner.borrow_mut().css(&css, base);
                    el.set_attribute("style", &css)?;
                }
                let mut inliner = inliner.borrow_mut();
                let resolve = |value: &str| base.join(value).ok();
                match tag.as_str() {
                    "link" => {
                        let kind = link_kind(&el.get_attribute("rel").unwrap_or_default());
                        let href = el.get_attribute("href").and_then(|h| resolve(&h));
                        match (kind, href) {
                            (Some(LinkKind::Stylesheet), Some(href)) => {
                                if let Some(css) = inliner.stylesheet(&href) {
                                    let media = el
                                        .get_attribute("media")
                                        .map(|m| format!(" media=\"{}\"", escape_html(&m)))
                                        .unwrap_or_default();
                                    // A stylesheet cannot end the <style> element it is put in.
                                    let css = css.replace("</style", "<\\/style");
                                    el.replace(&format!("<style{media}>{css}</style>"), ContentType::Html);
                                    return Ok(());
                                }
                            }
                            (Some(LinkKind::Icon), Some(href)) => {
                                if let Some(uri) = inliner.data_uri(&href) {
                                    el.set_attribute("href", &uri)?;
                                    return Ok(());
                                }
                            }
                            _ => {}
                        }
                    }
                    "img" => {
                        if let Some(uri) = el
                            .get_attribute("src")
                            .and_then(|s| resolve(&s))
                            .and_then(|src| inliner.data_uri(&src))
                        {
                            el.set_attribute("src", &uri)?;
                            return Ok(());
                        }
                    }
                    _ => {}
                }
                for attr in URL_ATTRIBUTES {
                    if let Some(url) = el.get_attribute(attr).and_then(|v| absolute(&v)) {
                        el.set_attribute(attr, &url)?;
                    }
                }
                Ok(())
            }),
            text!("style", |chunk| {
                style.borrow_mut().push_str(chunk.as_str());
                if chunk.last_in_text_node() {
                    let css = inliner.borrow_mut().css(&style.take(), base);
                    chunk.replace(&css.replace("</style", "<\\/style"), ContentType::Html);
                } else {
                    chunk.remove();
                }
                Ok(())
            }),
        ],
        strict: false,
        ..Settings::new()
    };
    let mut out = Vec::with_capacity(html.len());
    let settings = Settings { encoding, ..settings };
    let mut rewriter = HtmlRewriter::new(settings, |chunk: &[u8]| out.extend_from_slice(chunk));
    rewriter.write(html)?;
    rewriter.end()?;
    Ok(Bytes::from(out))
}

/// A URL reference in CSS.
#[derive(Debug, PartialEq, Eq)]
struct CssReference {
    /// Bytes of the whole reference: `url(…)`, or the string of an `@import "…"`.
    span: Range<usize>,
    /// The URL as written.
    url: String,
    /// Whether it is an `@import` (made absolute, never inlined).
    import: bool,
}

/// Every URL reference in a stylesheet or a `style` attribute.
fn css_references(css: &str) -> Vec<CssReference> {
    let mut input = ParserInput::new(css);
    let mut parser = Parser::new(&mut input);
    let mut found = Vec::new();
    walk_css(&mut parser, &mut found);
    found
}

fn walk_css(parser: &mut Parser<'_, '_>, found: &mut Vec<CssReference>) {
    let mut after_import = false;
    loop {
        let start = parser.position().byte_index();
        let Ok(token) = parser.next_including_whitespace_and_comments().cloned() else {
            return;
        };
        let import = std::mem::take(&mut after_import);
        let url = match token {
            Token::UnquotedUrl(url) => Some(url.to_string()),
            Token::QuotedString(url) if import => Some(url.to_string()),
            Token::Function(name) if name.eq_ignore_ascii_case("url") => nested(parser, |p| match p.next() {
                Ok(Token::QuotedString(url)) => Some(url.to_string()),
                _ => None,
            })
            .flatten(),
            Token::Function(_)
            | Token::ParenthesisBlock
            | Token::SquareBracketBlock
            | Token::CurlyBracketBlock => {
                let _ = nested(parser, |p| walk_css(p, found));
                None
            }
            Token::AtKeyword(name) => {
                after_import = name.eq_ignore_ascii_case("import");
                None
            }
            Token::WhiteSpace(_) | Token::Comment(_) => {
                after_import = import;
                None
            }
            _ => None,
        };
        if let Some(url) = url {
            let span = start..parser.position().byte_index();
            found.push(CssReference { span, url, import });
        }
    }
}

/// Runs `f` inside the block just opened (it always runs); the parser is after the block's end
/// when this returns.
fn nested<T>(parser: &mut Parser<'_, '_>, f: impl FnOnce(&mut Parser<'_, '_>) -> T) -> Option<T> {
    let mut out = None;
    let _ = parser.parse_nested_block(|p| -> Result<(), cssparser::ParseError<'_, ()>> {
        out = Some(f(p));
        Ok(())
    });
    out
}

/// `url("…")` for `url`, escaped as a CSS string.
fn css_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len() + 7);
    out.push_str("url(\"");
    for c in url.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\a "),
            c => out.push(c),
        }
    }
    out.push_str("\")");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn body(media: &str, body: &'static str) -> Got {
        Got::Body {
            media: media.into(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn written(html: &str, page: &str, resources: Vec<(&str, Got)>, budget: usize) -> String {
        let page = url(page);
        let utf8 = AsciiCompatibleEncoding::utf_8();
        let found = references(html.as_bytes(), &page, utf8).unwrap();
        let resources = Resources(resources.into_iter().map(|(u, got)| (url(u), got)).collect());
        let out = rewrite(html.as_bytes(), &found, &resources, budget, utf8).unwrap();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn css_references_skip_comments_and_strings_and_reach_into_blocks() {
        let css = r#"/* url(no.png) */ a { content: "url(no2.png)"; background: url(a.png) }
@import "sheet.css";
@media screen { b { background-image: url( "b.png" ) } }
@font-face { src: URL('f.woff2') format("woff2") }"#;
        let found: Vec<(String, bool, &str)> = css_references(css)
            .into_iter()
            .map(|r| (r.url, r.import, &css[r.span]))
            .collect();
        assert_eq!(
            found,
            [
                ("a.png".into(), false, "url(a.png)"),
                ("sheet.css".into(), true, "\"sheet.css\""),
                ("b.png".into(), false, "url( \"b.png\" )"),
                ("f.woff2".into(), false, "URL('f.woff2')"),
            ]
        );
    }

    #[test]
    fn stylesheets_and_images_are_inlined_and_every_other_reference_made_absolute() {
        let html = r##"<!doctype html><html><head><link rel="stylesheet" href="css/style.css" media="screen"></head>
<body><img src="logo.png" alt="logo"><a href="/home">home</a> <a href="#top">top</a>
<p style="background: url(dots.gif)">x</p><script src="app.js"></script></body></html>"##;
        let out = written(
            html,
            "http://exp.example.com/errors/404.html",
            vec![
                (
                    "http://exp.example.com/errors/css/style.css",
                    body(
                        "text/css",
                        "h1{background:url(../img/bg.png)} @import '/more.css';",
                    ),
                ),
                (
                    "http://exp.example.com/errors/img/bg.png",
                    body("image/png", "PNG"),
                ),
                (
                    "http://exp.example.com/errors/logo.png",
                    body("image/png", "LOGO"),
                ),
                ("http://exp.example.com/errors/dots.gif", body("image/gif", "GIF")),
            ],
            1 << 20,
        );
        assert!(
            out.contains(
                r#"<head><base href="http://exp.example.com/errors/404.html"><style media="screen">"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"h1{background:url("data:image/png;base64,UE5H")}"#),
            "{out}"
        );
        assert!(
            out.contains(r#"@import url("http://exp.example.com/more.css");"#),
            "{out}"
        );
        assert!(
            out.contains(r#"<img src="data:image/png;base64,TE9HTw==" alt="logo">"#),
            "{out}"
        );
        assert!(out.contains(r#"<a href="http://exp.example.com/home">"#), "{out}");
        assert!(out.contains(r##"<a href="#top">"##), "fragments stay: {out}");
        assert!(
            out.contains(r#"style="background: url(&quot;data:image/gif;base64,R0lG&quot;)""#),
            "{out}"
        );
        assert!(
            out.contains(r#"<script src="http://exp.example.com/errors/app.js">"#),
            "{out}"
        );
        assert!(!out.contains("<link"), "{out}");
    }

    #[test]
    fn what_exceeds_the_budget_or_failed_keeps_an_absolute_url() {
        let html = r#"<img src="a.png"><img src="big.png"><img src="gone.png"><img src="c.png">"#;
        let out = written(
            html,
            "http://exp.example.com/e.html",
            vec![
                ("http://exp.example.com/a.png", body("image/png", "aaa")),
                (
                    "http://exp.example.com/big.png",
                    body("image/png", "0123456789012345678901234567890123456789"),
                ),
                (
                    "http://exp.example.com/gone.png",
                    Got::Failed("origin answered 404".into()),
                ),
                ("http://exp.example.com/c.png", body("image/png", "ccc")),
            ],
            60,
        );
        assert!(out.contains(r#"<img src="data:image/png;base64,YWFh">"#), "{out}");
        assert!(
            out.contains(r#"<img src="http://exp.example.com/big.png">"#),
            "{out}"
        );
        assert!(
            out.contains(r#"<img src="http://exp.example.com/gone.png">"#),
            "{out}"
        );
        assert!(
            out.contains(r#"<img src="data:image/png;base64,Y2Nj">"#),
            "later ones still fit: {out}"
        );
        assert!(
            out.starts_with(r#"<base href="http://exp.example.com/e.html"><img"#),
            "{out}"
        );
    }

    #[test]
    fn a_page_with_its_own_base_resolves_against_it_and_gets_no_second_one() {
        let html = r#"<html><head><base href="/static/"><link rel="icon" href="fav.ico"></head><body><style>b{background:url(b.png)}</style></body></html>"#;
        let out = written(
            html,
            "http://exp.example.com/e/404.html",
            vec![
                (
                    "http://exp.example.com/static/fav.ico",
                    body("image/x-icon", "ICO"),
                ),
                (
                    "http://exp.example.com/static/b.png",
                    body("text/html", "not an image"),
                ),
            ],
            1 << 20,
        );
        assert_eq!(out.matches("<base").count(), 1, "{out}");
        assert!(
            out.contains(r#"<base href="http://exp.example.com/static/">"#),
            "{out}"
        );
        assert!(
            out.contains(r#"<link rel="icon" href="data:image/x-icon;base64,SUNP">"#),
            "{out}"
        );
        assert!(
            out.contains(r#"<style>b{background:url("http://exp.example.com/static/b.png")}</style>"#),
            "HTML is never inlined: {out}"
        );
    }

    #[test]
    fn a_page_in_another_charset_keeps_its_bytes() {
        let latin1 = encoding(&http::HeaderValue::from_static("text/html; charset=ISO-8859-1"));
        let html = b"<p>caf\xe9</p><a href=\"men\xfa.html\">x</a>";
        let page = url("http://exp.example.com/e/404.html");
        let found = references(html, &page, latin1).unwrap();
        let out = rewrite(html, &found, &Resources::default(), 1024, latin1).unwrap();
        assert_eq!(
            &out[..],
            &b"<base href=\"http://exp.example.com/e/404.html\"><p>caf\xe9</p><a href=\"http://exp.example.com/e/men%C3%BA.html\">x</a>"[..]
        );
    }

    #[test]
    fn a_stylesheet_cannot_close_its_style_element() {
        let out = written(
            r#"<link rel=stylesheet href=s.css>"#,
            "http://exp.example.com/e.html",
            vec![(
                "http://exp.example.com/s.css",
                body("text/css", "a{content:'</style><script>'}"),
            )],
            1 << 20,
        );
        assert!(
            out.contains(r#"<style>a{content:'<\/style><script>'}</style>"#),
            "{out}"
        );
    }
}
