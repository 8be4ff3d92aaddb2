//! Waiting for a job: the `Prefer` request header (RFC 7240) and the wait itself.
//!
//! A waiter subscribes to the in-process completion broadcast *before* it looks
//! at the job, so a completion that lands between the look and the subscription
//! cannot be missed. It then re-checks the job on every notification carrying its
//! id, and polls Postgres every second regardless, which covers a lost Redis
//! notification or a Redis outage. The deadline, or the server shutting down,
//! ends the wait.

use std::time::Duration;

use axum::http::HeaderMap;
use axum::http::header::HeaderName;
use studentsync::job::{JobStatus, JobView};
use studentsync::store;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use uuid::Uuid;

use crate::AppState;

/// `Prefer: wait=N` is honoured up to this many seconds.
pub const MAX_WAIT_SECS: u64 = 60;
/// How long a request waits when it has no `wait` preference.
pub const DEFAULT_WAIT_SECS: u64 = 30;
/// How often a waiter polls Postgres.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often it polls while Redis is failing (no completion notices come).
const POLL_INTERVAL_WITHOUT_REDIS: Duration = Duration::from_millis(200);

pub static PREFER: HeaderName = HeaderName::from_static("prefer");
pub static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// The preferences of a request that this service understands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preferences {
    /// `respond-async`: answer 202 at once.
    pub respond_async: bool,
    /// `wait=N` as sent (seconds, before clamping).
    pub wait: Option<u64>,
}

impl Preferences {
    /// Reads every `Prefer` header. Preferences are comma-separated, names are
    /// case-insensitive, parameters after `;` are ignored, values may be quoted;
    /// when a preference appears more than once the first one counts (RFC 7240
    /// §2). A `wait` that is not a non-negative integer is ignored.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut preferences = Preferences::default();
        let mut seen_async = false;
        let mut seen_wait = false;
        for value in headers.get_all(&PREFER) {
            let Ok(value) = value.to_str() else { continue };
            for preference in split_outside_quotes(value, ',') {
                let token = split_outside_quotes(preference, ';')
                    .into_iter()
                    .next()
                    .unwrap_or("");
                let (name, value) = match token.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
                    None => (token.trim(), None),
                };
                if name.eq_ignore_ascii_case("respond-async") && !seen_async {
                    seen_async = true;
                    preferences.respond_async = true;
                } else if name.eq_ignore_ascii_case("wait") && !seen_wait {
                    seen_wait = true;
                    preferences.wait = value
                        .filter(|digits| {
                            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                        })
                        .map(|digits| digits.parse::<u64>().unwrap_or(u64::MAX));
                }
            }
        }
        preferences
    }

    /// How long to wait for the job: `wait` clamped to 60 s, default 30 s.
    pub fn wait_secs(&self) -> u64 {
        self.wait.unwrap_or(DEFAULT_WAIT_SECS).min(MAX_WAIT_SECS)
    }

    /// The `Preference-Applied` value of a 202 or of an answer after waiting:
    /// `respond-async` when the answer was sent at once because of it,
    /// `wait=N` (the value used) when the request waited because of it.
    pub fn applied(&self, answered_at_once: bool) -> Option<String> {
        if answered_at_once {
            self.respond_async.then(|| "respond-async".to_string())
        } else {
            self.wait.map(|_| format!("wait={}", self.wait_secs()))
        }
    }
}

/// Splits on `separator` except inside double quotes (with `\` escapes).
fn split_outside_quotes(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (index, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&value[start..index]);
                start = index + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(value)
}

/// Where a wait ended.
#[derive(Debug)]
pub enum Waited {
    /// The job is completed or failed.
    Finished(Box<JobView>),
    /// The deadline (or shutdown) came first; the last status seen.
    Pending(JobStatus),
    /// The job no longer exists: the request that created it was refused by
    /// the broker and its job deleted (seen by Idempotency-Key replays).
    Gone,
}

/// What one look at the job found.
enum Look {
    Finished(Box<JobView>),
    NotYet,
    Gone,
}

/// Waits until `job_id` is terminal or `timeout` has passed.
pub async fn wait_for_job(
    state: &AppState,
    school_id: Uuid,
    job_id: Uuid,
    timeout: Duration,
) -> Waited {
    // Subscribe before the first look: a completion after it is then queued
    // for us, one before it is seen by the look.
    let mut notifications = state.completions.subscribe();
    let mut shutdown = state.shutdown_signal();
    let deadline = Instant::now() + timeout;
    let mut last = JobStatus::Queued;
    match look(state, school_id, job_id, true, &mut last).await {
        Look::Finished(view) => return Waited::Finished(view),
        Look::Gone => return Waited::Gone,
        Look::NotYet => {}
    }
    let mut listening = true;
    let mut next_poll = Instant::now() + poll_interval(state);
    loop {
        let use_cache = tokio::select! {
            notification = notifications.recv(), if listening => match notification {
                Ok(id) if id == job_id => true,
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => {
                    listening = false;
                    continue;
                }
            },
            _ = tokio::time::sleep_until(next_poll) => {
                next_poll = Instant::now() + poll_interval(state);
                false
            }
            _ = tokio::time::sleep_until(deadline) => return Waited::Pending(last),
            _ = shutdown.wait_for(|stopping| *stopping) => return Waited::Pending(last),
        };
        match look(state, school_id, job_id, use_cache, &mut last).await {
            Look::Finished(view) => return Waited::Finished(view),
            Look::Gone => return Waited::Gone,
            Look::NotYet => {}
        }
    }
}

