//! The HTTP side of the import: the only way it reaches Student Sync.
//!
//! - Every batch is `POST /v3/students/batch-upsert` with its Idempotency-Key and
//!   `Prefer: wait=N` (`--wait`, default 60); a 202 (the job outlived the wait) is followed by polling
//!   `GET /v3/jobs/{jobId}`, honouring `Retry-After`.
//! - 429 waits for `Retry-After` and tries again, without limit (being rate
//!   limited — per key, or by the school's students-per-minute budget — is normal
//!   at full speed). The wait is shared: every request holds back until the
//!   latest `Retry-After` has passed (plus jitter), so concurrent batches do not
//!   keep knocking and spend the key's request budget on refusals.
//! - 502/503/504 and network errors (refused, reset, timed out) are retried with
//!   exponential backoff and jitter (`Retry-After` is a lower bound); after
//!   `--max-retries` the import stops: the server is unreachable. A 500 is retried
//!   the same way but then fails only its batch. Retrying is safe because the
//!   same Idempotency-Key attaches to the job already accepted.
//! - 401/403 stop the import at once (a bad key); other refusals of a batch
//!   (400, 413, 415, 422, `job_failed`) fail the rows of that batch.
//!
//! Responses are read with lenient types of their own (codes and statuses as
//! strings, unknown fields ignored), so a newer server with a new error code does
//! not break an older command.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use tokio::time::Instant;

/// Per request, on top of the wait asked for: margin for a slow upload.
const REQUEST_MARGIN: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Between polls of a job when the server does not say (`Retry-After`).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A connection to one school of one Student Sync API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
    max_retries: u32,
    /// `Prefer: wait=N`.
    prefer: String,
    /// No request before this instant (the latest 429's `Retry-After`).
    hold_until: Arc<Mutex<Option<Instant>>>,
}

/// A job body (`200`/`207`, or `GET /v3/jobs/{id}`), leniently.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub job_id: String,
    pub status: String,
    #[serde(default)]
    pub results: Option<Vec<JobResult>>,
    /// The problem of a `failed` job.
    #[serde(default)]
    pub error: Option<Problem>,
}

/// One entry of `results`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    pub input_index: usize,
    pub status: String,
    #[serde(default)]
    pub errors: Vec<ProblemError>,
}

/// A problem object (RFC 9457), the parts the import uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

/// One per-item error.
#[derive(Debug, Clone, Deserialize)]
pub struct ProblemError {
    pub code: String,
    #[serde(default)]
    pub pointer: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    job_id: String,
}

/// What became of one batch.
#[derive(Debug)]
pub enum Answer {
    /// The job finished (`completed` or `failed`). `replayed`: the answer of an
    /// earlier request with the same Idempotency-Key.
    Job { job: Job, replayed: bool },
    /// The batch was refused as a whole: every row fails with this.
    Refused { code: String, detail: String },
}

/// A response read to the end.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(RETRY_AFTER)?.to_str().ok()?;
        value.trim().parse().ok().map(Duration::from_secs)
    }

    fn problem(&self) -> Problem {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// `code: detail` for messages.
    fn describe(&self) -> String {
        let problem = self.problem();
        let text = String::from_utf8_lossy(&self.body);
        let detail = problem
            .detail
            .unwrap_or_else(|| text.chars().take(200).collect());
        match problem.code {
            Some(code) => format!("HTTP {}, {code}: {detail}", self.status.as_u16()),
            None => format!("HTTP {}: {detail}", self.status.as_u16()),
        }
    }

    fn refused(&self) -> Answer {
        let problem = self.problem();
        Answer::Refused {
            code: problem
                .code
                .unwrap_or_else(|| format!("http_{}", self.status.as_u16())),
            detail: problem.detail.unwrap_or_else(|| self.describe()),
        }
    }
}

