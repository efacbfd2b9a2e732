//! A real SMTP server on `127.0.0.1` for the email notifier's tests: it speaks enough of
//! RFC 5321 for lettre (EHLO, AUTH PLAIN and LOGIN, MAIL, RCPT, DATA with dot-unstuffing,
//! RSET, NOOP, QUIT), records every message it accepts, and can fail the ways relays do
//! (421 on connect, 451 after DATA, a rejected recipient, silence after the greeting).
//!
//! It is also a verifier: every command out of order, line without CRLF, over-long line,
//! 8-bit octet the server did not allow, or mail that is not a valid RFC 5322 message
//! (missing From/To/Subject/Date/Message-ID, a body that does not decode as UTF-8) is a
//! violation. Violations are answered with an error, and [`SmtpServer::received`] and
//! dropping the server both fail the test when any were seen.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The longest line RFC 5321 allows in a command or in message text, CRLF included.
const MAX_LINE: usize = 1000;

/// The longest header line RFC 5322 allows, CRLF excluded.
const MAX_HEADER_LINE: usize = 998;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The only user and password AUTH accepts; `None` accepts no AUTH and needs none.
    /// When set, MAIL without AUTH is refused with 530.
    pub credentials: Option<(String, String)>,
    /// The mechanisms EHLO advertises.
    pub mechanisms: &'static str,
    /// A recipient refused with 550 at RCPT.
    pub reject_recipient: Option<String>,
    pub failure: Option<Failure>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            credentials: None,
            mechanisms: "PLAIN LOGIN",
            reject_recipient: None,
            failure: None,
        }
    }
}

/// A relay's way of failing, on every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `421` instead of the greeting, then close.
    BusyOnConnect,
    /// `451` after the message's final dot, recording nothing.
    FailAfterData,
    /// The greeting, then never another answer.
    Hang,
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope: MAIL FROM and every accepted RCPT TO, without angle brackets.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Who authenticated on the session, if anyone.
    pub user: Option<String>,
    /// The message as sent after DATA, dot-unstuffed, without the final dot.
    pub data: String,
    /// The message parsed and decoded.
    pub mail: Mail,
}

/// A received message: unfolded headers and the decoded body.
#[derive(Debug, Clone)]
pub struct Mail {
    headers: Vec<(String, String)>,
    /// The body after undoing its Content-Transfer-Encoding.
    pub body: String,
}

impl Mail {
    /// The value of the first header called `name` (case-insensitive), unfolded, raw.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The subject with its RFC 2047 encoded words decoded.
    pub fn subject(&self) -> String {
        decode_words(self.header("Subject").unwrap_or_default()).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Log {
    received: Vec<Received>,
    /// The verb of every command, in order, over all sessions.
    commands: Vec<String>,
    violations: Vec<String>,
    connections: usize,
}

/// A running server; stops accepting and closes its connections when dropped.
pub struct SmtpServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl SmtpServer {
    /// Starts a server on an ephemeral loopback port.
    pub async fn start(setup: Setup) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = Arc::clone(&log);
        let setup = Arc::new(setup);
        let task = tokio::spawn(async move {
            // Sessions live in this set, so that dropping the server closes them too.
            let mut sessions = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().unwrap().connections += 1;
                sessions.spawn(session(stream, Arc::clone(&setup), Arc::clone(&shared)));
            }
        });
        SmtpServer { addr, log, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every accepted message so far. Fails the test if the server saw a violation.
    pub fn received(&self) -> Vec<Received> {
        let log = self.log.lock().unwrap();
        assert!(
            log.violations.is_empty(),
            "the SMTP server saw violations: {:#?}",
            log.violations
        );
        log.received.clone()
    }

    /// The verb of every command received (`EHLO`, `AUTH`, ...), in order.
    pub fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().commands.clone()
    }

    /// How many connections the server accepted.
    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().connections
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
        let violations = std::mem::take(&mut self.log.lock().unwrap().violations);
        if std::thread::panicking() {
            // A second panic would abort; say what the server saw, which likely explains
            // the first.
            if !violations.is_empty() {
                eprintln!("the SMTP server saw violations: {violations:#?}");
            }
            return;
        }
        assert!(
            violations.is_empty(),
            "the SMTP server saw violations: {violations:#?}"
        );
    }
}

