//! The submission path (587 and 465), where reply-alls come from: mail clients authenticate.
//! The proxy (its certificate from the test CA, `ca.sh`) sits in front of a Postfix that offers
//! STARTTLS and Cyrus SASL AUTH and relays only for authenticated clients
//! (`postfix-sasl.sh`); the proxy reaches it with `[upstream] tls = "starttls"`, verifying its
//! certificate against that Postfix's CA, and passes the real client with XCLIENT. AUTH is
//! offered to clients only inside TLS and relayed in lockstep: Postfix checks the password.
//! Clients: swaks (PLAIN, LOGIN, CRAM-MD5, STARTTLS and implicit TLS) and a raw socket, plain
//! or with rustls verifying the proxy's certificate.

use super::{LIST, original, reply_all, storm_policy, tags};
use crate::support::clients::{swaks, text};
use crate::support::peers::{PostfixSasl, TestCa};
use crate::support::stormbreaker::Stormbreaker;
use crate::support::wait::PATIENCE;
use crate::support::{Sink, token, wait_for};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use tokio_rustls::rustls;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";
/// What Postfix's Received header says of a client that authenticated as [`USER`], with the
/// realm it adds to a login without one (`smtpd_sasl_local_domain`).
const AUTHENTICATED: &str = "(Authenticated sender: alice@submission.corp.test)";
/// The name on the proxy's certificate (and not on Postfix's): a client that verifies it
/// knows it talks to the proxy.
const PROXY_NAME: &str = "submission.sb.test";

struct World {
    sink: Sink,
    postfix: PostfixSasl,
    ca: TestCa,
    /// STARTTLS, as on port 587.
    starttls: Stormbreaker,
    /// Implicit TLS, as on port 465.
    implicit: Stormbreaker,
}

/// `[upstream]` keys as README.md's submission setup has them: STARTTLS to the SASL Postfix,
/// its certificate checked against its CA for the name it carries (the address is
/// 127.0.0.1), the real client passed with XCLIENT.
fn upstream_tls(postfix: &PostfixSasl) -> String {
    format!(
        "tls = \"starttls\"\ntls_ca = \"{}\"\ntls_name = \"localhost\"\npass_client = true",
        postfix.ca().display()
    )
}

/// A submission proxy in front of the world's Postfix; `policy` after every section.
fn submission_proxy(postfix: &PostfixSasl, ca: &TestCa, tls: &str, policy: &str) -> Stormbreaker {
    Stormbreaker::proxy_with(
        postfix.port(),
        &format!("{}\ntls = \"{tls}\"", ca.proxy_keys()),
        &upstream_tls(postfix),
        policy,
    )
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let sink = Sink::start();
        // As README.md's submission entry: TLS required before anything but EHLO, and
        // XCLIENT from the proxy, so that Postfix's restrictions and logs see the real client.
        let postfix = PostfixSasl::start(
            sink.port(),
            USER,
            PASSWORD,
            "smtpd_tls_security_level = encrypt\nsmtpd_authorized_xclient_hosts = 127.0.0.0/8",
        );
        postfix.0.stop_at_exit();
        let ca = TestCa::new(&[PROXY_NAME]);
        ca.remove_at_exit();
        let starttls = submission_proxy(&postfix, &ca, "starttls", "");
        starttls.kill_at_exit();
        let implicit = submission_proxy(&postfix, &ca, "implicit", "");
        implicit.kill_at_exit();
        World {
            sink,
            postfix,
            ca,
            starttls,
            implicit,
        }
    })
}

/// A raw SMTP client over any byte stream: plain TCP, or TLS after STARTTLS.
struct Client<S: Read + Write> {
    io: BufReader<S>,
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl<S: Read + Write> Client<S> {
    fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).expect("write");
        self.io.get_mut().flush().expect("flush");
    }

    /// One complete reply (all lines), or "" on EOF.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.io.read_line(&mut line) {
                Ok(0) | Err(_) => return all,
                Ok(_) => {}
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// MAIL, RCPTs, DATA and `content`; the reply to the final dot (or the first refusal).
    fn message(&mut self, from: &str, rcpts: &[&str], content: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        if !r.starts_with("250") {
            return r;
        }
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            if !r.starts_with("250") {
                self.cmd("RSET");
                return r;
            }
        }
        let r = self.cmd("DATA");
        if !r.starts_with("354") {
            return r;
        }
        self.send(format!("{content}.\r\n").as_bytes());
        self.reply()
    }
}

