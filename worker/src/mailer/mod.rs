//! The credentials mailer: works through the outbox (`credential_emails`) that
//! batch transactions fill, in every worker process at once.
//!
//! One email per transaction: claim the most overdue `queued` row
//! (`FOR UPDATE SKIP LOCKED`), take the school's send lock (skip the school if
//! another mailer holds it), check the school's hourly cap (over it: push the
//! school's due rows to when a slot frees), generate the temporary password, hash
//! it, deliver, then store the hash and mark the row `sent` — and commit. A failed
//! attempt is recorded with an exponential backoff, or as `failed` once retrying
//! cannot help or `MAIL_MAX_ATTEMPTS` is reached. A mailer that dies mid-way
//! leaves nothing: its transaction rolls back and the row is due again.
//!
//! Delivery is exactly-once up to the SMTP server and at-least-once at it: a
//! crash (or a lost commit) after the server accepted the message and before the
//! commit sends it again, with the same `Message-ID` (see ARCHITECTURE.md).

mod message;
mod password;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;
use studentsync::config::MailConfig;
use studentsync::results::ResultsStore;
use studentsync::store::{jobs, outbox};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use message::Letter;
use transport::{Failure, Transport};

/// How long a claiming transaction may sit idle (waiting on SMTP) before
/// Postgres ends it; longer than any delivery.
const IDLE_LIMIT: Duration = Duration::from_secs(120);
/// How long an email in flight may finish after shutdown was requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest delay between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// What one mailer needs.
pub struct Mailer {
    pool: PgPool,
    results: ResultsStore,
    transport: Transport,
    config: MailConfig,
    /// Notified when a batch queued emails, so they leave at once.
    wakeup: Arc<Notify>,
}

/// Starts `MAIL_CONCURRENCY` mailer loops; they end when `stop` turns true.
pub fn spawn(
    pool: PgPool,
    results: ResultsStore,
    config: MailConfig,
    smtp_url: Option<&str>,
    wakeup: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinSet<()>> {
    let transport = Transport::from_url(smtp_url)
        .map_err(|error| anyhow::anyhow!("SMTP_URL is not usable: {error}"))?;
    if matches!(transport, Transport::Log) && config.concurrency > 0 {
        tracing::warn!("SMTP_URL is unset: credentials emails are written to the log, not sent");
    }
    let mailer = Arc::new(Mailer {
        pool,
        results,
        transport,
        config,
        wakeup,
    });
    let mut loops = JoinSet::new();
    for _ in 0..mailer.config.concurrency {
        loops.spawn(run(mailer.clone(), stop.clone()));
    }
    Ok(loops)
}

/// What one step did.
enum Step {
    /// An email was delivered, retried or failed; look for the next one.
    Done,
    /// The school is over its cap: its due emails were pushed back.
    Deferred,
    /// Another mailer is sending for this school: skip it for now.
    Busy(Uuid),
    /// Nothing is due.
    Idle,
    /// Shutdown came during a delivery: rolled back, the row is due again.
    Abandoned,
}

/// One mailer loop: drain everything due, then sleep until woken, polled or
/// stopped.
async fn run(mailer: Arc<Mailer>, mut stop: watch::Receiver<bool>) {
    let mut error_delay = mailer.config.poll_interval;
    while !*stop.borrow() {
        let mut busy: Vec<Uuid> = Vec::new();
        let mut failed = false;
        while !*stop.borrow() {
            match step(&mailer, &busy, stop.clone()).await {
                Ok(Step::Done | Step::Deferred) => {}
                Ok(Step::Busy(school)) => busy.push(school),
                Ok(Step::Idle | Step::Abandoned) => break,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?error_delay, "mailer: database error");
                    failed = true;
                    break;
                }
            }
        }
        let pause = if failed {
            error_delay = (error_delay * 2).min(Duration::from_secs(30));
            error_delay
        } else {
            error_delay = mailer.config.poll_interval;
            mailer.config.poll_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = mailer.wakeup.notified(), if !failed => {}
            _ = stop.changed() => {}
        }
    }
}