/// The state of one SMTP session.
#[derive(Default)]
struct Session {
    greeted: bool,
    user: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

impl Session {
    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }
}

/// What a read line turned out to be.
enum Line {
    Text(String),
    Closed,
}

struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    log: Arc<Mutex<Log>>,
}

impl Conn {
    fn violation(&self, what: impl Into<String>) {
        self.log.lock().unwrap().violations.push(what.into());
    }

    async fn reply(&mut self, text: &str) -> bool {
        self.writer
            .write_all(format!("{text}\r\n").as_bytes())
            .await
            .is_ok()
    }

    /// One line without its CRLF. A line that does not end in CRLF, is too long or holds
    /// anything but 7-bit ASCII is a violation (no 8BITMIME or SMTPUTF8 is offered).
    async fn line(&mut self) -> Line {
        let mut raw = Vec::new();
        let mut limited = (&mut self.reader).take(64 * 1024);
        match limited.read_until(b'\n', &mut raw).await {
            Ok(0) | Err(_) => return Line::Closed,
            Ok(_) => {}
        }
        let text = if let Some(text) = raw.strip_suffix(b"\r\n") {
            text
        } else {
            self.violation(format!(
                "line not ended by CRLF: {:?}",
                String::from_utf8_lossy(&raw)
            ));
            raw.strip_suffix(b"\n").unwrap_or(&raw)
        };
        if raw.len() > MAX_LINE {
            self.violation(format!("line of {} octets with CRLF", raw.len()));
        }
        if text.contains(&b'\r') {
            self.violation("bare CR inside a line");
        }
        if !text.is_ascii() {
            self.violation(format!(
                "8-bit octets without 8BITMIME: {:?}",
                String::from_utf8_lossy(text)
            ));
        }
        Line::Text(String::from_utf8_lossy(text).into_owned())
    }
}

async fn session(stream: TcpStream, setup: Arc<Setup>, log: Arc<Mutex<Log>>) {
    let (read, writer) = stream.into_split();
    let mut conn = Conn {
        reader: BufReader::new(read),
        writer,
        log,
    };
    if setup.failure == Some(Failure::BusyOnConnect) {
        conn.reply("421 4.3.2 rearguard-test service not available, closing")
            .await;
        return;
    }
    if !conn.reply("220 rearguard-test ESMTP ready").await {
        return;
    }
    if setup.failure == Some(Failure::Hang) {
        // Reads until the client gives up; never answers.
        drain(&mut conn.reader).await;
        return;
    }
    let mut state = Session::default();
    loop {
        let Line::Text(line) = conn.line().await else {
            return;
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim().to_owned()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        conn.log.lock().unwrap().commands.push(verb.clone());
        let open = match verb.as_str() {
            "EHLO" | "HELO" => ehlo(&mut conn, &mut state, &setup, &verb, &arg).await,
            "AUTH" => auth(&mut conn, &mut state, &setup, &arg).await,
            "MAIL" => mail(&mut conn, &mut state, &setup, &arg).await,
            "RCPT" => rcpt(&mut conn, &mut state, &setup, &arg).await,
            "DATA" => data(&mut conn, &mut state, &setup).await,
            "RSET" => {
                state.reset();
                conn.reply("250 2.0.0 ok").await
            }
            "NOOP" => conn.reply("250 2.0.0 ok").await,
            "QUIT" => {
                conn.reply("221 2.0.0 bye").await;
                return;
            }
            _ => {
                conn.violation(format!("unknown command: {line:?}"));
                conn.reply("500 5.5.2 command not recognized").await
            }
        };
        if !open {
            return;
        }
    }
}

async fn drain(reader: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn ehlo(conn: &mut Conn, state: &mut Session, setup: &Setup, verb: &str, arg: &str) -> bool {
    if arg.is_empty() {
        conn.violation(format!("{verb} without a domain"));
        return conn.reply("501 5.5.4 domain required").await;
    }
    state.greeted = true;
    state.reset();
    if verb == "HELO" {
        return conn.reply("250 rearguard-test").await;
    }
    conn.reply(&format!(
        "250-rearguard-test greets {arg}\r\n250-SIZE 10485760\r\n250 AUTH {}",
        setup.mechanisms
    ))
    .await
}

async fn auth(conn: &mut Conn, state: &mut Session, setup: &Setup, arg: &str) -> bool {
    if !state.greeted || state.user.is_some() || state.mail_from.is_some() {
        conn.violation("AUTH before EHLO, twice, or within a transaction");
        return conn.reply("503 5.5.1 bad sequence of commands").await;
    }
    let (mechanism, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_owned())),
        None => (arg.to_ascii_uppercase(), None),
    };
    if !setup.mechanisms.split(' ').any(|m| m == mechanism) {
        conn.violation(format!("AUTH with a mechanism not offered: {mechanism}"));
        return conn.reply("504 5.5.4 mechanism not supported").await;
    }
    let given = match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(r) => r,
                None => match challenge(conn, "").await {
                    Some(r) => r,
                    None => return false,
                },
            };
            let decoded = decode_b64_text(&response);
            // authzid NUL authcid NUL passwd
            decoded.and_then(|d| {
                let mut parts = d.split('\0');
                let (_authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
                parts
                    .next()
                    .is_none()
                    .then(|| (user.to_owned(), password.to_owned()))
            })
        }
        _ => {
            let user = match initial {
                Some(r) => Some(r),
                None => challenge(conn, &B64.encode("Username:")).await,
            };
            let Some(user) = user else { return false };
            let Some(password) = challenge(conn, &B64.encode("Password:")).await else {
                return false;
            };
            decode_b64_text(&user).zip(decode_b64_text(&password))
        }
    };
    let Some((user, password)) = given else {
        conn.violation("AUTH response that is not base64 of the mechanism's format");
        return conn.reply("501 5.5.2 cannot decode the response").await;
    };
    match &setup.credentials {
        Some((u, p)) if *u == user && *p == password => {
            state.user = Some(user);
            conn.reply("235 2.7.0 authentication successful").await
        }
        // Some relays echo what they were sent; the notifier must not pass it on.
        _ => {
            conn.reply(&format!(
                "535 5.7.8 authentication credentials invalid for {user} with {password}"
            ))
            .await
        }
    }
}