/// Without Redis no completion notice comes: poll more often meanwhile.
fn poll_interval(state: &AppState) -> Duration {
    if state.results.breaker().is_open() {
        POLL_INTERVAL_WITHOUT_REDIS
    } else {
        POLL_INTERVAL
    }
}

/// The job if it is terminal: from the Redis cache (when `use_cache`), else
/// from Postgres. Errors only delay the answer, so they are logged and ignored.
async fn look(
    state: &AppState,
    school_id: Uuid,
    job_id: Uuid,
    use_cache: bool,
    last: &mut JobStatus,
) -> Look {
    if use_cache
        && let Some(view) = cached(state, school_id, job_id).await
        && view.status.is_terminal()
    {
        return Look::Finished(Box::new(view));
    }
    match store::jobs::get(&state.pool, school_id, job_id).await {
        Ok(Some(record)) => {
            *last = record.status();
            if last.is_terminal() {
                Look::Finished(Box::new(record.into_view()))
            } else {
                Look::NotYet
            }
        }
        Ok(None) => Look::Gone,
        Err(error) => {
            tracing::warn!(%error, %job_id, "could not read the job while waiting");
            Look::NotYet
        }
    }
}

/// The cached body of a finished job; `None` on a miss or any Redis problem
/// (bounded in time, and skipped at once while Redis is known to be down).
pub async fn cached(state: &AppState, school_id: Uuid, job_id: Uuid) -> Option<JobView> {
    match state.results.cached(school_id, job_id).await {
        Ok(view) => view,
        Err(error) => {
            tracing::debug!(%error, "results cache unavailable");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn prefer(values: &[&str]) -> Preferences {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&PREFER, HeaderValue::from_str(value).unwrap());
        }
        Preferences::from_headers(&headers)
    }

    #[test]
    fn defaults_without_a_header() {
        let preferences = prefer(&[]);
        assert_eq!(preferences, Preferences::default());
        assert_eq!(preferences.wait_secs(), 30);
        assert_eq!(preferences.applied(true), None);
    }

    #[test]
    fn single_preferences() {
        assert!(prefer(&["respond-async"]).respond_async);
        assert!(prefer(&["Respond-Async"]).respond_async);
        assert_eq!(prefer(&["wait=5"]).wait_secs(), 5);
        assert_eq!(prefer(&["wait=0"]).wait_secs(), 0);
        assert_eq!(prefer(&["wait = 7"]).wait_secs(), 7);
        assert_eq!(prefer(&["wait=\"9\""]).wait_secs(), 9);
        assert_eq!(prefer(&["wait=600"]).wait_secs(), 60);
        assert_eq!(prefer(&["wait=99999999999999999999999"]).wait_secs(), 60);
    }

    #[test]
    fn lists_and_several_headers() {
        let preferences = prefer(&["return=minimal, respond-async", "wait=10"]);
        assert!(preferences.respond_async);
        assert_eq!(preferences.wait, Some(10));
        let preferences = prefer(&["handling=lenient; foo=\"a,b\", wait=3;x=1"]);
        assert!(!preferences.respond_async);
        assert_eq!(preferences.wait, Some(3));
    }

    #[test]
    fn first_occurrence_wins_and_junk_is_ignored() {
        assert_eq!(prefer(&["wait=4, wait=50"]).wait, Some(4));
        assert_eq!(prefer(&["wait=4", "wait=50"]).wait, Some(4));
        assert_eq!(prefer(&["wait=soon"]).wait, None);
        assert_eq!(prefer(&["wait=-1"]).wait, None);
        assert_eq!(prefer(&["wait=1.5"]).wait, None);
        assert_eq!(prefer(&["wait"]).wait, None);
        assert!(!prefer(&["respond-asyncx"]).respond_async);
    }

    #[test]
    fn preference_applied() {
        assert_eq!(
            prefer(&["respond-async"]).applied(true).as_deref(),
            Some("respond-async")
        );
        assert_eq!(prefer(&["respond-async"]).applied(false), None);
        assert_eq!(
            prefer(&["wait=90"]).applied(false).as_deref(),
            Some("wait=60")
        );
        assert_eq!(prefer(&["wait=90"]).applied(true), None);
        assert_eq!(prefer(&[]).applied(false), None);
    }
}
