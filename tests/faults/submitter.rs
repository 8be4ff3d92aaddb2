//! A client that keeps submitting small batches while a test breaks a server,
//! and checks every answer as it comes: 200/202 (accepted), or 503 `unavailable`
//! with `Retry-After` (refused), each within 10 s. Anything else — a 500, a hang,
//! a 503 without `Retry-After` — is recorded as a violation.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::check::{History, new_students_batch};
use crate::helpers::{Reply, TestApp, send};

/// The longest any answer may take while a server is down.
pub const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// What the client saw.
#[derive(Default, Debug)]
pub struct Seen {
    /// (job id, references) of accepted batches.
    pub accepted: Vec<(String, Vec<String>)>,
    /// References of refused batches, with when the refusal came.
    pub refused: Vec<(Instant, Vec<String>)>,
    /// Answers that break the contract.
    pub violations: Vec<String>,
    /// When the last batch was accepted.
    pub last_accepted: Option<Instant>,
}

impl Seen {
    /// Moves the outcomes into `history` and asserts there were no violations.
    pub fn record_into(self, history: &mut History) {
        assert!(
            self.violations.is_empty(),
            "answers that break the contract: {:#?}",
            self.violations
        );
        for (job_id, refs) in self.accepted {
            history.accept(job_id, refs);
        }
        history
            .refused
            .extend(self.refused.into_iter().map(|(_, refs)| refs));
    }
}

pub struct Submitter {
    stop: watch::Sender<bool>,
    task: JoinHandle<Seen>,
}

impl Submitter {
    /// Starts submitting `students`-student batches named `{prefix}-{n}`, one
    /// after the other with `pause` between them; every other request waits
    /// (`Prefer: wait=2`), the rest `respond-async`.
    pub fn start(app: &TestApp, prefix: &str, students: usize, pause: Duration) -> Self {
        let (stop, stopped) = watch::channel(false);
        let client = app.client.clone();
        let url = app.url("/v3/students/batch-upsert");
        let api_key = app.api_key.clone();
        let prefix = prefix.to_string();
        let task = tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut n = 0;
            while !*stopped.borrow() {
                let (body, refs) = new_students_batch(&format!("{prefix}-{n}"), students);
                let prefer = if n % 2 == 0 {
                    "respond-async"
                } else {
                    "wait=2"
                };
                let request = client
                    .post(&url)
                    .bearer_auth(&api_key)
                    .header("Content-Type", "application/json")
                    .header("Prefer", prefer)
                    .body(body.to_string());
                let started = Instant::now();
                let reply = tokio::time::timeout(ANSWER_LIMIT, send(request)).await;
                judge(&mut seen, reply, refs, started.elapsed());
                n += 1;
                tokio::time::sleep(pause).await;
            }
            seen
        });
        Self { stop, task }
    }

    /// Stops after the request in progress and returns what was seen.
    pub async fn finish(self) -> Seen {
        let _ = self.stop.send(true);
        self.task.await.expect("the submitter does not panic")
    }
}

fn judge(
    seen: &mut Seen,
    reply: Result<Reply, tokio::time::error::Elapsed>,
    refs: Vec<String>,
    took: Duration,
) {
    let Ok(reply) = reply else {
        seen.violations
            .push(format!("no answer within {ANSWER_LIMIT:?}"));
        return;
    };
    match reply.status {
        StatusCode::OK | StatusCode::ACCEPTED => {
            let job_id = reply.body["jobId"].as_str().map(str::to_string);
            match job_id {
                Some(job_id) => {
                    seen.accepted.push((job_id, refs));
                    seen.last_accepted = Some(Instant::now());
                }
                None => seen
                    .violations
                    .push(format!("{} without a jobId: {}", reply.status, reply.body)),
            }
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            let retry_after = reply
                .header("retry-after")
                .and_then(|value| value.parse::<u64>().ok());
            if reply.body["code"] != "unavailable" || retry_after.is_none() {
                seen.violations.push(format!(
                    "503 without code `unavailable` or Retry-After: {:?} {}",
                    reply.header("retry-after"),
                    reply.body
                ));
            }
            seen.refused.push((Instant::now(), refs));
        }
        other => seen
            .violations
            .push(format!("{other} after {took:?}: {}", reply.body)),
    }
}

/// After a server came back: submits one-student batches every 200 ms until
/// one is accepted (within 30 s of `since`), recording refusals and the
/// acceptance in `history`; returns how long after `since` that took.
pub async fn until_accepted_again(
    app: &TestApp,
    history: &mut History,
    prefix: &str,
    since: Instant,
) -> Duration {
    let deadline = since + Duration::from_secs(30);
    for attempt in 0.. {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (body, refs) = new_students_batch(&format!("{prefix}-{attempt}"), 1);
        let reply = send(app.batch_request(&body).header("Prefer", "respond-async")).await;
        if reply.status == StatusCode::ACCEPTED {
            history.accept(reply.body["jobId"].as_str().unwrap().to_string(), refs);
            break;
        }
        history.refused.push(refs);
        assert!(
            Instant::now() < deadline,
            "not accepting 30 s after the restart: {}",
            reply.body
        );
    }
    since.elapsed()
}
