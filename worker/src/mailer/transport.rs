//! Where credentials emails go: an SMTP server (`SMTP_URL`: `smtp://host:port`,
//! `smtp://…?tls=required` for STARTTLS, `smtps://` for implicit TLS,
//! `user:password@` for AUTH), or, when `SMTP_URL` is unset, the log, with the
//! password masked. A failed delivery is classified: a recipient the server
//! refuses for good (550, 551, 553) is permanent; everything else (4xx, network,
//! timeouts, other 5xx such as a refused login, which are configuration faults
//! an operator can fix) is retried.

use std::time::Duration;

use lettre::transport::smtp::Error as SmtpError;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::message::{Letter, MASK};

/// Socket timeout of every SMTP command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of one whole delivery (connect, TLS, AUTH, envelope, data, quit).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// SMTP reply codes that reject the recipient itself: retrying cannot help.
const PERMANENT_RECIPIENT_CODES: [u16; 3] = [550, 551, 553];

/// The configured destination of credentials emails.
#[derive(Clone)]
pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `SMTP_URL` unset: write emails to the log.
    Log,
}

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub permanent: bool,
    pub reason: String,
}

impl Failure {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self {
            permanent: false,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            permanent: true,
            reason: reason.into(),
        }
    }
}

impl Transport {
    /// From `SMTP_URL`; an unusable URL is a start-up error.
    pub fn from_url(url: Option<&str>) -> Result<Self, SmtpError> {
        let Some(url) = url else {
            return Ok(Transport::Log);
        };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?
            .timeout(Some(COMMAND_TIMEOUT))
            .build();
        Ok(Transport::Smtp(transport))
    }

    /// Delivers `letter` with `password`. `Ok` means the SMTP server accepted
    /// the message (or it was logged).
    pub async fn deliver(&self, letter: &Letter, password: &str) -> Result<(), Failure> {
        match self {
            Transport::Log => {
                tracing::info!(
                    message_id = %letter.message_id(),
                    to = %letter.to,
                    subject = %letter.subject(),
                    body = %letter.plain(MASK),
                    "credentials email (SMTP_URL is unset: written to the log, not sent)"
                );
                Ok(())
            }
            Transport::Smtp(smtp) => {
                let message = letter
                    .build(password)
                    .map_err(|error| Failure::permanent(error.to_string()))?;
                match tokio::time::timeout(DELIVERY_TIMEOUT, smtp.send(message)).await {
                    Ok(Ok(_response)) => Ok(()),
                    Ok(Err(error)) => Err(classify(&error)),
                    Err(_) => Err(Failure::transient(format!(
                        "the SMTP delivery took longer than {DELIVERY_TIMEOUT:?}"
                    ))),
                }
            }
        }
    }
}

fn classify(error: &SmtpError) -> Failure {
    let reason = format!("SMTP: {error}");
    let code = error.status().map(u16::from);
    match code {
        Some(code) if PERMANENT_RECIPIENT_CODES.contains(&code) => Failure::permanent(reason),
        _ => Failure::transient(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_select_the_transport() {
        assert!(matches!(Transport::from_url(None), Ok(Transport::Log)));
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://user:secret@mail.example.org:587?tls=required",
            "smtps://mail.example.org",
        ] {
            assert!(
                matches!(Transport::from_url(Some(url)), Ok(Transport::Smtp(_))),
                "{url}"
            );
        }
        assert!(Transport::from_url(Some("http://mail.example.org")).is_err());
    }
}
