//! Load through the whole product path: HTTP → queue → workers → Postgres →
//! Redis. Async throughput with N concurrent clients, synchronous latency of
//! 1000-student batches, and the one-student-per-request path the batch replaces.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::try_join_all;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::students;

/// A client of the stack under test.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
}

impl Client {
    pub fn new(base_url: &str, api_key: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("HTTP client"),
            base_url: base_url.to_string(),
            api_key: api_key.to_string(),
        }
    }

    /// POSTs a serialized batch; returns the HTTP status and body.
    async fn upsert(&self, body: Vec<u8>, prefer: &str) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}/v3/students/batch-upsert", self.base_url))
            .bearer_auth(&self.api_key)
            .header("Prefer", prefer)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// One page of the school's jobs (newest first, without results).
    async fn jobs_page(&self, limit: usize, cursor: Option<&str>) -> anyhow::Result<Value> {
        // Cursors are URL-safe (API.md): no encoding needed.
        let url = match cursor {
            Some(cursor) => format!("{}/v3/jobs?limit={limit}&cursor={cursor}", self.base_url),
            None => format!("{}/v3/jobs?limit={limit}", self.base_url),
        };
        let request = self.http.get(url).bearer_auth(&self.api_key);
        Ok(request.send().await?.error_for_status()?.json().await?)
    }
}

/// Students per second, from the first request to the last job completed. The
/// request bodies are built and serialized before the clock starts: the
/// client's own work is not the system's. Completion is watched through the
/// job list (`GET /v3/jobs`, one request every 50 ms for the whole pass) rather
/// than by polling every job: polling each job was ~80 requests/s of the
/// bench's own load on the same two cores.
pub async fn async_throughput(
    client: &Client,
    space: &str,
    total: usize,
    generation: u32,
    clients: usize,
) -> anyhow::Result<f64> {
    let queue: VecDeque<Vec<u8>> = (0..total)
        .step_by(1000)
        .map(|start| students::batch_body(space, start..(start + 1000).min(total), generation))
        .collect();
    let queue = Arc::new(Mutex::new(queue));
    let started = Instant::now();
    let lanes = (0..clients).map(|_| {
        let queue = queue.clone();
        let client = client.clone();
        async move {
            let mut jobs = Vec::new();
            loop {
                let Some(body) = queue.lock().await.pop_front() else {
                    break;
                };
                let (status, answer) = client.upsert(body, "respond-async").await?;
                anyhow::ensure!(
                    status == 202 || status == 200,
                    "batch answered {status}: {answer}"
                );
                jobs.push(answer["jobId"].as_str().context("jobId")?.to_string());
            }
            anyhow::Ok(jobs)
        }
    });
    let jobs: HashSet<String> = try_join_all(lanes).await?.into_iter().flatten().collect();
    wait_all_completed(client, jobs).await?;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Waits until every job of `pending` is completed with no failed item,
/// reading the school's job list (newest first: they are the newest jobs) in
/// pages as large as the pass.
async fn wait_all_completed(client: &Client, mut pending: HashSet<String>) -> anyhow::Result<()> {
    let limit = pending.len().clamp(1, 500);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pending.is_empty() {
        let mut cursor: Option<String> = None;
        loop {
            let page = client.jobs_page(limit, cursor.as_deref()).await?;
            for job in page["jobs"].as_array().context("jobs")? {
                let Some(id) = job["jobId"].as_str() else {
                    continue;
                };
                if !pending.contains(id) {
                    continue;
                }
                match job["status"].as_str() {
                    Some("completed") => {
                        let failed = job["summary"]["failed"].as_u64().unwrap_or(0);
                        anyhow::ensure!(failed == 0, "job {id} had {failed} failed items");
                        pending.remove(id);
                    }
                    Some("failed") => anyhow::bail!("job {id} failed: {}", job["error"]),
                    _ => {}
                }
            }
            match page["nextCursor"].as_str() {
                Some(next) if !pending.is_empty() => cursor = Some(next.to_string()),
                _ => break,
            }
        }
        if pending.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} jobs not done in 600 s",
            pending.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Latencies of `batches` sequential synchronous 1000-student batches (new keys
/// when `generation` is 0, else updates of every value).
pub async fn sync_latencies(
    client: &Client,
    space: &str,
    batches: usize,
    generation: u32,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(batches);
    for batch in 0..batches {
        let body = students::batch_body(space, batch * 1000..(batch + 1) * 1000, generation);
        let started = Instant::now();
        let (status, answer) = client.upsert(body, "wait=60").await?;
        latencies.push(started.elapsed());
        anyhow::ensure!(status == 200, "sync batch answered {status}: {answer}");
    }
    Ok(latencies)
}

/// Time for `count` students sent one per request, synchronously, in sequence.
pub async fn one_by_one(client: &Client, space: &str, count: usize) -> anyhow::Result<Duration> {
    let bodies: Vec<Vec<u8>> = (0..count)
        .map(|index| students::batch_body(space, index..index + 1, 0))
        .collect();
    let started = Instant::now();
    for body in bodies {
        let (status, answer) = client.upsert(body, "wait=60").await?;
        anyhow::ensure!(status == 200, "single answered {status}: {answer}");
    }
    Ok(started.elapsed())
}

/// The `p`-th percentile (0–100) of sorted durations, nearest-rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&sorted[..1], 95.0), Duration::from_millis(1));
    }
}