/// rustls trusting only the test CA the proxy's certificate comes from.
fn tls_config(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca.ca()).expect("the CA file") {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// TLS over `tcp`, the proxy's certificate verified for [`PROXY_NAME`]; the handshake is
/// completed here so that a bad certificate fails here.
fn wrap(tcp: TcpStream, ca: &TestCa) -> Client<Tls> {
    let name = rustls_pki_types::ServerName::try_from(PROXY_NAME).unwrap();
    let conn = rustls::ClientConnection::new(tls_config(ca), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("TLS handshake with the proxy");
    }
    Client {
        io: BufReader::new(tls),
    }
}

fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Plain text: greeting, EHLO; returns the client and the EHLO reply.
fn plain(port: u16) -> (Client<TcpStream>, String) {
    let mut c = Client {
        io: BufReader::new(tcp(port)),
    };
    let greeting = c.reply();
    assert!(greeting.starts_with("220"), "{greeting}");
    let ehlo = c.cmd("EHLO plain.client.test");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    (c, ehlo)
}

/// EHLO, STARTTLS, the handshake, EHLO again: the client inside TLS and its EHLO reply.
fn starttls(port: u16, ca: &TestCa) -> (Client<Tls>, String) {
    let (mut c, _) = plain(port);
    let r = c.cmd("STARTTLS");
    assert!(r.starts_with("220"), "{r}");
    assert!(c.io.buffer().is_empty(), "nothing may follow the 220");
    let mut c = wrap(c.io.into_inner(), ca);
    let ehlo = c.cmd("EHLO tls.client.test");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    (c, ehlo)
}

/// Implicit TLS: the handshake first, then greeting and EHLO.
fn implicit(port: u16, ca: &TestCa) -> (Client<Tls>, String) {
    let mut c = wrap(tcp(port), ca);
    let greeting = c.reply();
    assert!(greeting.starts_with("220"), "{greeting}");
    let ehlo = c.cmd("EHLO implicit.client.test");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    (c, ehlo)
}

/// `AUTH PLAIN` with an initial response.
fn auth_plain(user: &str, password: &str) -> String {
    format!("AUTH PLAIN {}", B64.encode(format!("\0{user}\0{password}")))
}

/// The AUTH line of an EHLO reply, if any.
fn auth_offer(ehlo: &str) -> Option<&str> {
    ehlo.lines()
        .find(|l| l.get(4..).is_some_and(|x| x.starts_with("AUTH")))
}

/// A test message with `t` in its subject.
fn content(t: &str) -> String {
    format!("From: <{t}@corp.test>\r\nTo: <rcpt@corp.test>\r\nSubject: {t}\r\n\r\nsubmitted\r\n")
}

/// Waits for the message carrying `t` at the sink behind Postfix; its text.
fn delivered(t: &str) -> String {
    wait_for(|| world().sink.mentioning(t).into_iter().next())
        .unwrap_or_else(|| panic!("{t} did not reach the sink"))
        .text()
        .into_owned()
}

/// Waits until Postfix's queue is empty: everything it accepted has then gone to the sink,
/// so an absence there is final.
fn settle() {
    let w = world();
    let emptied = wait_for(|| w.postfix.queue().trim().is_empty()).is_some();
    assert!(
        emptied,
        "Postfix's queue never emptied:\n{}",
        w.postfix.queue()
    );
}

/// A swaks run through the STARTTLS proxy, the proxy's certificate verified against the CA.
fn swaks_starttls(t: &str, args: &[&str]) -> String {
    let w = world();
    let ca = w.ca.ca().display().to_string();
    let mut all = vec![
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        &ca,
        "--from",
        "sender@corp.test",
        "--to",
        "rcpt@corp.test",
        "--header",
    ];
    let subject = format!("Subject: {t}");
    all.push(&subject);
    all.extend_from_slice(args);
    text(&swaks(w.starttls.port, &all))
}

#[test]
fn auth_is_neither_offered_nor_taken_outside_tls() {
    let w = world();
    let (mut c, ehlo) = plain(w.starttls.port);
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(
        auth_offer(&ehlo),
        None,
        "AUTH offered in plain text: {ehlo}"
    );
    // The password is refused before it goes anywhere.
    let r = c.cmd(&auth_plain(USER, PASSWORD));
    assert!(r.starts_with("538 5.7.11"), "{r}");
    let r = c.cmd("AUTH LOGIN");
    assert!(r.starts_with("538 5.7.11"), "{r}");
    // Without AUTH, Postfix relays nothing for the proxy's client.
    let t = token("plain-noauth");
    let r = c.message("a@corp.test", &["rcpt@corp.test"], &content(&t));
    assert!(r.starts_with("554 5.7.1"), "{r}");
    assert!(c.cmd("QUIT").starts_with("221"));
}

#[test]
fn auth_plain_login_and_cram_md5_work_through_starttls() {
    let w = world();
    for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5"] {
        let t = token(&format!("auth-{}", mechanism.to_lowercase()));
        let out = swaks_starttls(
            &t,
            &[
                "--auth",
                mechanism,
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
            ],
        );
        assert!(out.contains("<~  235 2.7.0"), "{mechanism}:\n{out}");
        assert!(
            out.contains("<~  250 2.0.0 Ok: queued as"),
            "{mechanism}:\n{out}"
        );
        let exchange: Vec<&str> = out
            .lines()
            .skip_while(|l| !l.starts_with(" ~> AUTH"))
            .take_while(|l| !l.starts_with("<~  235"))
            .filter(|l| l.starts_with("<~  334"))
            .collect();
        let rounds = match mechanism {
            "PLAIN" => 0, // swaks sends the initial response with AUTH PLAIN
            "LOGIN" => 2, // user name, password
            _ => 1,       // one challenge, one response
        };
        assert_eq!(exchange.len(), rounds, "{mechanism}: {exchange:?}\n{out}");
        if mechanism == "CRAM-MD5" {
            // The challenge is Postfix's: a fresh <...@submission.corp.test> each time.
            let challenge = B64
                .decode(exchange[0].trim_start_matches("<~  334 ").trim())
                .expect("a base64 challenge");
            let challenge = String::from_utf8_lossy(&challenge).into_owned();
            assert!(
                challenge.starts_with('<') && challenge.contains("submission.corp.test"),
                "{challenge}"
            );
        }
        let m = delivered(&t);
        // Postfix's Received header: it authenticated the client, and XCLIENT gave it the
        // client's own EHLO name; the leg to the proxy is TLS, the one to the client too.
        assert!(m.contains(AUTHENTICATED), "{mechanism}:\n{m}");
        assert!(m.contains("ESMTPSA"), "{mechanism}:\n{m}");
    }
    // The transaction log line names the login (auth=) for each mechanism.
    let lines = w.starttls.log_lines("transaction");
    let ours = lines
        .iter()
        .filter(|l| l["auth"] == USER && l["decision"] == "deliver")
        .count();
    assert!(ours >= 3, "{:#?}", lines);
    for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5"] {
        assert!(
            w.starttls
                .log_lines("client authenticated")
                .iter()
                .any(|l| l["mechanism"] == mechanism && l["auth"] == USER),
            "{}",
            w.starttls.log()
        );
    }
}

