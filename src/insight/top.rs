//! The paths that fail most, per domain, over the last hour and the last 24 hours: a
//! Space-Saving heavy-hitters sketch per time bucket (12 buckets of 5 minutes, 24 of an hour),
//! so memory is bounded whatever the number of distinct paths.
//!
//! **Bounds.** A bucket keeps at most [`PER_BUCKET`] paths (each cut to [`MAX_PATH`] bytes); a
//! domain at most 36 buckets; all domains together at most [`TOTAL_BYTES`] of paths and counts:
//! past it, a new path is not tracked (its error still counts in the totals and the series).
//! **Error:** while a bucket has seen at most [`PER_BUCKET`] distinct paths its counts are
//! exact; past that, a path's count may be overestimated by at most the smallest count in its
//! bucket (Space-Saving), never underestimated.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Paths kept per bucket.
pub const PER_BUCKET: usize = 64;
/// Bytes of a path kept (longer ones are cut).
pub const MAX_PATH: usize = 256;
/// Bytes all domains' sketches may hold together.
pub const TOTAL_BYTES: usize = 64 << 20;
/// The bytes an entry costs beyond its path (its counts, the map's share).
const ENTRY_BYTES: usize = 112;
/// What a domain's 36 empty buckets cost.
const DOMAIN_BYTES: usize = 36 * std::mem::size_of::<Bucket>() + 64;
/// Paths listed per window.
pub const TOP: usize = 50;

/// The two windows: bucket length and count.
const HOUR: (u64, usize) = (300, 12);
const DAY: (u64, usize) = (3600, 24);

/// One path's counts in a bucket.
#[derive(Debug, Clone, Default)]
struct Counted {
    count: u64,
    /// How many of `count` may belong to paths evicted before it (Space-Saving's error).
    over: u64,
    /// Responses per status (few per path).
    statuses: Vec<(u16, u64)>,
    custom_page: u64,
}

/// One time bucket: totals per class, and its sketch.
#[derive(Debug, Default)]
struct Bucket {
    epoch: u64,
    by_class: [u64; 2],
    paths: HashMap<Box<str>, Counted>,
    bytes: usize,
}

impl Bucket {
    fn reset(&mut self, epoch: u64, used: &AtomicUsize) {
        used.fetch_sub(self.bytes, Ordering::Relaxed);
        *self = Bucket {
            epoch,
            ..Bucket::default()
        };
    }

    fn add(&mut self, path: &str, status: u16, custom_page: bool, used: &AtomicUsize) {
        self.by_class[usize::from(status >= 500)] += 1;
        let count = |c: &mut Counted| {
            c.count += 1;
            c.custom_page += u64::from(custom_page);
            match c.statuses.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => c.statuses.push((status, 1)),
            }
        };
        if let Some(counted) = self.paths.get_mut(path) {
            count(counted);
            return;
        }
        let cost = path.len() + ENTRY_BYTES;
        let mut base = Counted::default();
        if self.paths.len() >= PER_BUCKET {
            // Space-Saving: the least counted path gives its place (and its count, as the
            // newcomer's possible error).
            let Some(least) = self
                .paths
                .iter()
                .min_by_key(|(p, c)| (c.count, *p))
                .map(|(p, _)| p.clone())
            else {
                return;
            };
            if let Some(evicted) = self.paths.remove(&least) {
                let freed = least.len() + ENTRY_BYTES;
                self.bytes -= freed;
                used.fetch_sub(freed, Ordering::Relaxed);
                base.count = evicted.count;
                base.over = evicted.count;
            }
        }
        if used.load(Ordering::Relaxed) + cost > TOTAL_BYTES {
            return;
        }
        used.fetch_add(cost, Ordering::Relaxed);
        self.bytes += cost;
        count(&mut base);
        self.paths.insert(Box::from(path), base);
    }
}

/// A domain's buckets of both windows.
#[derive(Debug)]
struct DomainErrors {
    hour: Vec<Bucket>,
    day: Vec<Bucket>,
}

/// What one window shows.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Error responses in the window.
    pub total: u64,
    /// Per bucket, oldest first: its start and the errors per class.
    pub series: Vec<SeriesPoint>,
    /// The paths with the most errors, highest first (ties by path).
    pub top: Vec<TopPath>,
}