/// Handles the most overdue email, in one transaction.
async fn step(
    mailer: &Mailer,
    busy: &[Uuid],
    mut stop: watch::Receiver<bool>,
) -> Result<Step, sqlx::Error> {
    let config = &mailer.config;
    let mut tx = mailer.pool.begin().await?;
    outbox::limit_idle(&mut tx, IDLE_LIMIT).await?;
    let Some(claimed) = outbox::claim(&mut tx, busy).await? else {
        return Ok(Step::Idle);
    };
    let (id, school_id) = (claimed.id, claimed.school_id);
    if !outbox::try_lock_school(&mut tx, school_id).await? {
        return Ok(Step::Busy(school_id));
    }
    if let Some(until) =
        outbox::capped_until(&mut tx, school_id, config.per_school_per_hour).await?
    {
        let deferred = outbox::defer_school(&mut tx, school_id, until).await?;
        tx.commit().await?;
        metrics::counter!("mailer_emails_deferred_total").increment(deferred);
        tracing::warn!(%school_id, deferred, %until, cap = config.per_school_per_hour,
            "school reached its hourly credentials-email cap; deferring its emails");
        return Ok(Step::Deferred);
    }

    let attempt = u32::try_from(claimed.attempts).unwrap_or(0) + 1;
    let Some(email) = claimed.email.clone() else {
        let reason = "the student has no email address any more";
        outbox::record_failure(&mut tx, id, reason, None).await?;
        tx.commit().await?;
        settled(mailer, claimed.job_id, school_id).await;
        return Ok(Step::Done);
    };
    let letter = Letter {
        outbox_id: id,
        school_name: claimed.school_name.clone(),
        from: config.from.clone(),
        to: email.clone(),
        student_name: format!("{} {}", claimed.first_name, claimed.last_name),
        new_password_needed: claimed.new_password_needed,
    };
    let password = password::generate();
    let delivered = match password::hash(&password).await {
        Ok(hash) => {
            let delivery = mailer.transport.deliver(&letter, &password);
            tokio::select! {
                outcome = delivery => outcome.map(|()| hash),
                _ = stopped_for(&mut stop, SHUTDOWN_GRACE) => {
                    tracing::info!(outbox_id = %id, "shutting down mid-delivery; the email stays queued");
                    return Ok(Step::Abandoned);
                }
            }
        }
        Err(reason) => Err(Failure::transient(reason)),
    };
    drop(password);

    match delivered {
        Ok(hash) => {
            outbox::mark_sent(&mut tx, &claimed, &email, &hash).await?;
            if let Err(error) = tx.commit().await {
                tracing::error!(outbox_id = %id, message_id = %letter.message_id(), %error,
                    "the email was delivered but could not be marked sent; it will be sent again with the same Message-ID");
                return Err(error);
            }
            metrics::counter!("mailer_emails_sent_total").increment(1);
            tracing::info!(outbox_id = %id, %school_id, attempt, message_id = %letter.message_id(), "credentials email sent");
        }
        Err(failure) => {
            let retry_in = (!failure.permanent && attempt < config.max_attempts)
                .then(|| retry_delay(config.retry_base, attempt));
            outbox::record_failure(&mut tx, id, &failure.reason, retry_in).await?;
            tx.commit().await?;
            match retry_in {
                Some(delay) => {
                    metrics::counter!("mailer_attempts_failed_total").increment(1);
                    tracing::warn!(outbox_id = %id, attempt, retry_in = ?delay, reason = %failure.reason,
                        "credentials email not delivered; will retry");
                }
                None => {
                    metrics::counter!("mailer_emails_failed_total").increment(1);
                    tracing::error!(outbox_id = %id, attempt, reason = %failure.reason,
                        "credentials email failed for good");
                }
            }
        }
    }
    settled(mailer, claimed.job_id, school_id).await;
    Ok(Step::Done)
}

/// Resolves `grace` after `stop` turned true.
async fn stopped_for(stop: &mut watch::Receiver<bool>, grace: Duration) {
    let _ = stop.wait_for(|stopping| *stopping).await;
    tokio::time::sleep(grace).await;
}

/// Once every email of a job is settled, rewrites its cached body so that the
/// Redis fast path serves it again (until then readers go to Postgres).
async fn settled(mailer: &Mailer, job_id: Uuid, school_id: Uuid) {
    let refresh = async {
        if !outbox::job_settled(&mailer.pool, job_id).await? {
            return Ok::<_, anyhow::Error>(());
        }
        if let Some(record) = jobs::get_any(&mailer.pool, job_id).await? {
            mailer
                .results
                .refresh_cached(school_id, &record.into_view())
                .await?;
        }
        Ok(())
    };
    if let Err(error) = refresh.await {
        tracing::debug!(%job_id, %error, "could not refresh the cached job body");
    }
}

/// Delay before attempt `attempt + 1`: `base · 2^(attempt-1)`, at most an hour,
/// with ±20 % jitter so that emails that failed together do not retry together.
fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(1 << attempt.saturating_sub(1).min(20));
    let delay = exponential.min(MAX_RETRY_DELAY);
    delay.mul_f64(rand::rng().random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::transport::DELIVERY_TIMEOUT;
    use super::*;

    #[test]
    fn retry_delays_grow_exponentially_up_to_an_hour() {
        let base = Duration::from_secs(30);
        let within = |attempt: u32, expected: u64| {
            let delay = retry_delay(base, attempt).as_secs_f64();
            let expected = expected as f64;
            assert!(
                (expected * 0.8 - 0.001..=expected * 1.2 + 0.001).contains(&delay),
                "attempt {attempt}: {delay} vs {expected}"
            );
        };
        within(1, 30);
        within(2, 60);
        within(3, 120);
        within(8, 3600);
        within(40, 3600);
    }

    #[test]
    fn the_idle_limit_outlasts_a_delivery() {
        assert!(IDLE_LIMIT > DELIVERY_TIMEOUT + Duration::from_secs(10));
    }
}
