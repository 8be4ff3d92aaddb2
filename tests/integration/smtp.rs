//! A small SMTP server inside the test process, speaking just enough of RFC 5321
//! for lettre (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), recording every
//! message it accepts. Tests can make it refuse recipients (a 5xx or 4xx reply),
//! be started late on a port the app already uses (an SMTP outage), and hold the next
//! message: either swallow the DATA command without answering (the client dies
//! before the server accepted anything) or store the message and never send the
//! final 250 (the server accepted it, the client never learns it did).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// What to do with the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Never answer the DATA command; the message is not stored.
    BeforeData,
    /// Store the message, then never send the final reply.
    AfterData,
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as sent (headers and body, CRLF line ends, dots unstuffed).
    pub data: String,
}

impl Received {
    /// The first header of that name (unfolded), without the name.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut found: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(value) = found.as_mut() {
                    value.push_str(line.trim_start());
                    continue;
                }
            } else if found.is_some() {
                break;
            }
            if let Some((field, value)) = line.split_once(':')
                && field.eq_ignore_ascii_case(name)
            {
                found = Some(value.trim().to_string());
            }
        }
        found
    }

    pub fn message_id(&self) -> String {
        self.header("Message-ID").unwrap_or_default()
    }

    /// The decoded body of the first part with this content type (`text/plain`,
    /// `text/html`).
    pub fn part(&self, content_type: &str) -> Option<String> {
        for chunk in self.data.split("\r\n--") {
            let Some((head, body)) = chunk.split_once("\r\n\r\n") else {
                continue;
            };
            let head_lower = head.to_ascii_lowercase();
            if !head_lower.contains(&format!("content-type: {content_type}")) {
                continue;
            }
            let body = body.trim_end_matches("\r\n");
            return Some(
                if head_lower.contains("content-transfer-encoding: base64") {
                    let joined: String = body.split_whitespace().collect();
                    String::from_utf8(
                        base64::engine::general_purpose::STANDARD
                            .decode(joined)
                            .expect("base64 body"),
                    )
                    .expect("UTF-8 body")
                } else if head_lower.contains("content-transfer-encoding: quoted-printable") {
                    decode_quoted_printable(body)
                } else {
                    body.to_string()
                },
            );
        }
        None
    }

    /// The temporary password of a credentials email (from its text part).
    pub fn password(&self) -> String {
        let text = self.part("text/plain").expect("a text/plain part");
        text.lines()
            .find_map(|line| line.strip_prefix("Temporary password: "))
            .unwrap_or_else(|| panic!("no password line in {text}"))
            .trim()
            .to_string()
    }
}