/// One bucket of a window's series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// Its start (RFC 3339).
    pub at: String,
    /// `4xx` responses.
    #[serde(rename = "4xx")]
    pub client: u64,
    /// `5xx` responses.
    #[serde(rename = "5xx")]
    pub server: u64,
}

/// A path among the top of a window.
#[derive(Debug, Clone, Serialize)]
pub struct TopPath {
    /// The path (without query).
    pub path: String,
    /// Error responses for it.
    pub count: u64,
    /// By status.
    pub statuses: std::collections::BTreeMap<String, u64>,
    /// How many carried a custom page.
    pub custom_page: u64,
}

/// Every domain's error paths (see the module docs).
#[derive(Debug, Default)]
pub struct ErrorPaths {
    domains: Mutex<HashMap<Arc<str>, DomainErrors>>,
    used: AtomicUsize,
}

fn epoch_of(at: SystemTime, length: u64) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / length
}

impl ErrorPaths {
    /// No paths yet.
    pub fn new() -> ErrorPaths {
        ErrorPaths::default()
    }

    /// Counts an error response of `domain` for `path` at `at`.
    pub fn add(&self, domain: &str, path: &str, status: u16, custom_page: bool, at: SystemTime) {
        let path = cut(path);
        let mut domains = self.domains.lock();
        if !domains.contains_key(domain) {
            // A domain's buckets count against the bound too: past it, a new domain's errors
            // are not tracked.
            if self.used.load(Ordering::Relaxed) + DOMAIN_BYTES > TOTAL_BYTES {
                return;
            }
            self.used
                .fetch_add(DOMAIN_BYTES + domain.len(), Ordering::Relaxed);
            let errors = DomainErrors {
                hour: (0..HOUR.1).map(|_| Bucket::default()).collect(),
                day: (0..DAY.1).map(|_| Bucket::default()).collect(),
            };
            domains.insert(Arc::from(domain), errors);
        }
        let Some(errors) = domains.get_mut(domain) else {
            return;
        };
        for (buckets, (length, count)) in [(&mut errors.hour, HOUR), (&mut errors.day, DAY)] {
            let epoch = epoch_of(at, length);
            let bucket = &mut buckets[(epoch % count as u64) as usize];
            if bucket.epoch != epoch {
                bucket.reset(epoch, &self.used);
            }
            bucket.add(path, status, custom_page, &self.used);
        }
    }

    /// The last hour and the last 24 hours of `domain`, as of `now`.
    pub fn windows(&self, domain: &str, now: SystemTime) -> (Window, Window) {
        let domains = self.domains.lock();
        let errors = domains.get(domain);
        (
            window(errors.map(|e| &e.hour[..]), HOUR, now),
            window(errors.map(|e| &e.day[..]), DAY, now),
        )
    }

    /// Bytes the sketches hold, and their bound.
    pub fn memory(&self) -> (usize, usize) {
        (self.used.load(Ordering::Relaxed), TOTAL_BYTES)
    }

    /// Forgets the domains not in `keep` (gone from the configuration).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut domains = self.domains.lock();
        domains.retain(|domain, errors| {
            let kept = keep(domain);
            if !kept {
                for bucket in errors.hour.iter_mut().chain(errors.day.iter_mut()) {
                    bucket.reset(0, &self.used);
                }
                self.used
                    .fetch_sub(DOMAIN_BYTES + domain.len(), Ordering::Relaxed);
            }
            kept
        });
    }
}

/// `path` cut to [`MAX_PATH`] bytes on a character boundary.
fn cut(path: &str) -> &str {
    cut_to(path, MAX_PATH)
}

