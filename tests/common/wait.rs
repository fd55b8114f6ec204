//! Waiting for what a test can observe: a condition, a log line.

use std::future::Future;
use std::time::{Duration, Instant};

use super::{log_line, log_tail, Edge};

/// Polls `check` every 25 ms until it holds: the time it took, or `None` after `within`.
pub async fn time_until<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Like [`time_until`] with 10 s, panicking with `what` when the condition never holds.
pub async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if time_until(Duration::from_secs(10), check).await.is_none() {
        panic!("timed out waiting until {what}");
    }
}

/// The first log line with every one of `needles`, once it appears within `within`. For what
/// only the log shows (warnings and their wording); state the API shows is waited on through it.
pub async fn log_line_within(edge: &Edge, needles: &[&str], within: Duration) -> Option<String> {
    time_until(within, || async { log_line(edge, needles).is_some() })
        .await
        .and_then(|_| log_line(edge, needles))
}

/// Like [`log_line_within`] with 10 s, panicking when the line never appears.
pub async fn wait_log_line(edge: &Edge, needles: &[&str]) -> String {
    log_line_within(edge, needles, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no log line with {needles:?}\n{}", log_tail(edge)))
}