#[test]
fn raw_auth_inside_tls_relays_and_logs_the_login() {
    let w = world();
    let (mut c, ehlo) = starttls(w.starttls.port, &w.ca);
    let offer = auth_offer(&ehlo).unwrap_or_else(|| panic!("no AUTH inside TLS: {ehlo}"));
    for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5"] {
        assert!(offer.contains(mechanism), "{offer}");
    }
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(c.cmd("AUTH BOGUS").starts_with("504 5.5.4"));
    // A wrong password: Postfix's 535, verbatim; the session goes on.
    let r = c.cmd(&auth_plain(USER, "wrong password"));
    assert!(r.starts_with("535 5.7.8"), "{r}");
    let t = token("raw-auth");
    let sender = format!("{t}@corp.test");
    let r = c.message(&sender, &["rcpt@corp.test"], &content(&t));
    assert!(
        r.starts_with("554 5.7.1"),
        "not authenticated, not relayed: {r}"
    );
    // LOGIN, step by step: each 334 is Postfix's.
    let r = c.cmd("AUTH LOGIN");
    assert_eq!(r, "334 VXNlcm5hbWU6\r\n");
    let r = c.cmd(&B64.encode(USER));
    assert_eq!(r, "334 UGFzc3dvcmQ6\r\n");
    let r = c.cmd(&B64.encode(PASSWORD));
    assert!(r.starts_with("235 2.7.0"), "{r}");
    assert!(c.cmd(&auth_plain(USER, PASSWORD)).starts_with("503 5.5.1"));
    let r = c.message(&sender, &["rcpt@corp.test"], &content(&t));
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    // AUTH inside a transaction is refused.
    assert!(c.cmd("MAIL FROM:<x@corp.test>").starts_with("250"));
    assert!(c.cmd(&auth_plain(USER, PASSWORD)).starts_with("503 5.5.1"));
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    let m = delivered(&t);
    assert!(m.contains(AUTHENTICATED), "{m}");
    // XCLIENT passed the client's EHLO name inside TLS.
    assert!(m.contains("from tls.client.test"), "{m}");
    let line = wait_for(|| {
        w.starttls
            .log_lines("transaction")
            .into_iter()
            .find(|l| l["from"] == sender.as_str() && l["decision"] == "deliver")
    })
    .expect("a transaction line for the message");
    assert_eq!(line["auth"], USER, "{line}");
    assert!(
        line["tls"].as_str().unwrap_or("").starts_with("TLSv1."),
        "{line}"
    );
}