/// Sends a `334` challenge and reads the client's answer.
async fn challenge(conn: &mut Conn, text: &str) -> Option<String> {
    if !conn.reply(&format!("334 {text}")).await {
        return None;
    }
    match conn.line().await {
        Line::Text(t) => Some(t),
        Line::Closed => None,
    }
}

fn decode_b64_text(text: &str) -> Option<String> {
    String::from_utf8(B64.decode(text.trim()).ok()?).ok()
}

/// The address in `FROM:<a@b> PARAMS` or `TO:<a@b>`, after the given prefix.
fn path<'a>(arg: &'a str, prefix: &str) -> Option<&'a str> {
    if !arg.get(..prefix.len())?.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(&inner[..end])
}

async fn mail(conn: &mut Conn, state: &mut Session, setup: &Setup, arg: &str) -> bool {
    if !state.greeted || state.mail_from.is_some() {
        conn.violation("MAIL before EHLO or within a transaction");
        return conn.reply("503 5.5.1 bad sequence of commands").await;
    }
    if setup.credentials.is_some() && state.user.is_none() {
        conn.violation("MAIL without AUTH on a relay that requires it");
        return conn.reply("530 5.7.0 authentication required").await;
    }
    let Some(from) = path(arg, "FROM:") else {
        conn.violation(format!("malformed MAIL: {arg:?}"));
        return conn.reply("501 5.5.4 syntax: MAIL FROM:<address>").await;
    };
    state.mail_from = Some(from.to_owned());
    conn.reply("250 2.1.0 ok").await
}

async fn rcpt(conn: &mut Conn, state: &mut Session, setup: &Setup, arg: &str) -> bool {
    if state.mail_from.is_none() {
        conn.violation("RCPT before MAIL");
        return conn.reply("503 5.5.1 need MAIL first").await;
    }
    let Some(to) = path(arg, "TO:") else {
        conn.violation(format!("malformed RCPT: {arg:?}"));
        return conn.reply("501 5.5.4 syntax: RCPT TO:<address>").await;
    };
    if setup.reject_recipient.as_deref() == Some(to) {
        return conn
            .reply(&format!("550 5.1.1 <{to}>: mailbox unavailable"))
            .await;
    }
    state.rcpt_to.push(to.to_owned());
    conn.reply("250 2.1.5 ok").await
}