fn decode_quoted_printable(body: &str) -> String {
    let joined = body.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'='
            && let Some(hex) = joined.get(index + 1..index + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8(out).expect("UTF-8 body")
}

#[derive(Default)]
struct State {
    messages: Mutex<Vec<Received>>,
    hold: Mutex<Option<Hold>>,
    held: Mutex<usize>,
    /// Recipient → reply line, e.g. "550 5.1.1 no such user".
    refuse: Mutex<HashMap<String, String>>,
    changed: Notify,
}

/// A running (or stopped) test SMTP server.
pub struct SmtpServer {
    pub port: u16,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

/// A port that nothing listens on (for an SMTP server that is down).
pub async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

impl SmtpServer {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Listens on `port` (0: any free one).
    pub async fn start_on(port: u16) -> Self {
        let mut server = Self {
            port,
            state: Arc::new(State::default()),
            task: None,
        };
        server.listen().await;
        server
    }

    /// `smtp://127.0.0.1:<port>` (plain SMTP, no TLS, no AUTH).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops listening and drops every open connection (an outage).
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn listen(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(format!("127.0.0.1:{}", self.port).parse().unwrap())
            .unwrap_or_else(|error| panic!("bind SMTP port {}: {error}", self.port));
        let listener = socket.listen(64).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let state = self.state.clone();
        self.task = Some(tokio::spawn(async move {
            let mut sessions = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                sessions.spawn(session(stream, state.clone()));
                while sessions.try_join_next().is_some() {}
            }
        }));
    }

    /// Holds the next message (one-shot).
    pub fn hold_next(&self, hold: Hold) {
        *self.state.hold.lock().unwrap() = Some(hold);
    }

    /// Answers RCPT for `address` with `reply` (e.g. `550 5.1.1 no such user`).
    pub fn refuse(&self, address: &str, reply: &str) {
        self.state
            .refuse
            .lock()
            .unwrap()
            .insert(address.to_string(), reply.to_string());
    }

    /// Every message accepted so far.
    pub fn messages(&self) -> Vec<Received> {
        self.state.messages.lock().unwrap().clone()
    }

    /// Waits until at least `count` messages were accepted; returns them all.
    pub async fn wait_for_messages(&self, count: usize, limit: Duration) -> Vec<Received> {
        self.wait_until(limit, || self.messages().len() >= count)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "wanted {count} messages, got {} within {limit:?}",
                    self.messages().len()
                )
            });
        self.messages()
    }

    /// Waits until a message has been held.
    pub async fn wait_for_held(&self, limit: Duration) {
        self.wait_until(limit, || *self.state.held.lock().unwrap() > 0)
            .await
            .unwrap_or_else(|| panic!("no message was held within {limit:?}"));
    }

    async fn wait_until(&self, limit: Duration, done: impl Fn() -> bool) -> Option<()> {
        let deadline = Instant::now() + limit;
        loop {
            let changed = self.state.changed.notified();
            if done() {
                return Some(());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), changed).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One SMTP session.
async fn session(stream: TcpStream, state: Arc<State>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    if !reply(&mut write, "220 test-smtp ESMTP\r\n").await {
        return;
    }
    let mut mail_from = String::new();
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_string();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let answer = match verb.as_str() {
            "EHLO" => "250-test-smtp\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".to_string(),
            "HELO" => "250 test-smtp\r\n".to_string(),
            "MAIL" => {
                mail_from = address_in(&command);
                rcpt_to.clear();
                "250 2.1.0 OK\r\n".to_string()
            }
            "RCPT" => {
                let address = address_in(&command);
                let refused = state.refuse.lock().unwrap().get(&address).cloned();
                match refused {
                    Some(refusal) => format!("{refusal}\r\n"),
                    None => {
                        rcpt_to.push(address);
                        "250 2.1.5 OK\r\n".to_string()
                    }
                }
            }
            "DATA" => {
                let hold = state.hold.lock().unwrap().take();
                if hold == Some(Hold::BeforeData) {
                    held(&state);
                    drain(&mut lines).await;
                    return;
                }
                if !reply(&mut write, "354 end with <CRLF>.<CRLF>\r\n").await {
                    return;
                }
                let Some(data) = read_data(&mut lines).await else {
                    return;
                };
                state.messages.lock().unwrap().push(Received {
                    mail_from: mail_from.clone(),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    data,
                });
                state.changed.notify_waiters();
                if hold == Some(Hold::AfterData) {
                    held(&state);
                    drain(&mut lines).await;
                    return;
                }
                "250 2.0.0 queued\r\n".to_string()
            }
            "RSET" => {
                mail_from.clear();
                rcpt_to.clear();
                "250 2.0.0 OK\r\n".to_string()
            }
            "NOOP" => "250 2.0.0 OK\r\n".to_string(),
            "QUIT" => {
                let _ = reply(&mut write, "221 2.0.0 bye\r\n").await;
                return;
            }
            _ => "502 5.5.2 command not implemented\r\n".to_string(),
        };
        if !reply(&mut write, &answer).await {
            return;
        }
    }
}

async fn reply(write: &mut tokio::net::tcp::OwnedWriteHalf, text: &str) -> bool {
    write.write_all(text.as_bytes()).await.is_ok()
}

fn held(state: &State) {
    *state.held.lock().unwrap() += 1;
    state.changed.notify_waiters();
}

/// Reads (and ignores) until the client goes away.
async fn drain(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) {
    let mut sink = [0u8; 1024];
    while matches!(lines.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// The `<address>` of a MAIL FROM / RCPT TO command.
fn address_in(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_string())
        .unwrap_or_default()
}

/// The message after DATA, up to the lone dot; dot-unstuffed.
async fn read_data(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == ".\r\n" || line == ".\n" {
            return Some(data);
        }
        let unstuffed = line.strip_prefix('.').unwrap_or(&line);
        data.push_str(unstuffed);
    }
}
