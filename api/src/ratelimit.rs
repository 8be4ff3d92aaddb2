//! Rate limiting, shared by every API instance: GCRA (generic cell rate
//! algorithm) kept in Redis by one Lua script, with Redis `TIME` as the clock so
//! instances need no synchronised clocks. A bucket key holds the theoretical
//! arrival time (TAT) in microseconds.
//!
//! Two policies:
//! - `default`, per API key (`{ns}:ratelimit:{apiKeyId}`): a key may send
//!   `RATE_LIMIT_BURST` requests at once, then one every
//!   `60 / RATE_LIMIT_PER_MINUTE` seconds. Checked by [`enforce`] on every
//!   authenticated request.
//! - `school`, per school (`{ns}:ratelimit:school:{schoolId}`): the students of
//!   batch upserts, over all the school's keys, `SCHOOL_STUDENTS_PER_MINUTE`
//!   per minute with a minute's worth (at least one full batch) at once. A
//!   batch takes as many cells as it has items, atomically (all or nothing), so
//!   one school's flood cannot starve the others. Charged by the batch handler
//!   through [`RateLimiter::charge_students`].
//!
//! Every authenticated answer carries `RateLimit-Policy` and `RateLimit` (IETF
//! httpapi draft) for the `default` policy; a refused request gets 429
//! `rate_limited` and an honest `Retry-After` (waiting that long is enough,
//! unless the same bucket is used meanwhile), and a batch refused by the school
//! budget adds a `"school"` member to both headers. If Redis cannot be asked,
//! requests are let through (fail open) and the process's Redis circuit breaker
//! (`studentsync::breaker`) logs one warning per outage and skips Redis for a
//! cool-down, so requests do not each wait for a timeout: an outage of the
//! cache must not take the API down, nor slow it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use redis::aio::ConnectionManager;
use studentsync::breaker::Breaker;
use studentsync::domain::validate::MAX_BATCH;
use studentsync::store::keys::Principal;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ProblemCode};

/// The GCRA step. KEYS[1]: the bucket; ARGV[1]: emission interval (µs per
/// cell); ARGV[2]: capacity (cells); ARGV[3]: cells this request takes (at most
/// the capacity). Returns {allowed (0|1), µs until the bucket is full again,
/// µs until this request would be allowed}. A refused request changes nothing.
const GCRA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * capacity
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

/// One GCRA policy: `per_minute` cells refill per minute, `capacity` cells at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The policy's name in the `RateLimit` headers.
    pub name: &'static str,
    pub per_minute: u32,
    pub capacity: u32,
}

impl Policy {
    /// Requests per API key (`RATE_LIMIT_PER_MINUTE`, `RATE_LIMIT_BURST`).
    pub fn per_key(per_minute: u32, burst: u32) -> Self {
        Self {
            name: "default",
            per_minute: per_minute.max(1),
            capacity: burst.max(1),
        }
    }

    /// Batch students per school (`SCHOOL_STUDENTS_PER_MINUTE`): a minute's
    /// worth at once, and never less than one full batch (else a batch of
    /// [`MAX_BATCH`] could never pass).
    pub fn per_school(students_per_minute: u32) -> Self {
        let per_minute = students_per_minute.max(1);
        Self {
            name: "school",
            per_minute,
            capacity: per_minute.max(MAX_BATCH as u32),
        }
    }

    /// Microseconds per cell (at least 1).
    pub fn interval_us(&self) -> u64 {
        (60_000_000 / u64::from(self.per_minute)).max(1)
    }

    /// `"<name>";q=<per minute>;w=60`: a member of `RateLimit-Policy`.
    pub fn policy_member(&self) -> String {
        format!("\"{}\";q={};w=60", self.name, self.per_minute)
    }
}

/// The limiter of one deployment.
#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
    breaker: Arc<Breaker>,
    script: Arc<redis::Script>,
    namespace: String,
    per_key: Policy,
    per_school: Policy,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Cells (requests, or students) that could still be used right now.
    pub remaining: u64,
    /// Seconds until the bucket is full again (rounded up).
    pub reset_secs: u64,
    /// Seconds until this request would be allowed (rounded up; 0 when allowed).
    pub retry_after_secs: u64,
}

