//! STARTTLS on the client side against real peers: Python's smtplib and ssl as clients
//! (`scripts/starttls.py`, a self-signed certificate made with openssl), the suite's Postfix as
//! the upstream.

use crate::support::clients::{script, text};
use crate::support::stormbreaker::{Stormbreaker, command};
use crate::support::wait::wait_for;
use crate::support::{at_exit, relay, require_tool, token};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A certificate for the tests that do not change it, made once.
fn certs() -> &'static Path {
    static CERTS: OnceLock<tempfile::TempDir> = OnceLock::new();
    CERTS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            self_signed(dir.path());
            let path = dir.path().to_path_buf();
            at_exit(move || {
                let _ = std::fs::remove_dir_all(path);
            });
            dir
        })
        .path()
}

/// cert.pem and key.pem for sb.test, made by the openssl command.
fn self_signed(dir: &Path) {
    require_tool("openssl");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=sb.test"])
        .args(["-addext", "subjectAltName=DNS:sb.test"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", text(&out));
}

fn tls_keys() -> String {
    let d = certs();
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        d.join("cert.pem").display(),
        d.join("key.pem").display()
    )
}

fn client(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(script("starttls.py"))
        .args(args)
        .output()
        .expect("python3");
    let shown = text(&out);
    assert!(
        out.status.success(),
        "starttls.py {args:?} failed:\n{shown}"
    );
    shown
}

/// The value printed for `name` by starttls.py.
fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{out}"))
}

#[test]
fn smtplib_sends_a_message_inside_tls() {
    let proxy = Stormbreaker::proxy(relay().postfix.port, &tls_keys(), "");
    let subject = token("inside-tls");
    let out = client(&["send", &proxy.port.to_string(), &subject]);
    assert_eq!(field(&out, "offered"), "True", "{out}");
    assert!(field(&out, "starttls").starts_with("220 2.0.0"), "{out}");
    assert!(field(&out, "version").starts_with("TLSv1."), "{out}");
    assert_eq!(field(&out, "offered after"), "False", "{out}");
    assert_eq!(field(&out, "refused"), "{}", "{out}");
    let arrived = wait_for(|| !relay().sink.mentioning(&subject).is_empty());
    assert!(
        arrived.is_some(),
        "the message did not reach the sink behind Postfix"
    );
    let logged = wait_for(|| {
        proxy
            .log()
            .lines()
            .any(|l| l.contains("\"transaction\"") && l.contains("\"tls\":\"TLSv1."))
    });
    assert!(
        logged.is_some(),
        "no transaction line with its TLS version:\n{}",
        proxy.log()
    );
}

/// Checklist line 11: `STARTTLS\r\nNOOP\r\n` in one write gets the 220 and nothing else
/// (CVE-2011-0411); inside TLS, MAIL before a new EHLO is 503; a second STARTTLS is refused.
#[test]
fn plaintext_pipelined_after_starttls_is_dropped() {
    let proxy = Stormbreaker::proxy(relay().postfix.port, &tls_keys(), "");
    let out = client(&["pipelined", &proxy.port.to_string()]);
    assert!(field(&out, "ehlo").contains("STARTTLS"), "{out}");
    assert_eq!(
        field(&out, "starttls"),
        "220 2.0.0 Ready to start TLS",
        "{out}"
    );
    // A plain-text answer to the NOOP would have broken the handshake; inside TLS the first
    // reply must be to MAIL, not a leftover 250 for the NOOP.
    assert!(field(&out, "version").starts_with("TLSv1."), "{out}");
    assert!(
        field(&out, "mail before ehlo").starts_with("503 5.5.1"),
        "{out}"
    );
    let ehlo = field(&out, "ehlo in tls");
    assert!(
        ehlo.starts_with("250") && !ehlo.contains("STARTTLS"),
        "{out}"
    );
    assert_eq!(
        field(&out, "second starttls"),
        "503 5.5.1 TLS already active",
        "{out}"
    );
    assert!(field(&out, "quit").starts_with("221"), "{out}");
    assert!(
        proxy
            .log()
            .contains("commands pipelined after STARTTLS; discarded"),
        "{}",
        proxy.log()
    );
}

/// A renewed certificate is picked up on SIGHUP, without a restart; a broken one is refused
/// and the old one stays.
#[test]
fn sighup_loads_a_renewed_certificate() {
    let live = tempfile::tempdir().unwrap();
    let renewed = tempfile::tempdir().unwrap();
    self_signed(live.path());
    self_signed(renewed.path());
    let keys = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        live.path().join("cert.pem").display(),
        live.path().join("key.pem").display()
    );
    let proxy = Stormbreaker::proxy(relay().postfix.port, &keys, "");
    let served = || field(&client(&["served", &proxy.port.to_string()]), "sha256").to_string();
    let of_file = |dir: &Path| {
        let path = dir.join("cert.pem");
        field(&client(&["file", path.to_str().unwrap()]), "sha256").to_string()
    };
    let first = of_file(live.path());
    let second = of_file(renewed.path());
    assert_ne!(first, second);
    assert_eq!(served(), first);

    let hup = |what: &str| {
        proxy.signal("-HUP");
        let seen = wait_for(|| proxy.log().contains(what));
        assert!(seen.is_some(), "no {what:?} after SIGHUP:\n{}", proxy.log());
    };
    for name in ["cert.pem", "key.pem"] {
        std::fs::copy(renewed.path().join(name), live.path().join(name)).unwrap();
    }
    hup("SIGHUP: configuration reloaded");
    assert_eq!(served(), second);

    std::fs::write(live.path().join("cert.pem"), "not a certificate\n").unwrap();
    // The certificate is checked like the rest of the file: the running one stays.
    hup("does not validate; the running configuration stays");
    assert_eq!(
        served(),
        second,
        "the old certificate stays after a failed reload"
    );
}

fn check_config(policy: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let out = command()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), text(&out))
}

#[test]
fn a_bad_certificate_is_named_with_its_key_and_line() {
    let good = tls_keys();
    let missing: PathBuf = certs().join("missing.pem");
    let base = "[proxy]\nlisten = \"127.0.0.1:2525\"\n";
    let upstream = "[upstream]\naddress = \"127.0.0.1:10025\"\n";

    let (code, out) = check_config(&format!("{base}{good}\n{upstream}"));
    assert_eq!(code, 0, "{out}");

    let policy = format!(
        "{base}tls_cert = \"{}\"\ntls_key = \"{}\"\n{upstream}",
        missing.display(),
        certs().join("key.pem").display()
    );
    let (code, out) = check_config(&policy);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(":3: key `proxy.tls_cert`") && out.contains("missing.pem"),
        "{out}"
    );

    // The key file given as the certificate: no certificate in it.
    let policy = format!(
        "{base}tls_cert = \"{key}\"\ntls_key = \"{key}\"\n{upstream}",
        key = certs().join("key.pem").display()
    );
    let (code, out) = check_config(&policy);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no PEM certificate"), "{out}");

    let policy = format!(
        "{base}tls_cert = \"{}\"\n{upstream}",
        certs().join("cert.pem").display()
    );
    let (code, out) = check_config(&policy);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("key `proxy.tls_key`") && out.contains("needs tls_key"),
        "{out}"
    );
}