impl Api {
    /// `base_url` is the API's root, e.g. `https://sync.example.edu`.
    /// `wait`: how long the API may hold a batch request for its job.
    pub fn new(
        base_url: &str,
        key: &str,
        max_retries: u32,
        connections: usize,
        wait: Duration,
    ) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(base_url)
            .with_context(|| format!("--url {base_url:?} is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--url must be an http:// or https:// URL, not {base_url:?}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(wait + REQUEST_MARGIN)
            .pool_max_idle_per_host(connections)
            .user_agent(concat!("studentsync-import/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            key: key.to_string(),
            max_retries,
            prefer: format!("wait={}", wait.as_secs()),
            hold_until: Arc::default(),
        })
    }

    /// Checks the URL and the key before any data is read (`GET /v3/jobs?limit=1`).
    pub async fn check(&self) -> anyhow::Result<()> {
        let url = format!("{}/v3/jobs?limit=1", self.base);
        let reply = self
            .send("checking the API", || self.http.get(&url))
            .await?;
        match reply.status {
            status if status.is_success() => Ok(()),
            StatusCode::NOT_FOUND => bail!(
                "{} answered 404 to GET /v3/jobs: is --url the address of a Student Sync API?",
                self.base
            ),
            _ => bail!("checking the API: {}", reply.describe()),
        }
    }

    /// Sends one batch and waits for its job. `Err` is fatal for the import.
    pub async fn upsert(&self, body: &[u8], idempotency_key: &str) -> anyhow::Result<Answer> {
        let url = format!("{}/v3/students/batch-upsert", self.base);
        let reply = self
            .send("sending a batch", || {
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .header("Idempotency-Key", idempotency_key)
                    .header("Prefer", &self.prefer)
                    .body(body.to_vec())
            })
            .await?;
        let replayed = reply
            .headers
            .get("idempotent-replayed")
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
        match reply.status {
            StatusCode::OK | StatusCode::MULTI_STATUS => {
                let job = serde_json::from_slice(&reply.body)
                    .with_context(|| format!("unexpected batch answer: {}", reply.describe()))?;
                Ok(Answer::Job { job, replayed })
            }
            StatusCode::ACCEPTED => {
                let accepted: Accepted = serde_json::from_slice(&reply.body)
                    .with_context(|| format!("unexpected 202 answer: {}", reply.describe()))?;
                let first_wait = reply.retry_after().unwrap_or(POLL_INTERVAL);
                self.poll(&accepted.job_id, first_wait, replayed).await
            }
            StatusCode::NOT_FOUND => bail!(
                "{} answered 404 to POST /v3/students/batch-upsert: is --url the address of a Student Sync API?",
                self.base
            ),
            _ => Ok(reply.refused()),
        }
    }

    /// Polls a job until it is `completed` or `failed`.
    async fn poll(
        &self,
        job_id: &str,
        first_wait: Duration,
        replayed: bool,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}/v3/jobs/{job_id}", self.base);
        let mut wait = first_wait;
        loop {
            tokio::time::sleep(wait).await;
            let reply = self.send("following a job", || self.http.get(&url)).await?;
            if reply.status != StatusCode::OK {
                return Ok(reply.refused());
            }
            let job: Job = serde_json::from_slice(&reply.body)
                .with_context(|| format!("unexpected job answer: {}", reply.describe()))?;
            if job.status == "completed" || job.status == "failed" {
                return Ok(Answer::Job { job, replayed });
            }
            wait = reply.retry_after().unwrap_or(POLL_INTERVAL);
        }
    }

    /// Sends a request until it gets an answer worth interpreting (see the module
    /// documentation for what is retried). `Err` is fatal.
    async fn send(
        &self,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<Reply> {
        let mut failures = 0u32;
        loop {
            self.hold().await;
            let outcome = match request().bearer_auth(&self.key).send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    response.bytes().await.map(|body| Reply {
                        status,
                        headers,
                        body: body.to_vec(),
                    })
                }
                Err(error) => Err(error),
            };
            let (problem, retry_after) = match outcome {
                Ok(reply) => match reply.status {
                    StatusCode::TOO_MANY_REQUESTS => {
                        self.hold_for(reply.retry_after().unwrap_or(Duration::from_secs(1)));
                        continue;
                    }
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        bail!("the API key was refused ({})", reply.describe())
                    }
                    StatusCode::INTERNAL_SERVER_ERROR
                        if reply.problem().code.as_deref() != Some("job_failed") =>
                    {
                        if failures >= self.max_retries {
                            return Ok(reply);
                        }
                        (reply.describe(), reply.retry_after())
                    }
                    StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT => (reply.describe(), reply.retry_after()),
                    _ => return Ok(reply),
                },
                Err(error) => (chain(&error), None),
            };
            failures += 1;
            if failures > self.max_retries {
                let attempts = if failures == 1 { "attempt" } else { "attempts" };
                bail!(
                    "{what}: {} did not answer after {failures} {attempts}; last: {problem}",
                    self.base
                );
            }
            let pause = backoff(failures).max(retry_after.unwrap_or_default());
            tokio::time::sleep(pause).await;
        }
    }
}

impl Api {
    /// Waits while a rate limit holds every request back, then a random stagger
    /// (up to 250 ms) so held requests do not all leave at once.
    async fn hold(&self) {
        let until = *self.hold_until.lock().expect("hold lock");
        if let Some(until) = until
            && until > Instant::now()
        {
            tokio::time::sleep_until(until).await;
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..250))).await;
        }
    }

    /// Holds every request back for `pause` from now (or longer, if already held).
    fn hold_for(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut hold = self.hold_until.lock().expect("hold lock");
        if hold.is_none_or(|current| current < until) {
            *hold = Some(until);
        }
    }
}

/// The pause before retry `attempt` (1-based): 0.5 s doubling up to 30 s, with
/// jitter so concurrent batches do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let exponential = FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    exponential
        .min(MAX_BACKOFF)
        .mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// An error and its causes on one line ("error sending request: connection refused").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_with_jitter() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
            let fourth = backoff(4);
            assert!(fourth >= Duration::from_secs(2) && fourth <= Duration::from_secs(4));
            assert!(backoff(40) <= MAX_BACKOFF);
        }
    }

    #[test]
    fn job_bodies_are_read_leniently() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "jobId": "j", "status": "completed", "dryRun": false, "somethingNew": 1,
            "summary": {"total": 1},
            "results": [{"inputIndex": 0, "status": "failed", "externalReferenceId": "a",
                         "errors": [{"code": "brand_new_code", "pointer": "/students/0/x", "detail": "d"}]}]
        }))
        .unwrap();
        let results = job.results.unwrap();
        assert_eq!(results[0].errors[0].code, "brand_new_code");
    }

    #[test]
    fn urls_must_be_http() {
        assert!(Api::new("ftp://x", "k", 1, 1, Duration::ZERO).is_err());
        assert!(Api::new("not a url", "k", 1, 1, Duration::ZERO).is_err());
        let api = Api::new("http://127.0.0.1:1/", "k", 1, 1, Duration::ZERO).unwrap();
        assert_eq!(api.base, "http://127.0.0.1:1");
    }
}