impl Decision {
    /// Interprets the script's answer (all times in µs).
    pub fn from_script(
        interval_us: u64,
        capacity: u32,
        allowed: bool,
        reset_us: u64,
        retry_us: u64,
    ) -> Self {
        let interval_us = interval_us.max(1);
        let full = interval_us * u64::from(capacity);
        Self {
            allowed,
            remaining: if allowed {
                full.saturating_sub(reset_us) / interval_us
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
    pub fn unknown(capacity: u32) -> Self {
        Self {
            allowed: true,
            remaining: u64::from(capacity),
            reset_secs: 0,
            retry_after_secs: 0,
        }
    }

    /// `"<name>";r=<remaining>;t=<seconds>`: a member of `RateLimit`.
    pub fn state_member(&self, policy: &Policy) -> String {
        format!(
            "\"{}\";r={};t={}",
            policy.name, self.remaining, self.reset_secs
        )
    }
}

/// Put into a batch answer refused by the school budget, so that [`enforce`]
/// adds the `"school"` members to the rate-limit headers.
#[derive(Debug, Clone, Copy)]
pub struct SchoolBudget(pub Decision);

impl RateLimiter {
    pub fn new(
        redis: ConnectionManager,
        breaker: Arc<Breaker>,
        namespace: &str,
        per_key: Policy,
        per_school: Policy,
    ) -> Self {
        Self {
            redis,
            breaker,
            script: Arc::new(redis::Script::new(GCRA)),
            namespace: namespace.to_string(),
            per_key,
            per_school,
        }
    }

    pub fn per_key(&self) -> &Policy {
        &self.per_key
    }

    pub fn per_school(&self) -> &Policy {
        &self.per_school
    }

    /// Takes one request from the key's bucket. Fails open.
    pub async fn check(&self, principal: &Principal) -> Decision {
        let key = format!("{}:ratelimit:{}", self.namespace, principal.api_key_id);
        self.take(&key, &self.per_key, 1).await
    }

    /// Takes `students` cells from the school's budget, all or nothing. Fails open.
    pub async fn charge_students(&self, school_id: Uuid, students: usize) -> Decision {
        let key = format!("{}:ratelimit:school:{school_id}", self.namespace);
        let cost = u32::try_from(students).unwrap_or(u32::MAX);
        self.take(&key, &self.per_school, cost).await
    }

    async fn take(&self, key: &str, policy: &Policy, cost: u32) -> Decision {
        let interval = policy.interval_us();
        // More than the capacity could never pass; callers stay below it.
        let cost = cost.clamp(1, policy.capacity);
        let mut redis = self.redis.clone();
        let mut invocation = self.script.key(key);
        invocation.arg(interval).arg(policy.capacity).arg(cost);
        let answer = self
            .breaker
            .call(
                REDIS_BUDGET,
                invocation.invoke_async::<(i64, i64, i64)>(&mut redis),
            )
            .await;
        match answer {
            Ok((allowed, reset_us, retry_us)) => Decision::from_script(
                interval,
                policy.capacity,
                allowed == 1,
                reset_us.max(0) as u64,
                retry_us.max(0) as u64,
            ),
            // The breaker logged it (once per outage): let the request through.
            Err(_) => Decision::unknown(policy.capacity),
        }
    }

    /// The `RateLimit-Policy` and `RateLimit` headers for a per-key decision.
    pub fn headers(&self, decision: &Decision) -> HeaderMap {
        rate_limit_headers(self.per_key.per_minute, decision)
    }
}

/// `RateLimit-Policy: "default";q=<per_minute>;w=60` and
/// `RateLimit: "default";r=<remaining>;t=<seconds>`.
pub fn rate_limit_headers(per_minute: u32, decision: &Decision) -> HeaderMap {
    let policy = Policy::per_key(per_minute, 1);
    header_map(&[(policy, *decision)])
}

/// Both headers, one list member per (policy, decision).
fn header_map(members: &[(Policy, Decision)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let join = |member: &dyn Fn(&Policy, &Decision) -> String| {
        members
            .iter()
            .map(|(policy, decision)| member(policy, decision))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let policy = join(&|policy, _| policy.policy_member());
    let state = join(&|policy, decision| decision.state_member(policy));
    for (name, value) in [(&RATELIMIT_POLICY, policy), (&RATELIMIT, state)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), value);
        }
    }
    headers
}

/// The 429 of a batch over its school's student budget (headers completed by
/// [`enforce`]).
pub fn school_budget_exceeded(policy: &Policy, students: usize, decision: Decision) -> Response {
    let mut response = ApiError::new(
        ProblemCode::RateLimited,
        format!(
            "this school may send {} students per minute in batches; this batch of {students} fits again in {} s",
            policy.per_minute, decision.retry_after_secs
        ),
    )
    .with_retry_after(Duration::from_secs(decision.retry_after_secs))
    .into_response();
    response.extensions_mut().insert(SchoolBudget(decision));
    response
}

/// Middleware (after authentication): refuses over-limit requests with 429 and
/// adds the rate-limit headers to every answer.
pub async fn enforce(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(principal) = request.extensions().get::<Principal>().copied() else {
        return next.run(request).await;
    };
    let limiter = &state.limiter;
    let decision = limiter.check(&principal).await;
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        ApiError::new(
            ProblemCode::RateLimited,
            format!(
                "rate limit of {} requests per minute exceeded; retry in {} s",
                limiter.per_key.per_minute, decision.retry_after_secs
            ),
        )
        .with_retry_after(Duration::from_secs(decision.retry_after_secs))
        .into_response()
    };
    let mut members = vec![(limiter.per_key, decision)];
    if let Some(SchoolBudget(school)) = response.extensions().get::<SchoolBudget>() {
        members.push((limiter.per_school, *school));
    }
    response.headers_mut().extend(header_map(&members));
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
    fn school_policy_holds_at_least_one_batch() {
        let policy = Policy::per_school(60_000);
        assert_eq!((policy.per_minute, policy.capacity), (60_000, 60_000));
        assert_eq!(policy.interval_us(), 1_000);
        let small = Policy::per_school(100);
        assert_eq!(small.capacity, MAX_BATCH as u32);
        assert_eq!(small.interval_us(), 600_000);
        // An absurd rate must not divide by zero.
        assert_eq!(Policy::per_key(u32::MAX, 10).interval_us(), 1);
        let decision = Decision::from_script(0, 10, true, 0, 0);
        assert_eq!(decision.remaining, 10);
    }

    #[test]
    fn a_refused_batch_gets_both_members() {
        // 1000 students per minute: 60 ms each; a full bucket minus 250 students.
        let school = Policy::per_school(1_000);
        let refused = Decision::from_script(60_000, 1_000, false, 60 * SECOND - 1, 15 * SECOND);
        assert_eq!(refused.retry_after_secs, 15);
        let key = Decision::from_script(200_000, 60, true, 400_000, 0);
        let headers = header_map(&[(Policy::per_key(300, 60), key), (school, refused)]);
        assert_eq!(
            headers[&RATELIMIT_POLICY],
            "\"default\";q=300;w=60, \"school\";q=1000;w=60"
        );
        assert_eq!(
            headers[&RATELIMIT],
            "\"default\";r=58;t=1, \"school\";r=0;t=60"
        );
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
