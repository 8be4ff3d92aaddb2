//! Redis, the fast path for job results: after a worker commits a job it caches
//! the job body under `{ns}:job:{id}` and publishes the id on `{ns}:jobs:completed`.
//! Waiting API requests listen to that channel. Redis may lose everything at any
//! time: Postgres stays the record and every reader falls back to it. A body with
//! credentials emails still `queued` is never served from the cache (the mailer
//! changes their state after the job completed); the mailer rewrites the entry
//! once they are all settled.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::breaker::Breaker;
use crate::job::JobView;

/// The longest one cache read or write may take before it counts as failed.
const CALL_BUDGET: Duration = Duration::from_millis(500);
/// How long a completed job body stays cached: long enough for the waiting
/// request and the polls that follow a 202 (readers fall back to Postgres
/// afterwards). A 1000-student body is 150–250 kB, so Redis holds about
/// `TTL × jobs per second × 200 kB`: ~1 GB at the bench's sustained 17 000
/// students/s, 1/12 of what a 1 h TTL held.
const CACHE_TTL: Duration = Duration::from_secs(300);

/// Redis key and channel names of one namespace.
#[derive(Debug, Clone)]
pub struct ResultKeys {
    namespace: String,
}

impl ResultKeys {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
        }
    }

    /// The cached body of one job; the school is part of the key so that a
    /// cache hit can never cross tenants.
    pub fn job(&self, school_id: Uuid, job_id: Uuid) -> String {
        format!("{}:job:{school_id}:{job_id}", self.namespace)
    }

    pub fn completed_channel(&self) -> String {
        format!("{}:jobs:completed", self.namespace)
    }
}

/// A self-reconnecting Redis connection whose commands fail fast (bounded
/// response and connect timeouts) instead of hanging while Redis is down. It
/// connects lazily, so a process can start while Redis is down; only an invalid
/// URL is an error here.
pub fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// Caches and announces completed jobs; reads the cache. Every call goes
/// through the process's [`Breaker`]: while Redis is failing, calls fail at once.
#[derive(Clone)]
pub struct ResultsStore {
    redis: ConnectionManager,
    breaker: Arc<Breaker>,
    keys: ResultKeys,
}

impl ResultsStore {
    pub fn new(redis: ConnectionManager, namespace: &str) -> Self {
        Self {
            redis,
            breaker: Arc::new(Breaker::default()),
            keys: ResultKeys::new(namespace),
        }
    }

    /// The breaker guarding this process's Redis calls (shared with the rate
    /// limiter).
    pub fn breaker(&self) -> Arc<Breaker> {
        self.breaker.clone()
    }

    pub fn keys(&self) -> &ResultKeys {
        &self.keys
    }

    /// Caches a finished job and notifies waiters. Errors are the caller's to log:
    /// a lost notification only delays a waiter until its next poll.
    pub async fn publish_completed(
        &self,
        school_id: Uuid,
        job: &JobView,
    ) -> redis::RedisResult<()> {
        let body = serde_json::to_string(job).map_err(|error| {
            redis::RedisError::from((redis::ErrorKind::Client, "serialize job", error.to_string()))
        })?;
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        pipe.set_ex(
            self.keys.job(school_id, job.job_id),
            body,
            CACHE_TTL.as_secs(),
        )
        .ignore()
        .publish(self.keys.completed_channel(), job.job_id.to_string())
        .ignore();
        self.breaker
            .call(CALL_BUDGET, pipe.query_async::<()>(&mut redis))
            .await
    }

    /// The cached body of a finished job, if Redis has it. A body that still
    /// shows `queued` credentials emails counts as a miss: their state lives in
    /// Postgres, and readers get it there (see `store::jobs::get`).
    pub async fn cached(
        &self,
        school_id: Uuid,
        job_id: Uuid,
    ) -> redis::RedisResult<Option<JobView>> {
        let mut redis = self.redis.clone();
        let key = self.keys.job(school_id, job_id);
        let body: Option<String> = self.breaker.call(CALL_BUDGET, redis.get(key)).await?;
        Ok(body
            .and_then(|body| serde_json::from_str::<JobView>(&body).ok())
            .filter(|view| !view.awaits_credentials_emails()))
    }

    /// Replaces a cached job body (once its credentials emails are settled) so
    /// that the cache serves it again; keeps the entry's expiry and never
    /// creates an entry that has expired or was never written.
    pub async fn refresh_cached(&self, school_id: Uuid, job: &JobView) -> redis::RedisResult<()> {
        let body = serde_json::to_string(job).map_err(|error| {
            redis::RedisError::from((redis::ErrorKind::Client, "serialize job", error.to_string()))
        })?;
        let mut redis = self.redis.clone();
        let mut set = redis::cmd("SET");
        set.arg(self.keys.job(school_id, job.job_id))
            .arg(body)
            .arg("XX")
            .arg("KEEPTTL");
        let _: Option<String> = self
            .breaker
            .call(CALL_BUDGET, set.query_async(&mut redis))
            .await?;
        Ok(())
    }

    /// A clone of the underlying connection (for other Redis users such as the
    /// rate limiter).
    pub fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }
}

/// Listens for completed-job notifications and fans them out in-process. The
/// listener reconnects by itself; while Redis is down nothing is broadcast and
/// waiters rely on their periodic poll of Postgres.
pub fn spawn_completion_listener(redis_url: String, keys: ResultKeys) -> broadcast::Sender<Uuid> {
    let (sender, _) = broadcast::channel(1024);
    let announce = sender.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match listen(&redis_url, &keys, &announce).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(error) => {
                    tracing::warn!(%error, "completion listener lost Redis; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    sender
}

async fn listen(
    redis_url: &str,
    keys: &ResultKeys,
    announce: &broadcast::Sender<Uuid>,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Io, "connect to Redis timed out"))
        })??;
    pubsub.subscribe(keys.completed_channel()).await?;
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        if let Ok(payload) = message.get_payload::<String>()
            && let Ok(job_id) = payload.parse()
        {
            let _ = announce.send(job_id);
        }
    }
    Ok(())
}