async fn data(conn: &mut Conn, state: &mut Session, setup: &Setup) -> bool {
    if state.rcpt_to.is_empty() {
        conn.violation("DATA without an accepted recipient");
        return conn.reply("503 5.5.1 need RCPT first").await;
    }
    if !conn.reply("354 end data with <CR><LF>.<CR><LF>").await {
        return false;
    }
    let mut data = String::new();
    loop {
        let Line::Text(line) = conn.line().await else {
            conn.violation("connection closed within DATA");
            return false;
        };
        if line == "." {
            break;
        }
        // Dot-unstuffing (RFC 5321 section 4.5.2).
        let line = line.strip_prefix('.').unwrap_or(&line);
        data.push_str(line);
        data.push_str("\r\n");
    }
    let mail_from = state.mail_from.take().unwrap_or_default();
    let rcpt_to = std::mem::take(&mut state.rcpt_to);
    let mail = match parse_mail(&data) {
        Ok(mail) => mail,
        Err(problems) => {
            let first = problems[0].clone();
            for p in problems {
                conn.violation(p);
            }
            return conn
                .reply(&format!("554 5.6.0 message is not valid: {first}"))
                .await;
        }
    };
    if setup.failure == Some(Failure::FailAfterData) {
        return conn
            .reply("451 4.3.0 local error in processing, try again later")
            .await;
    }
    let n = {
        let mut log = conn.log.lock().unwrap();
        log.received.push(Received {
            mail_from,
            rcpt_to,
            user: state.user.clone(),
            data,
            mail,
        });
        log.received.len()
    };
    conn.reply(&format!("250 2.0.0 ok: queued as M{n}")).await
}

/// Parses and checks one message (RFC 5322 and MIME): CRLF line endings, header lines
/// within 998 octets, the required headers once each, and a body that decodes as UTF-8.
/// Returns every problem found.
pub fn parse_mail(data: &str) -> Result<Mail, Vec<String>> {
    let mut problems = Vec::new();
    let bytes = data.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let crlf = match b {
            b'\r' => bytes.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && bytes[i - 1] == b'\r',
            _ => true,
        };
        if !crlf {
            problems.push(format!("bare CR or LF at octet {i}"));
            break;
        }
    }
    let Some((head, body)) = data.split_once("\r\n\r\n") else {
        problems.push("no empty line between header and body".to_owned());
        return Err(problems);
    };

    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.len() > MAX_HEADER_LINE {
            let name = line.split(':').next().unwrap_or_default();
            problems.push(format!("header line of {} octets ({name})", line.len()));
        }
        if line.starts_with([' ', '\t']) {
            match headers.last_mut() {
                Some((_, value)) => value.push_str(line),
                None => problems.push("continuation line before any header".to_owned()),
            }
            continue;
        }
        match line.split_once(':') {
            Some((name, value))
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
            _ => problems.push(format!("malformed header line: {line:?}")),
        }
    }
    let count = |name: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    };
    for name in ["From", "To", "Subject", "Date", "Message-ID"] {
        match count(name) {
            1 => {}
            n => problems.push(format!("{n} {name} headers, expected one")),
        }
    }
    let mail = Mail {
        headers,
        body: String::new(),
    };
    if let Some(date) = mail.header("Date") {
        let format = regex::Regex::new(
            r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} ([+-]\d{4}|GMT)$",
        )
        .unwrap();
        if !format.is_match(date) {
            problems.push(format!("Date is not an RFC 5322 date: {date:?}"));
        }
    }
    for name in ["Message-ID", "In-Reply-To", "References"] {
        if let Some(id) = mail.header(name) {
            let ok = id.split_whitespace().all(|id| {
                id.starts_with('<')
                    && id.ends_with('>')
                    && id.matches('@').count() == 1
                    && !id[1..id.len() - 1].contains(['<', '>', ' '])
            });
            if !ok {
                problems.push(format!("{name} is not a list of <left@right> ids: {id:?}"));
            }
        }
    }
    if let Some(subject) = mail.header("Subject")
        && decode_words(subject).is_none()
    {
        problems.push(format!("Subject does not decode as UTF-8: {subject:?}"));
    }
    let encoding = mail
        .header("Content-Transfer-Encoding")
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    if mail.header("Content-Transfer-Encoding").is_some()
        && mail.header("MIME-Version") != Some("1.0")
    {
        problems.push("Content-Transfer-Encoding without MIME-Version: 1.0".to_owned());
    }
    let decoded = match encoding.as_str() {
        "7bit" | "8bit" => Some(body.as_bytes().to_vec()),
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => B64.decode(body.replace("\r\n", "")).ok(),
        other => {
            problems.push(format!("unknown Content-Transfer-Encoding {other:?}"));
            None
        }
    };
    let body = match decoded.map(String::from_utf8) {
        Some(Ok(text)) => text,
        Some(Err(_)) => {
            problems.push("body does not decode as UTF-8".to_owned());
            String::new()
        }
        None => {
            problems.push(format!("body is not valid {encoding}"));
            String::new()
        }
    };
    if problems.is_empty() {
        Ok(Mail { body, ..mail })
    } else {
        Err(problems)
    }
}