#[test]
fn a_wrong_password_gets_postfixs_535_and_nothing_is_relayed() {
    let t = token("wrong-password");
    let out = swaks_starttls(
        &t,
        &[
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            "not the password",
        ],
    );
    assert!(
        out.contains("<~* 535 5.7.8 Error: authentication failed"),
        "{out}"
    );
    assert!(!out.contains("Ok: queued"), "{out}");
    // The refusal is Postfix's: its SASL checked the password the proxy relayed.
    assert!(
        wait_for(|| world()
            .postfix
            .maillog()
            .contains("SASL PLAIN authentication failed"))
        .is_some(),
        "{}",
        world().postfix.maillog()
    );
    settle();
    assert!(world().sink.mentioning(&t).is_empty());
}

#[test]
fn without_auth_postfix_refuses_relaying_and_the_client_hears_it() {
    let t = token("no-auth");
    let out = swaks_starttls(&t, &[]);
    assert!(
        out.contains("<~* 554 5.7.1 <rcpt@corp.test>: Recipient address rejected: Access denied"),
        "{out}"
    );
    settle();
    assert!(world().sink.mentioning(&t).is_empty());
}

#[test]
fn implicit_tls_works_the_same() {
    let w = world();
    // swaks: TLS from the first byte (--tlsc), certificate verified, AUTH LOGIN.
    let t = token("implicit-swaks");
    let ca = w.ca.ca().display().to_string();
    let subject = format!("Subject: {t}");
    let out = text(&swaks(
        w.implicit.port,
        &[
            "--tlsc",
            "--tls-verify",
            "--tls-ca-path",
            &ca,
            "--from",
            "sender@corp.test",
            "--to",
            "rcpt@corp.test",
            "--header",
            &subject,
            "--auth",
            "LOGIN",
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
        ],
    ));
    assert!(out.contains("<~  235 2.7.0"), "{out}");
    assert!(out.contains("<~  250 2.0.0 Ok: queued as"), "{out}");
    assert!(delivered(&t).contains(AUTHENTICATED));

    // Raw: no STARTTLS offered (TLS already), AUTH offered; a wrong password is 535; the
    // right one relays.
    let (mut c, ehlo) = implicit(w.implicit.port, &w.ca);
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        auth_offer(&ehlo).is_some_and(|l| l.contains("PLAIN")),
        "{ehlo}"
    );
    assert!(c.cmd("STARTTLS").starts_with("502"), "no STARTTLS on 465");
    assert!(c.cmd(&auth_plain(USER, "wrong")).starts_with("535 5.7.8"));
    assert!(c.cmd(&auth_plain(USER, PASSWORD)).starts_with("235 2.7.0"));
    let t = token("implicit-raw");
    let sender = format!("{t}@corp.test");
    let r = c.message(&sender, &["rcpt@corp.test"], &content(&t));
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(delivered(&t).contains(AUTHENTICATED));
    let line = wait_for(|| {
        w.implicit
            .log_lines("transaction")
            .into_iter()
            .find(|l| l["from"] == sender.as_str())
    })
    .expect("a transaction line");
    assert_eq!(line["auth"], USER, "{line}");
    // A client that speaks plain text to the implicit-TLS port gets no greeting.
    let mut plain = Client {
        io: BufReader::new(tcp(w.implicit.port)),
    };
    plain.send(b"EHLO plain.test\r\n");
    let r = plain.reply();
    assert!(!r.starts_with("220") && !r.starts_with("250"), "{r:?}");
}

