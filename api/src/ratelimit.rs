//! Per-API-key rate limiting, shared by every API instance: GCRA (generic cell
//! rate algorithm) kept in Redis by one Lua script, with Redis `TIME` as the clock
//! so instances need no synchronised clocks. The key `{ns}:ratelimit:{apiKeyId}`
//! holds the theoretical arrival time (TAT) in microseconds.
//!
//! A key may send `burst` requests at once, then one every `60 / per_minute`
//! seconds. Every authenticated answer carries `RateLimit-Policy` and `RateLimit`
//! (IETF httpapi draft); a refused request gets 429 `rate_limited` and an honest
//! `Retry-After`. If Redis cannot be asked, requests are let through (fail open)
//! and a warning is logged: an outage of the cache must not take the API down.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use redis::aio::ConnectionManager;
use studentsync::store::keys::Principal;

use crate::AppState;
use crate::error::{ApiError, ProblemCode};

/// The GCRA step. KEYS[1]: the bucket; ARGV[1]: emission interval (µs);
/// ARGV[2]: burst. Returns {allowed (0|1), µs until the bucket is full again,
/// µs until one more request is allowed}.
const GCRA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, tat - now, allow_at - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
return {1, new_tat - now, 0}
"#;

/// How long the limiter may wait for Redis before letting a request through.
const REDIS_BUDGET: Duration = Duration::from_secs(1);

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The limiter of one deployment.
#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
    script: Arc<redis::Script>,
    namespace: String,
    per_minute: u32,
    burst: u32,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could still be sent right now.
    pub remaining: u64,
    /// Seconds until the bucket is full again (rounded up).
    pub reset_secs: u64,
    /// Seconds until one more request is allowed (rounded up; 0 when allowed).
    pub retry_after_secs: u64,
}

impl Decision {
    /// Interprets the script's answer (all times in µs).
    pub fn from_script(
        interval_us: u64,
        burst: u32,
        allowed: bool,
        reset_us: u64,
        retry_us: u64,
    ) -> Self {
        let capacity = interval_us * u64::from(burst);
        Self {
            allowed,
            remaining: if allowed {
                capacity.saturating_sub(reset_us) / interval_us
            } else {
                0
            },
            reset_secs: reset_us.div_ceil(1_000_000),
            retry_after_secs: if allowed {
                0
            } else {
                retry_us.div_ceil(1_000_000).max(1)
            },
        }
    }

    /// What a request is told while Redis cannot be asked (fail open): nothing
    /// is known to be used.
    pub fn unknown(burst: u32) -> Self {
        Self {
            allowed: true,
            remaining: u64::from(burst),
            reset_secs: 0,
            retry_after_secs: 0,
        }
    }
}

impl RateLimiter {
    pub fn new(redis: ConnectionManager, namespace: &str, per_minute: u32, burst: u32) -> Self {
        Self {
            redis,
            script: Arc::new(redis::Script::new(GCRA)),
            namespace: namespace.to_string(),
            per_minute: per_minute.max(1),
            burst: burst.max(1),
        }
    }

    fn interval_us(&self) -> u64 {
        60_000_000 / u64::from(self.per_minute)
    }

    /// Takes one request from the key's bucket. Fails open.
    pub async fn check(&self, principal: &Principal) -> Decision {
        let key = format!("{}:ratelimit:{}", self.namespace, principal.api_key_id);
        let interval = self.interval_us();
        let mut redis = self.redis.clone();
        let mut invocation = self.script.key(&key);
        invocation.arg(interval).arg(self.burst);
        let answer = tokio::time::timeout(
            REDIS_BUDGET,
            invocation.invoke_async::<(i64, i64, i64)>(&mut redis),
        )
        .await;
        match answer {
            Ok(Ok((allowed, reset_us, retry_us))) => Decision::from_script(
                interval,
                self.burst,
                allowed == 1,
                reset_us.max(0) as u64,
                retry_us.max(0) as u64,
            ),
            Ok(Err(error)) => {
                tracing::warn!(%error, "rate limiter cannot reach Redis; letting the request through");
                Decision::unknown(self.burst)
            }
            Err(_) => {
                tracing::warn!("rate limiter timed out on Redis; letting the request through");
                Decision::unknown(self.burst)
            }
        }
    }

    /// The `RateLimit-Policy` and `RateLimit` headers for a decision.
    pub fn headers(&self, decision: &Decision) -> HeaderMap {
        rate_limit_headers(self.per_minute, decision)
    }
}

/// `RateLimit-Policy: "default";q=<per_minute>;w=60` and
/// `RateLimit: "default";r=<remaining>;t=<seconds>`.
pub fn rate_limit_headers(per_minute: u32, decision: &Decision) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let policy = format!("\"default\";q={per_minute};w=60");
    let state = format!(
        "\"default\";r={};t={}",
        decision.remaining, decision.reset_secs
    );
    for (name, value) in [(&RATELIMIT_POLICY, policy), (&RATELIMIT, state)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), value);
        }
    }
    headers
}

/// Middleware (after authentication): refuses over-limit requests with 429 and
/// adds the rate-limit headers to every answer.
pub async fn enforce(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(principal) = request.extensions().get::<Principal>().copied() else {
        return next.run(request).await;
    };
    let decision = state.limiter.check(&principal).await;
    let headers = state.limiter.headers(&decision);
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        ApiError::new(
            ProblemCode::RateLimited,
            format!(
                "rate limit of {} requests per minute exceeded; retry in {} s",
                state.limiter.per_minute, decision.retry_after_secs
            ),
        )
        .with_retry_after(Duration::from_secs(decision.retry_after_secs))
        .into_response()
    };
    response.headers_mut().extend(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    #[test]
    fn first_request_of_a_full_bucket() {
        // 300/min = one every 200 ms, burst 60.
        let decision = Decision::from_script(200_000, 60, true, 200_000, 0);
        assert_eq!(decision.remaining, 59);
        assert_eq!(decision.reset_secs, 1);
        let headers = rate_limit_headers(300, &decision);
        assert_eq!(headers[&RATELIMIT_POLICY], "\"default\";q=300;w=60");
        assert_eq!(headers[&RATELIMIT], "\"default\";r=59;t=1");
    }

    #[test]
    fn last_request_of_the_burst() {
        // 60/min, burst 3: third request leaves the TAT 3 s ahead.
        let decision = Decision::from_script(SECOND, 3, true, 3 * SECOND, 0);
        assert_eq!(decision.remaining, 0);
        assert_eq!(decision.reset_secs, 3);
    }

    #[test]
    fn refused_request_gets_an_honest_retry_after() {
        let decision = Decision::from_script(SECOND, 3, false, 3 * SECOND - 1, 1);
        assert!(!decision.allowed);
        assert_eq!(decision.remaining, 0);
        assert_eq!(decision.retry_after_secs, 1);
        assert_eq!(decision.reset_secs, 3);
        let decision =
            Decision::from_script(20 * SECOND, 1, false, 12 * SECOND + 5, 12 * SECOND + 5);
        assert_eq!(decision.retry_after_secs, 13);
        let headers = rate_limit_headers(3, &decision);
        assert_eq!(headers[&RATELIMIT], "\"default\";r=0;t=13");
    }

    #[test]
    fn fail_open_reports_a_full_bucket() {
        let decision = Decision::unknown(60);
        assert!(decision.allowed);
        assert_eq!(
            rate_limit_headers(300, &decision)[&RATELIMIT],
            "\"default\";r=60;t=0"
        );
    }
}