/// `text` cut to `max` bytes on a character boundary.
pub fn cut_to(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One window of buckets (of `length` seconds, `count` of them) ending with the one of `now`.
fn window(buckets: Option<&[Bucket]>, (length, count): (u64, usize), now: SystemTime) -> Window {
    let current = epoch_of(now, length);
    let first = current + 1 - count as u64;
    let in_window = |b: &&Bucket| b.epoch >= first && b.epoch <= current;
    let buckets: Vec<&Bucket> = buckets
        .map(|b| b.iter().filter(in_window).collect())
        .unwrap_or_default();
    let series = (first..=current)
        .map(|epoch| {
            let by_class = buckets
                .iter()
                .find(|b| b.epoch == epoch)
                .map_or([0, 0], |b| b.by_class);
            SeriesPoint {
                at: humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch * length))
                    .to_string(),
                client: by_class[0],
                server: by_class[1],
            }
        })
        .collect();
    let total = buckets.iter().map(|b| b.by_class[0] + b.by_class[1]).sum();
    let mut merged: HashMap<&str, TopPath> = HashMap::new();
    for bucket in &buckets {
        for (path, counted) in &bucket.paths {
            let top = merged.entry(path).or_insert_with(|| TopPath {
                path: path.to_string(),
                count: 0,
                statuses: Default::default(),
                custom_page: 0,
            });
            top.count += counted.count;
            top.custom_page += counted.custom_page;
            for (status, n) in &counted.statuses {
                *top.statuses.entry(status.to_string()).or_default() += n;
            }
        }
    }
    let mut top: Vec<TopPath> = merged.into_values().collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
    top.truncate(TOP);
    Window { total, series, top }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_counts_rank_exactly() {
        let paths = ErrorPaths::new();
        let domain = "a.test";
        let now = SystemTime::now();
        for (path, n) in [("/a", 5), ("/b", 4), ("/c", 3), ("/d", 2), ("/e", 1)] {
            for i in 0..n {
                paths.add(domain, path, if i == 0 { 500 } else { 404 }, i % 2 == 0, now);
            }
        }
        let (hour, day) = paths.windows("a.test", now);
        for window in [&hour, &day] {
            let ranked: Vec<(&str, u64)> = window.top.iter().map(|t| (t.path.as_str(), t.count)).collect();
            assert_eq!(ranked, [("/a", 5), ("/b", 4), ("/c", 3), ("/d", 2), ("/e", 1)]);
            assert_eq!(window.total, 15);
            assert_eq!(window.top[0].statuses.get("500"), Some(&1));
            assert_eq!(window.top[0].custom_page, 3);
        }
        assert_eq!(hour.series.len(), 12);
        assert_eq!(day.series.len(), 24);
        assert_eq!(hour.series.last().map(|p| (p.client, p.server)), Some((10, 5)));
    }

    #[test]
    fn a_hundred_thousand_distinct_paths_stay_within_the_bound() {
        let paths = ErrorPaths::new();
        let domain = "a.test";
        let now = SystemTime::now();
        // Two paths that fail far more often than the rest stay on top.
        for i in 0..100_000u32 {
            paths.add(domain, &format!("/random/{i}/{}", "x".repeat(40)), 404, true, now);
            if i % 10 == 0 {
                paths.add(domain, "/hot", 404, true, now);
            }
            if i % 20 == 0 {
                paths.add(domain, "/warm", 502, false, now);
            }
        }
        let (used, _) = paths.memory();
        // Two buckets (one per window), each at most PER_BUCKET paths, and the domain's buckets.
        let bound = 2 * PER_BUCKET * (MAX_PATH + ENTRY_BYTES) + DOMAIN_BYTES + 6;
        assert!(used <= bound, "{used} bytes for 100,000 paths; bound {bound}");
        let (hour, _) = paths.windows("a.test", now);
        assert_eq!(hour.total, 100_000 + 10_000 + 5_000);
        let first: Vec<&str> = hour.top.iter().take(2).map(|t| t.path.as_str()).collect();
        assert_eq!(first, ["/hot", "/warm"]);
        // Space-Saving never undercounts.
        assert!(hour.top[0].count >= 10_000 && hour.top[1].count >= 5_000);
    }

    #[test]
    fn old_buckets_leave_the_windows() {
        let paths = ErrorPaths::new();
        let domain = "a.test";
        let then = SystemTime::now() - Duration::from_secs(2 * 3600);
        paths.add(domain, "/old", 404, false, then);
        let (hour, day) = paths.windows("a.test", SystemTime::now());
        assert_eq!((hour.total, day.total), (0, 1));
        assert!(hour.top.is_empty());
        paths.retain(|_| false);
        assert_eq!(paths.memory().0, 0);
    }
}
