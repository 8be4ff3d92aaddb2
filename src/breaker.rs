//! A circuit breaker for Redis, the dependency the service can run without.
//! After a failure every Redis call is skipped for a cool-down (1 s, doubling
//! up to 8 s while failures continue) and answered as "Redis unavailable" at
//! once, instead of each request paying a connection timeout; after the
//! cool-down the next calls try again, and one success closes the breaker.
//! Logs once per transition (open, closed), not once per request.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const FIRST_COOL_DOWN: Duration = Duration::from_secs(1);
const MAX_COOL_DOWN: Duration = Duration::from_secs(8);

/// Shared by every Redis user of a process.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Set while the breaker is open (after a failure).
    open_until: Option<Instant>,
    cool_down: Duration,
}

impl Breaker {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a call may go to Redis now.
    pub fn allows(&self) -> bool {
        let state = self.state();
        state.open_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Whether the breaker is open (Redis was failing at the last call).
    pub fn is_open(&self) -> bool {
        let state = self.state();
        state.open_until.is_some()
    }

    pub fn succeeded(&self) {
        let mut state = self.state();
        if state.open_until.take().is_some() {
            tracing::info!("Redis answers again; using it");
        }
        state.cool_down = Duration::ZERO;
    }

    pub fn failed(&self, error: &dyn Display) {
        let mut state = self.state();
        let was_open = state.open_until.is_some();
        state.cool_down = if was_open {
            (state.cool_down * 2).clamp(FIRST_COOL_DOWN, MAX_COOL_DOWN)
        } else {
            FIRST_COOL_DOWN
        };
        state.open_until = Some(Instant::now() + state.cool_down);
        if !was_open {
            tracing::warn!(%error, "Redis unavailable; going without it (rate limits fail open, results come from Postgres) and retrying in the background");
        }
    }

    /// Runs `call` unless the breaker is open, within `budget`; records the
    /// outcome. `Err` when skipped, failed or late.
    pub async fn call<T>(
        &self,
        budget: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        if !self.allows() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis skipped: circuit breaker open",
            )));
        }
        let outcome = match tokio::time::timeout(budget, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis call timed out",
            ))),
        };
        match &outcome {
            Ok(_) => self.succeeded(),
            Err(error) => self.failed(error),
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_opens_for_a_cool_down_and_a_success_closes() {
        let breaker = Breaker::default();
        assert!(breaker.allows());
        breaker.failed(&"connection refused");
        assert!(breaker.is_open());
        assert!(!breaker.allows(), "skipped during the cool-down");
        breaker.state.lock().unwrap().open_until = Some(Instant::now());
        assert!(breaker.allows(), "tries again after the cool-down");
        breaker.failed(&"still refused");
        assert_eq!(breaker.state.lock().unwrap().cool_down, FIRST_COOL_DOWN * 2);
        breaker.succeeded();
        assert!(!breaker.is_open());
        assert!(breaker.allows());
    }

    #[test]
    fn the_cool_down_is_capped() {
        let breaker = Breaker::default();
        for _ in 0..10 {
            breaker.failed(&"refused");
        }
        assert_eq!(breaker.state.lock().unwrap().cool_down, MAX_COOL_DOWN);
    }

    #[tokio::test]
    async fn an_open_breaker_skips_the_call_at_once() {
        let breaker = Breaker::default();
        breaker.failed(&"refused");
        let started = Instant::now();
        let outcome = breaker
            .call(Duration::from_secs(5), async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, redis::RedisError>(())
            })
            .await;
        assert!(outcome.is_err());
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
