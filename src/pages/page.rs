//! A page as the store keeps it: its bytes, media type, freshness, template, and what a
//! refresh sends to be told it did not change. Shared by the fetcher that makes pages, the
//! inliner that completes them and the store that keeps them.

use super::template::Template;
use bytes::Bytes;
use http::HeaderValue;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A fetched page, ready to send.
#[derive(Debug)]
pub struct Page {
    /// The page as fetched.
    pub body: Bytes,
    /// The page's `Content-Type` (HTML if it sent none).
    pub content_type: HeaderValue,
    /// When this copy was fetched.
    pub fetched_at: SystemTime,
    /// How long this copy is fresh: the page's max-age, or `pages.refresh`.
    pub max_age: Duration,
    /// The page's placeholders, parsed when the store takes the page (`None`: none, and
    /// the page is served as it is).
    pub template: Option<Arc<Template>>,
    /// What a refresh sends to be told the page did not change.
    pub validators: Validators,
    /// Read back from the state folder at start rather than fetched by this process: served
    /// as stale until a fetch succeeds.
    pub restored: bool,
    /// Taken without some of its sub-resources: fetched whole next time, not revalidated.
    pub incomplete: bool,
}

impl Page {
    /// A page as fetched (its template is parsed when the store takes it).
    pub fn new(body: Bytes, content_type: HeaderValue, max_age: Duration) -> Page {
        Page {
            body,
            content_type,
            fetched_at: SystemTime::now(),
            max_age,
            template: None,
            validators: Validators::default(),
            restored: false,
            incomplete: false,
        }
    }

    /// This copy, fetched again now without change (its origin answered `304`): fresh for
    /// `max_age` more, the same bytes shared.
    pub fn renewed(&self, max_age: Duration) -> Page {
        Page {
            body: self.body.clone(),
            content_type: self.content_type.clone(),
            fetched_at: SystemTime::now(),
            max_age,
            template: self.template.clone(),
            validators: self.validators.clone(),
            restored: false,
            incomplete: self.incomplete,
        }
    }

    /// Whether this copy is within its max-age at `now` (a copy read back at start is not,
    /// until a fetch confirms it).
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        !self.restored
            && now
                .duration_since(self.fetched_at)
                .is_ok_and(|age| age <= self.max_age)
    }
}

/// What a fetch sends to be told a page did not change: the `ETag` and `Last-Modified` of the
/// copy held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// The copy's `ETag`, sent as `If-None-Match`.
    pub etag: Option<HeaderValue>,
    /// The copy's `Last-Modified`, sent as `If-Modified-Since`.
    pub last_modified: Option<HeaderValue>,
}

impl Validators {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}
