//! Configuration from environment variables (names and defaults as in API.md).

use std::time::Duration;

/// Everything the API and workers read from their environment.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub amqp_url: String,
    pub redis_url: String,
    pub bind_addr: String,
    /// Prefix of every RabbitMQ exchange/queue name and Redis key.
    pub namespace: String,
    /// Guards the admin endpoints; `None` makes them answer 404.
    pub admin_token: Option<String>,
    pub smtp_url: Option<String>,
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    /// Students one school may send in batches per minute, over all its keys
    /// and every API instance (`SCHOOL_STUDENTS_PER_MINUTE`).
    pub school_students_per_minute: u32,
    /// Batches one worker process applies at once (`WORKER_CONCURRENCY`,
    /// default 2: measured in BENCHMARKS.md, "Worker concurrency and prefetch";
    /// more costs CPU per student without adding throughput on two cores).
    pub worker_concurrency: usize,
    /// Unacknowledged messages one worker process holds (`WORKER_PREFETCH`,
    /// default 2, as measured with the concurrency).
    pub worker_prefetch: u16,
    /// Bound of the batch queue; past it new batches are refused with 503.
    pub queue_max_length: u32,
    /// Deliveries of one batch before it is dead-lettered and its job fails.
    pub queue_delivery_limit: u32,
    pub database_max_connections: u32,
    /// Where a worker serves its Prometheus metrics (`WORKER_METRICS_ADDR`, e.g.
    /// `127.0.0.1:9464`); unset: no listener.
    pub worker_metrics_addr: Option<std::net::SocketAddr>,
    /// The credentials mailer of the worker.
    pub mail: MailConfig,
}

/// Settings of the credentials mailer (`MAIL_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailConfig {
    /// Sender address; the display name is the school's (`MAIL_FROM`).
    pub from: String,
    /// Emails one school may be sent in any 60 minutes (`MAIL_PER_SCHOOL_PER_HOUR`).
    pub per_school_per_hour: u32,
    /// Attempts before an email is `failed` for good (`MAIL_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt, capped at one hour
    /// (`MAIL_RETRY_BASE_MS`).
    pub retry_base: Duration,
    /// How often an idle mailer looks for due emails (`MAIL_POLL_MS`).
    pub poll_interval: Duration,
    /// Emails one worker process sends at once (`MAIL_CONCURRENCY`; 0 turns
    /// the mailer of that process off).
    pub concurrency: usize,
}

impl std::fmt::Debug for Config {
    // Hand-written so that secrets (admin token, passwords inside URLs) never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("bind_addr", &self.bind_addr)
            .field("namespace", &self.namespace)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("smtp_url", &self.smtp_url.as_deref().map(redact_url))
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field(
                "school_students_per_minute",
                &self.school_students_per_minute,
            )
            .field("worker_concurrency", &self.worker_concurrency)
            .field("worker_prefetch", &self.worker_prefetch)
            .field("queue_max_length", &self.queue_max_length)
            .field("queue_delivery_limit", &self.queue_delivery_limit)
            .field("worker_metrics_addr", &self.worker_metrics_addr)
            .field("mail", &self.mail)
            .finish()
    }
}

/// Replaces the password of a URL (`scheme://user:secret@host`) with `***`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => raw.to_string(),
    }
}