/// The CRAM-MD5 response to a base64 challenge: the user name and HMAC-MD5(password,
/// challenge) in hex, base64-encoded (RFC 2195), computed by the openssl command.
fn cram_md5(challenge_b64: &str) -> String {
    let challenge = B64
        .decode(challenge_b64.trim())
        .expect("a base64 challenge");
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-md5", "-r", "-hmac", PASSWORD])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(&challenge).unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout);
    let digest = hex.split_whitespace().next().expect("a digest");
    B64.encode(format!("{USER} {digest}"))
}

/// A message the proxy refuses mid-DATA (a bare LF) after it sent DATA upstream: the only way
/// to abandon it is to drop the upstream connection, so the session's next message needs a
/// new one, authenticated again. PLAIN and LOGIN are replayed; a CRAM-MD5 answer is good for
/// one challenge only, so the proxy tells the client to reconnect (421) instead of letting
/// Postfix refuse the next message as unauthenticated (554, a bounce for the user).
#[test]
fn after_a_dropped_upstream_the_login_is_carried_over_or_the_client_reconnects() {
    let w = world();
    let flawed = |c: &mut Client<Tls>, t: &str| {
        let r = c.message(
            &format!("{t}@corp.test"),
            &["rcpt@corp.test"],
            &format!("Subject: {t}-flawed\r\n\r\nbare\nline feed\r\n"),
        );
        assert!(r.starts_with("550 5.5.2"), "{r}");
    };

    // PLAIN: replayed on the new connection, the next message relayed.
    let t = token("replay-plain");
    let (mut c, _) = starttls(w.starttls.port, &w.ca);
    assert!(c.cmd(&auth_plain(USER, PASSWORD)).starts_with("235"));
    flawed(&mut c, &t);
    let r = c.message(&format!("{t}@corp.test"), &["rcpt@corp.test"], &content(&t));
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    assert!(delivered(&t).contains(AUTHENTICATED));

    // CRAM-MD5: one round trip with Postfix's challenge, relayed lockstep.
    let t = token("replay-cram");
    let (mut c, _) = starttls(w.starttls.port, &w.ca);
    let challenge = c.cmd("AUTH CRAM-MD5");
    let challenge = challenge
        .strip_prefix("334 ")
        .unwrap_or_else(|| panic!("{challenge}"));
    let r = c.cmd(&cram_md5(challenge));
    assert!(r.starts_with("235 2.7.0"), "{r}");
    let r = c.message(&format!("{t}@corp.test"), &["rcpt@corp.test"], &content(&t));
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    assert!(delivered(&t).contains(AUTHENTICATED));
    flawed(&mut c, &t);
    let t2 = token("replay-cram-next");
    let r = c.message(
        &format!("{t2}@corp.test"),
        &["rcpt@corp.test"],
        &content(&t2),
    );
    assert!(r.starts_with("421 4.7.0"), "reconnect, not a refusal: {r}");
    assert_eq!(c.reply(), "", "closed after the 421");
    // The client does what it was told: a new session, a new challenge, the message sent.
    let (mut c, _) = starttls(w.starttls.port, &w.ca);
    let challenge = c.cmd("AUTH CRAM-MD5");
    let r = c.cmd(&cram_md5(challenge.trim_start_matches("334 ")));
    assert!(r.starts_with("235 2.7.0"), "{r}");
    let r = c.message(
        &format!("{t2}@corp.test"),
        &["rcpt@corp.test"],
        &content(&t2),
    );
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    settle();
    assert_eq!(w.sink.mentioning(&t2).len(), 1, "sent once, delivered once");
    let told = w.starttls.log_lines("client told to reconnect");
    assert!(
        told.iter().any(|l| l["auth"] == USER),
        "{}",
        w.starttls.log()
    );
}

