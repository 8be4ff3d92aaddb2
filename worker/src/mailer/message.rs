//! The credentials email itself: plain text and HTML alternatives, sent in the
//! school's name, with the login (the student's email address) and the temporary
//! password. Its `Message-ID` is derived from the outbox row, so every copy of one
//! row's email — a resend after a crash included — carries the same id.

use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use uuid::Uuid;

/// What is shown instead of the password when an email is written to the log.
pub const MASK: &str = "********";

/// One credentials email, before the password is filled in.
#[derive(Debug, Clone)]
pub struct Letter {
    pub outbox_id: Uuid,
    pub school_name: String,
    /// Sender address (`MAIL_FROM`); the display name is the school's.
    pub from: String,
    /// The student's email address: the recipient and the login.
    pub to: String,
    pub student_name: String,
    pub new_password_needed: bool,
}

/// The email could not be built (an address lettre refuses): retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("the email could not be built: {0}")]
pub struct BuildError(String);

impl Letter {
    /// `<credentials-{outbox id}@studentsync>`: the same for every attempt.
    pub fn message_id(&self) -> String {
        message_id(self.outbox_id)
    }

    pub fn subject(&self) -> String {
        format!("Your {} account", self.school_name)
    }

    /// The plain-text body.
    pub fn plain(&self, password: &str) -> String {
        let mut text = format!(
            "Hello {name},\n\n\
             {school} has created an account for you.\n\n\
             Login: {login}\n\
             Temporary password: {password}\n\n",
            name = self.student_name,
            school = self.school_name,
            login = self.to,
        );
        if self.new_password_needed {
            text.push_str("You will be asked to choose a new password when you first log in.\n\n");
        }
        text.push_str(&format!(
            "Keep this password to yourself. If you did not expect this email,\n\
             please contact {school}.\n\n{school}\n",
            school = self.school_name
        ));
        text
    }

    /// The HTML body (every inserted value escaped).
    pub fn html(&self, password: &str) -> String {
        let school = escape(&self.school_name);
        let mut html = format!(
            "<!DOCTYPE html>\n<html><body>\n\
             <p>Hello {name},</p>\n\
             <p>{school} has created an account for you.</p>\n\
             <p>Login: <strong>{login}</strong><br>\n\
             Temporary password: <code>{password}</code></p>\n",
            name = escape(&self.student_name),
            login = escape(&self.to),
            password = escape(password),
        );
        if self.new_password_needed {
            html.push_str(
                "<p>You will be asked to choose a new password when you first log in.</p>\n",
            );
        }
        html.push_str(&format!(
            "<p>Keep this password to yourself. If you did not expect this email, \
             please contact {school}.</p>\n<p>{school}</p>\n</body></html>\n"
        ));
        html
    }

    /// The MIME message (multipart/alternative: text, then HTML).
    pub fn build(&self, password: &str) -> Result<Message, BuildError> {
        let from = self
            .from
            .parse()
            .map_err(|error| BuildError(format!("sender {:?}: {error}", self.from)))?;
        let to = self
            .to
            .parse()
            .map_err(|error| BuildError(format!("recipient address: {error}")))?;
        Message::builder()
            .from(Mailbox::new(Some(self.school_name.clone()), from))
            .to(Mailbox::new(Some(self.student_name.clone()), to))
            .subject(self.subject())
            .message_id(Some(self.message_id()))
            .multipart(MultiPart::alternative_plain_html(
                self.plain(password),
                self.html(password),
            ))
            .map_err(|error| BuildError(error.to_string()))
    }
}

/// The `Message-ID` of the credentials email of outbox row `outbox_id`.
pub fn message_id(outbox_id: Uuid) -> String {
    format!("<credentials-{outbox_id}@studentsync>")
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(new_password_needed: bool) -> Letter {
        Letter {
            outbox_id: Uuid::nil(),
            school_name: "Lycée <Curie> & Co".into(),
            from: "no-reply@studentsync.invalid".into(),
            to: "ada@example.edu".into(),
            student_name: "Ada Lovelace".into(),
            new_password_needed,
        }
    }

    #[test]
    fn bodies_carry_login_password_and_the_school() {
        let letter = letter(true);
        let plain = letter.plain("Secret42Secret42");
        assert!(plain.contains("Login: ada@example.edu"));
        assert!(plain.contains("Temporary password: Secret42Secret42"));
        assert!(plain.contains("Lycée <Curie> & Co has created an account"));
        assert!(plain.contains("choose a new password"));
        let html = letter.html("Secret42Secret42");
        assert!(html.contains("<code>Secret42Secret42</code>"));
        assert!(html.contains("Lycée &lt;Curie&gt; &amp; Co"));
        assert!(html.contains("choose a new password"));
    }

    #[test]
    fn the_new_password_line_only_when_needed() {
        let letter = letter(false);
        assert!(!letter.plain("x").contains("new password"));
        assert!(!letter.html("x").contains("new password"));
    }

    #[test]
    fn the_message_has_both_parts_and_a_stable_id() {
        let letter = letter(true);
        let raw = String::from_utf8(letter.build("Secret42Secret42").unwrap().formatted()).unwrap();
        assert!(
            raw.contains(
                "Message-ID: <credentials-00000000-0000-0000-0000-000000000000@studentsync>"
            ),
            "{raw}"
        );
        assert!(raw.contains("multipart/alternative"));
        assert!(raw.contains("text/plain"));
        assert!(raw.contains("text/html"));
        assert_eq!(letter.message_id(), message_id(Uuid::nil()));
    }

    #[test]
    fn a_bad_address_is_a_build_error() {
        let mut letter = letter(false);
        letter.to = "not an address".into();
        assert!(letter.build("x").is_err());
    }
}