/// A variable that is set but cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {problem}")]
pub struct ConfigError {
    name: &'static str,
    problem: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = |name: &str, default: &str| {
            lookup(name)
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        Ok(Self {
            database_url: text(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/studentsync",
            ),
            amqp_url: text("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            redis_url: text("REDIS_URL", "redis://127.0.0.1:6379"),
            bind_addr: text("BIND_ADDR", "127.0.0.1:8080"),
            namespace: text("STUDENTSYNC_NAMESPACE", "studentsync"),
            admin_token: lookup("ADMIN_TOKEN").filter(|value| !value.is_empty()),
            smtp_url: lookup("SMTP_URL").filter(|value| !value.is_empty()),
            rate_limit_per_minute: number(&lookup, "RATE_LIMIT_PER_MINUTE", 300)?,
            rate_limit_burst: number(&lookup, "RATE_LIMIT_BURST", 60)?,
            school_students_per_minute: number(&lookup, "SCHOOL_STUDENTS_PER_MINUTE", 60_000)?,
            worker_concurrency: number(&lookup, "WORKER_CONCURRENCY", 2)?,
            worker_prefetch: number(&lookup, "WORKER_PREFETCH", 2)?,
            queue_max_length: number(&lookup, "QUEUE_MAX_LENGTH", 10_000)?,
            queue_delivery_limit: number(&lookup, "QUEUE_DELIVERY_LIMIT", 5)?,
            database_max_connections: number(&lookup, "DATABASE_MAX_CONNECTIONS", 10)?,
            worker_metrics_addr: optional(&lookup, "WORKER_METRICS_ADDR")?,
            mail: MailConfig {
                from: text("MAIL_FROM", "no-reply@studentsync.invalid"),
                per_school_per_hour: number(&lookup, "MAIL_PER_SCHOOL_PER_HOUR", 500)?,
                max_attempts: number(&lookup, "MAIL_MAX_ATTEMPTS", 8)?,
                retry_base: Duration::from_millis(number(&lookup, "MAIL_RETRY_BASE_MS", 30_000)?),
                poll_interval: Duration::from_millis(number(&lookup, "MAIL_POLL_MS", 2_000)?),
                concurrency: number(&lookup, "MAIL_CONCURRENCY", 1)?,
            },
        })
    }

    /// How long a client is told to wait before retrying a 503.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(5)
    }
}

fn number<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    Ok(optional(lookup, name)?.unwrap_or(default))
}

/// A variable parsed as `T`; unset or empty: `None`.
fn optional<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match lookup(name).filter(|value| !value.is_empty()) {
        None => Ok(None),
        Some(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|error: T::Err| ConfigError {
                name,
                problem: format!("{value:?} is not valid: {error}"),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::from_lookup(|_| None).unwrap();
        assert_eq!(config.bind_addr, "127.0.0.1:8080");
        assert_eq!(config.namespace, "studentsync");
        assert_eq!(config.rate_limit_per_minute, 300);
        assert_eq!(config.rate_limit_burst, 60);
        assert_eq!(config.school_students_per_minute, 60_000);
        assert!(config.admin_token.is_none());
        assert!(config.smtp_url.is_none());
        assert_eq!(config.mail.per_school_per_hour, 500);
        assert_eq!(config.mail.max_attempts, 8);
    }

    #[test]
    fn the_worker_metrics_address_is_optional_and_checked() {
        assert_eq!(
            Config::from_lookup(|_| None).unwrap().worker_metrics_addr,
            None
        );
        let set = Config::from_lookup(|name| {
            (name == "WORKER_METRICS_ADDR").then(|| "127.0.0.1:9464".to_string())
        })
        .unwrap();
        assert_eq!(set.worker_metrics_addr, Some(([127, 0, 0, 1], 9464).into()));
        let error = Config::from_lookup(|name| {
            (name == "WORKER_METRICS_ADDR").then(|| "localhost".to_string())
        })
        .err()
        .unwrap();
        assert!(error.to_string().contains("WORKER_METRICS_ADDR"), "{error}");
    }

    #[test]
    fn bad_numbers_are_reported_by_name() {
        let env = HashMap::from([("RATE_LIMIT_BURST", "lots")]);
        let error = Config::from_lookup(|name| env.get(name).map(|v| v.to_string()))
            .err()
            .unwrap();
        assert!(error.to_string().contains("RATE_LIMIT_BURST"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let env = HashMap::from([
            ("ADMIN_TOKEN", "super-secret"),
            ("AMQP_URL", "amqp://user:hunter2@host:5672/%2f"),
            (
                "SMTP_URL",
                "smtp://mailer:s3cret@smtp.example.org:587?tls=required",
            ),
        ]);
        let config = Config::from_lookup(|name| env.get(name).map(|v| v.to_string())).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("super-secret"));
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("s3cret"));
    }
}