/// `[policy] exempt_senders` may name the login: that user's wide replies are never counted
/// nor held, whatever the envelope sender. The same storm through a proxy without the
/// exemption is held after the trip.
#[test]
fn an_exempt_login_is_not_held_in_a_storm() {
    let w = world();
    const TRIP: usize = 3;
    const REPLIES: usize = 6;
    let exempt = submission_proxy(
        &w.postfix,
        &w.ca,
        "starttls",
        &storm_policy(
            "quarantine",
            TRIP as u32,
            &format!("exempt_senders = [\"{USER}\"]"),
        ),
    );
    let counted = submission_proxy(
        &w.postfix,
        &w.ca,
        "starttls",
        &storm_policy("quarantine", TRIP as u32, ""),
    );
    let storm = |proxy: &Stormbreaker, name: &str| -> (String, Vec<String>) {
        let thread = token(name).replace('-', "");
        let (mut c, _) = starttls(proxy.port, &w.ca);
        assert!(c.cmd(&auth_plain(USER, PASSWORD)).starts_with("235"));
        let r = c.message("hr@corp.test", &[LIST], &original(&thread));
        assert!(r.starts_with("250"), "{r}");
        let answers = (0..REPLIES)
            .map(|i| {
                let from = format!("user{i}@corp.test");
                c.message(&from, &[LIST], &reply_all(&thread, i, &from))
            })
            .collect();
        assert!(c.cmd("QUIT").starts_with("221"));
        (thread, answers)
    };
    let (exempt_thread, answers) = storm(&exempt, "exemptstorm");
    for (i, a) in answers.iter().enumerate() {
        assert!(
            a.starts_with("250 2.0.0 Ok: queued as"),
            "exempt reply {i}: {a}"
        );
    }
    let (counted_thread, answers) = storm(&counted, "countedstorm");
    for (i, a) in answers.iter().enumerate() {
        if i < TRIP {
            assert!(a.starts_with("250 2.0.0 Ok: queued as"), "reply {i}: {a}");
        } else {
            assert!(
                a.starts_with("250 2.0.0") && a.contains("held"),
                "reply {i}: {a}"
            );
        }
    }
    settle();
    let delivered_tags = |thread: &str| {
        let texts: Vec<String> = w
            .sink
            .mentioning(thread)
            .iter()
            .map(|m| m.text().into_owned())
            .collect();
        tags(thread, texts.iter().map(String::as_str))
    };
    let all = |thread: &str, n: usize| -> HashSet<String> {
        (0..n).map(|i| format!("{thread}-r{i}")).collect()
    };
    assert_eq!(delivered_tags(&exempt_thread), all(&exempt_thread, REPLIES));
    assert_eq!(delivered_tags(&counted_thread), all(&counted_thread, TRIP));
    assert!(exempt.quarantine_list().is_empty());
    assert_eq!(counted.quarantine_list().len(), REPLIES - TRIP);
    // The held ones carry the login too, and each held message's transaction line names it.
    let held_lines: Vec<_> = counted
        .log_lines("transaction")
        .into_iter()
        .filter(|l| l["decision"] == "quarantine")
        .collect();
    assert_eq!(held_lines.len(), REPLIES - TRIP, "{}", counted.log());
    assert!(held_lines.iter().all(|l| l["auth"] == USER));

    // Releases go to `[upstream] address` over `[upstream] tls`, but with no AUTH of their
    // own: this Postfix relays only for authenticated clients, refuses them, and they stay
    // held. `[reinject] address` names an MTA that relays for the stormbreaker host (here the
    // sink behind the suite's Postfix): with it the same command releases them.
    let entries = counted.quarantine_list();
    let key = entries[0]["thread"]
        .as_str()
        .expect("a thread key")
        .to_string();
    let out = counted.admin(&["quarantine", "release", "--thread", &key]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("554 5.7.1 <all-staff@corp.test>: Recipient address rejected: Access denied"),
        "{said}"
    );
    assert_eq!(
        counted.quarantine_list().len(),
        REPLIES - TRIP,
        "still held"
    );
    let release_policy = counted.config.clone();
    let mut policy = std::fs::read_to_string(&release_policy).unwrap();
    policy.push_str(&format!(
        "\n[reinject]\naddress = \"{}\"\n",
        w.sink.address()
    ));
    std::fs::write(&release_policy, policy).unwrap();
    let out = crate::support::stormbreaker::command()
        .args(["quarantine", "release", "--thread", &key, "--config"])
        .arg(&release_policy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        delivered_tags(&counted_thread),
        all(&counted_thread, REPLIES)
    );
    assert!(counted.quarantine_list().is_empty());
}
