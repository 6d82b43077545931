//! The web console and its API on `[admin] listen`: in Debian's Chromium during a real storm
//! (through the proxy, in front of the suite's Postfix), and request by request for the
//! authentication and cross-origin rules.

use crate::support::clients::{script, text};
use crate::support::http::{self, Answer, require_python_module, token_file};
use crate::support::stormbreaker::{Stormbreaker, command};
use crate::support::wait::wait_for;
use crate::support::{free_port, relay, require_tool, scratch_dir, storm, token};
use std::path::PathBuf;
use std::process::Command;

/// A proxy in front of the suite's Postfix with the console on a free port behind a token
/// file naming "alice"; breakers open after `trip` wide replies.
struct Console {
    proxy: Stormbreaker,
    port: u16,
    token: String,
    /// The token file (in `_tokens`).
    tokens_path: PathBuf,
    _tokens: tempfile::TempDir,
}

impl Console {
    fn start(trip: u32) -> Console {
        let tokens = scratch_dir("sb-tokens.");
        let (token, path) = token_file(tokens.path(), "alice");
        let port = free_port();
        let admin = format!(
            "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            path.display()
        );
        let proxy = Stormbreaker::proxy(
            relay().postfix.port,
            "",
            &storm::policy("quarantine", trip, &admin),
        );
        assert!(crate::support::wait::wait_port(port));
        Console {
            proxy,
            port,
            token,
            tokens_path: path,
            _tokens: tokens,
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn get(&self, path: &str) -> Answer {
        http::get(self.port, path, &[("Authorization", &self.bearer())])
    }

    /// The storm (as `/api/storms` lists it) whose subject names `thread`.
    fn storm_of(&self, thread: &str) -> serde_json::Value {
        let storms = self.get("/api/storms").json();
        storms["storms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["held"].as_u64() > Some(0)
                    && s["subject"].as_str().is_some_and(|t| t.contains(thread))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no storm for {thread} in {storms}"))
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.proxy.dir.path().join("quarantine/audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Where the browser test leaves its screenshots: `STORMBREAKER_SCREENSHOTS` (the README's
/// docs/ folder, when refreshing them), else a scratch folder.
fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("STORMBREAKER_SCREENSHOTS") {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let tmp = scratch_dir("sb-shots.");
            (tmp.path().to_path_buf(), Some(tmp))
        }
    }
}

#[test]
fn in_chromium_an_admin_logs_in_sees_the_storm_and_releases_a_held_reply() {
    require_tool("chromium");
    require_python_module("playwright");
    let console = Console::start(5);
    let thread = token("console").replace('-', "");
    // Replies 1-5 pass (the 5th opens the breaker), 6-9 are held.
    let held = storm::send(console.proxy.port, &thread, 9);
    assert_eq!(held.len(), 4, "{held:?}");
    let storm_id = console.storm_of(&thread)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let to_release = &held[0];
    let message_id = format!("<{to_release}@corp.test>");
    assert!(
        relay().sink.mentioning(&message_id).is_empty(),
        "held, so not delivered yet"
    );

    let (shots, _keep) = screenshot_dir();
    let evil_key = format!("subj:{}", token("evil"));
    let out = Command::new("python3")
        .arg(script("console.py"))
        .arg(format!("http://127.0.0.1:{}", console.port))
        .arg(&console.token)
        .arg(&storm_id)
        .arg(held.len().to_string())
        .arg(to_release)
        .arg(&shots)
        .arg(&evil_key)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the browser run failed: {}\n{}",
        text(&out),
        console.proxy.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let released_id = report["released_id"].as_str().unwrap();

    // The released reply reaches the sink behind Postfix, to the list it was written to.
    let delivered = wait_for(|| {
        let found = relay().sink.mentioning(&message_id);
        (!found.is_empty()).then_some(found)
    })
    .expect("the released reply reaches the sink");
    assert_eq!(delivered[0].addresses(), [storm::LIST]);
    // The other three stay held.
    let still_held = console
        .proxy
        .quarantine_list()
        .iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").contains(&thread))
        .count();
    assert_eq!(still_held, 3);
    // The audit log names who released it.
    let audit = console.audit();
    assert!(
        audit
            .iter()
            .any(|l| l["action"] == "release" && l["id"] == released_id && l["who"] == "alice"),
        "{audit:?}"
    );

    // From another origin, neither the form POST nor the fetch changed anything.
    let cross = &report["cross_origin"];
    assert_eq!(cross["form_trip"], 403, "{report}");
    assert!(
        [401, 403, 415].contains(&cross["fetch_release"].as_u64().unwrap()),
        "{report}"
    );
    let breakers = console.get("/breakers").body;
    assert!(!breakers.contains(&evil_key[5..]), "{breakers}");
    assert!(!console.audit().iter().any(|l| l["action"] == "trip"));
    for name in ["console-storm.png", "console-held.png"] {
        let png = std::fs::read(shots.join(name)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
    }
}

#[test]
fn api_rules_tokens_sessions_csrf_and_origins() {
    let console = Console::start(3);
    let port = console.port;
    let bearer = console.bearer();
    let thread = token("api").replace('-', "");
    let held = storm::send(console.proxy.port, &thread, 5);
    assert_eq!(held.len(), 2);

    // Metrics, liveness and readiness ask for no token; the API does.
    for path in ["/metrics", "/health", "/ready"] {
        assert_eq!(http::get(port, path, &[]).status, 200, "{path}");
    }
    let page = http::get(port, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").is_some());
    assert_eq!(http::get(port, "/api/storms", &[]).status, 401);
    assert_eq!(
        http::get(
            port,
            "/api/storms",
            &[("Authorization", "Bearer wrong-wrong-wrong-wrong")]
        )
        .status,
        401
    );
    let storm = console.storm_of(&thread);
    let storm_id = storm["id"].as_str().unwrap();
    assert_eq!(storm["held"], 2);
    assert_eq!(storm["audience"], 91053);
    assert_eq!(storm["deliveries_avoided"], 2 * 91053);
    assert_eq!(storm["status"], "open");
    assert_eq!(storm["keys"][0], storm_id);
    let replies: u64 = storm["timeline"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["replies"].as_u64().unwrap())
        .sum();
    assert_eq!(replies, 2);

    // Search among a storm's held mail.
    let q = format!(
        "/api/held?storm={}&q={}",
        stormbreaker::admin::client::encode(storm_id),
        held[1]
    );
    let found = console.get(&q).json();
    assert_eq!(found["total"], 1, "{found}");

    // The storm report.
    let csv = console.get(&format!(
        "/api/report.csv?storm={}",
        stormbreaker::admin::client::encode(storm_id)
    ));
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    assert!(
        csv.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    let lines: Vec<&str> = csv.body.lines().collect();
    assert!(lines[0].starts_with("storm,thread,id,state,received_at,mail_from"));
    assert_eq!(lines.len(), 3, "{}", csv.body);
    assert!(lines[1].contains(",held,") && lines[1].contains("91053"));

    // A state change from another origin is refused, even with a valid token.
    let key = format!("subj:{}", token("manual"));
    let body = serde_json::json!({ "key": key });
    for foreign in [
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "null")],
        vec![("Sec-Fetch-Site", "cross-site")],
    ] {
        let mut headers = vec![("Authorization", bearer.as_str())];
        headers.extend(foreign.iter().copied());
        let answer = http::post_json(port, "/api/trip", &headers, &body);
        assert_eq!(answer.status, 403, "{foreign:?}: {}", answer.body);
    }
    // A browser session: login sets an HttpOnly SameSite=Strict cookie; its POSTs need the
    // session's CSRF token.
    let login = http::post_json(
        port,
        "/api/login",
        &[],
        &serde_json::json!({ "token": console.token }),
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let cookie = login.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let csrf = login.json()["csrf"].as_str().unwrap().to_string();
    let session = cookie.split(';').next().unwrap().to_string();
    let without = http::post_json(port, "/api/trip", &[("Cookie", &session)], &body);
    assert_eq!(without.status, 403, "{}", without.body);
    let with = http::post_json(
        port,
        "/api/trip",
        &[
            ("Cookie", &session),
            ("X-CSRF-Token", &csrf),
            ("Origin", &format!("http://127.0.0.1:{port}")),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        &body,
    );
    assert_eq!(with.status, 200, "{}", with.body);
    // A key that names no thread is refused (the CLI's old `ref:<…>` example).
    let bad = http::post_json(
        port,
        "/api/trip",
        &[("Authorization", &bearer)],
        &serde_json::json!({ "key": "ref:<x@y>" }),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Delete one held message; the other stays.
    let rows = console
        .get(&format!(
            "/api/held?storm={}",
            stormbreaker::admin::client::encode(storm_id)
        ))
        .json();
    let id = rows["messages"][0]["id"].as_str().unwrap().to_string();
    let deleted = http::post_json(
        port,
        "/api/delete",
        &[("Authorization", &bearer)],
        &serde_json::json!({ "ids": [id] }),
    )
    .json();
    assert_eq!(deleted["results"][0]["ok"], true, "{deleted}");
    assert_eq!(console.storm_of(&thread)["held"], 1);

    // Logout ends the session.
    let out = http::post_json(
        port,
        "/api/logout",
        &[("Cookie", &session), ("X-CSRF-Token", &csrf)],
        &serde_json::json!({}),
    );
    assert_eq!(out.status, 200);
    assert_eq!(
        http::get(port, "/api/storms", &[("Cookie", &session)]).status,
        401
    );

    // The CLI presents the token of the user running it (the harness runs as alice).
    let trip = console
        .proxy
        .admin(&["breaker", "trip", &format!("subj:{thread} by hand")]);
    assert!(trip.status.success(), "{}", text(&trip));
    let reset = console
        .proxy
        .admin(&["breaker", "reset", &format!("subj:{thread} by hand")]);
    assert!(reset.status.success(), "{}", text(&reset));

    // Every action is audited with who did it.
    let audit = console.audit();
    let by_alice = |action: &str| {
        audit
            .iter()
            .filter(|l| l["action"] == action && l["who"] == "alice")
            .count()
    };
    assert_eq!(by_alice("trip"), 2, "{audit:?}");
    assert_eq!(by_alice("reset"), 1, "{audit:?}");
    assert_eq!(by_alice("delete"), 1, "{audit:?}");
}

#[test]
fn without_a_token_file_only_loopback_hosts_are_answered() {
    let admin = free_port();
    let proxy = Stormbreaker::proxy(
        relay().postfix.port,
        "",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    let _ = &proxy;
    let session = http::get(admin, "/api/session", &[]).json();
    assert_eq!(session["name"], "anonymous");
    assert_eq!(session["auth"], "none");
    // A page whose DNS name was rebound to 127.0.0.1 sends its own name as Host.
    let rebound = http::get(admin, "/api/storms", &[("Host", "evil.example:80")]);
    assert_eq!(rebound.status, 403);
    // A POST without the CSRF token (what a cross-origin form could send) is refused.
    let key = format!("subj:{}", token("anon"));
    let refused = http::request(admin, "POST", &format!("/breakers/trip?key={key}"), &[], "");
    assert_eq!(refused.status, 403, "{}", refused.body);
    let csrf = session["csrf"].as_str().unwrap();
    let tripped = http::request(
        admin,
        "POST",
        &format!("/breakers/trip?key={key}"),
        &[("X-CSRF-Token", csrf)],
        "",
    );
    assert_eq!(tripped.status, 200, "{}", tripped.body);
}

#[test]
fn check_config_wants_a_private_token_file_before_leaving_loopback() {
    let dir = scratch_dir("sb-tokencheck.");
    let (_, tokens) = token_file(dir.path(), "alice");
    let q = dir.path().join("q");
    let write = |name: &str, admin: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[milter]\nlisten = \"127.0.0.1:8891\"\n[quarantine]\ndir = \"{}\"\n[admin]\n{admin}\n",
                q.display()
            ),
        )
        .unwrap();
        path
    };
    let check = |path: &PathBuf| {
        command()
            .arg("check-config")
            .arg("--config")
            .arg(path)
            .output()
            .unwrap()
    };
    let open = write("open.toml", "listen = \"0.0.0.0:9925\"");
    let out = check(&open);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("token_file"), "{}", text(&out));
    let behind = write(
        "behind.toml",
        &format!(
            "listen = \"0.0.0.0:9925\"\ntoken_file = \"{}\"",
            tokens.display()
        ),
    );
    let out = check(&behind);
    assert!(out.status.success(), "{}", text(&out));
    crate::support::set_mode(&tokens, 0o644);
    let out = check(&behind);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("admin.token_file") && text(&out).contains("chmod 600"),
        "{}",
        text(&out)
    );
}

#[test]
fn sighup_reads_the_token_file_again() {
    let console = Console::start(10);
    let port = console.port;
    let login = http::post_json(
        port,
        "/api/login",
        &[],
        &serde_json::json!({ "token": console.token }),
    );
    let session = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        http::get(port, "/api/storms", &[("Cookie", &session)]).status,
        200
    );
    // Alice's token is replaced by Bob's.
    let bob = format!("{:032x}", rand::random::<u128>());
    std::fs::write(&console.tokens_path, format!("bob:{bob}\n")).unwrap();
    console.proxy.signal("-HUP");
    let bearer = format!("Bearer {bob}");
    assert!(
        wait_for(|| http::get(port, "/api/storms", &[("Authorization", &bearer)]).status == 200)
            .is_some(),
        "the new token works after SIGHUP: {}",
        console.proxy.log()
    );
    assert_eq!(
        console.get("/api/storms").status,
        401,
        "the old token no longer does"
    );
    assert_eq!(
        http::get(port, "/api/storms", &[("Cookie", &session)]).status,
        401,
        "sessions of a name no longer in the file end"
    );
}