/// Undoes quoted-printable (RFC 2045 section 6.7): `=XX` octets and `=` soft breaks.
fn decode_quoted_printable(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.split("\r\n").collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim_end_matches([' ', '\t']);
        let (line, soft) = match line.strip_suffix('=') {
            Some(l) => (l, true),
            None => (line, false),
        };
        let bytes = line.as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            if bytes[j] == b'=' {
                let hex = line.get(j + 1..j + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                j += 3;
            } else {
                out.push(bytes[j]);
                j += 1;
            }
        }
        if !soft && i + 1 < lines.len() {
            out.extend_from_slice(b"\r\n");
        }
    }
    Some(out)
}

/// Decodes the RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`) of a header
/// value; white space between adjacent encoded words is dropped. `None` when a word is
/// malformed or the result is not UTF-8.
pub fn decode_words(value: &str) -> Option<String> {
    let mut out: Vec<u8> = Vec::new();
    let mut rest = value;
    let mut after_word = false;
    while !rest.is_empty() {
        let Some(start) = rest.find("=?") else {
            out.extend_from_slice(rest.as_bytes());
            break;
        };
        let (before, word) = rest.split_at(start);
        if !(after_word && before.chars().all(char::is_whitespace)) {
            out.extend_from_slice(before.as_bytes());
        }
        let inner = &word[2..];
        let mut parts = inner.splitn(3, '?');
        let charset = parts.next()?;
        let encoding = parts.next()?;
        let tail = parts.next()?;
        let end = tail.find("?=")?;
        let payload = &tail[..end];
        if !charset.eq_ignore_ascii_case("utf-8") {
            return None;
        }
        match encoding {
            "b" | "B" => out.extend(B64.decode(payload).ok()?),
            "q" | "Q" => {
                let bytes = payload.as_bytes();
                let mut j = 0;
                while j < bytes.len() {
                    match bytes[j] {
                        b'_' => {
                            out.push(b' ');
                            j += 1;
                        }
                        b'=' => {
                            out.push(u8::from_str_radix(payload.get(j + 1..j + 3)?, 16).ok()?);
                            j += 3;
                        }
                        b => {
                            out.push(b);
                            j += 1;
                        }
                    }
                }
            }
            _ => return None,
        }
        rest = &tail[end + 2..];
        after_word = true;
    }
    String::from_utf8(out).ok()
}

#[test]
fn the_verifier_catches_broken_messages() {
    let good = "From: a@example.com\r\nTo: b@example.com\r\nSubject: =?utf-8?b?w6k=?= =?utf-8?q?_x?=\r\nDate: Tue, 15 Nov 1994 08:12:31 +0000\r\nMessage-ID: <1@x>\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nA=C3=A9=\r\nB\r\n";
    let mail = parse_mail(good).expect("a valid message");
    assert_eq!(mail.subject(), "é x");
    assert_eq!(mail.body, "AéB\r\n");

    let broken = [
        good.replace("Date: Tue, 15 Nov 1994 08:12:31 +0000\r\n", ""),
        good.replace("\r\nB", "\nB"),
        good.replace("A=C3=A9", "A=C3"),
        good.replace("<1@x>", "1@x"),
        good.replace("Subject: ", &format!("Subject: {}", "x".repeat(1000))),
    ];
    for data in broken {
        assert!(parse_mail(&data).is_err(), "{data}");
    }
}
