//! Open breakers survive a restart of the real binary with the in-process store: killed with
//! SIGKILL mid-storm, it comes back holding, from its snapshot (written when the breaker
//! opened) or, without one, from the held messages themselves; a breaker tripped by hand
//! comes back too, and the restored storm raises no second alert.

use super::{LIST, admin_alerts, held, reply_all, settle};
use crate::support::clients::Raw;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{free_port, relay, token, wait_for};
use std::time::Duration;

fn policy(admin: u16) -> String {
    format!(
        "[policy]\ntrip_replies = 5\nfast_audience = 0\n\
         [[lists]]\naddress = \"{LIST}\"\nmembers = 91053\n\
         [notify]\nadmins = [\"admin@corp.test\"]\nfrom = \"stormbreaker@corp.test\"\ninterval = \"30m\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    )
}

fn reply(port: u16, thread: &str, i: usize) -> String {
    let headers = format!("Subject: RE: Restart {thread}\r\nIn-Reply-To: <{thread}@corp.test>\r\n");
    reply_all(port, LIST, thread, i, &headers, "")
}

fn snapshot(proxy: &Stormbreaker) -> String {
    std::fs::read_to_string(proxy.dir.path().join("quarantine/breakers.json")).unwrap_or_default()
}

fn kill_9(proxy: &mut Stormbreaker) {
    proxy.kill();
    assert!(proxy.wait_exit(Duration::from_secs(30)).is_some());
}

#[test]
fn an_open_breaker_comes_back_after_kill_9_from_the_snapshot_and_from_held_mail() {
    let mut proxy = Stormbreaker::proxy(relay().postfix.port, "", &policy(free_port()));
    let thread = token("restart").replace('-', "");
    let answers: Vec<String> = (0..7).map(|i| reply(proxy.port, &thread, i)).collect();
    assert!(answers[..5].iter().all(|a| !held(a)), "{answers:?}");
    assert!(answers[5..].iter().all(|a| held(a)), "{answers:?}");
    // The snapshot is written as the breaker opens, not at shutdown.
    assert!(
        wait_for(|| snapshot(&proxy).contains(&thread)).is_some(),
        "no snapshot: {}",
        proxy.log()
    );
    kill_9(&mut proxy);
    proxy.restart();
    assert!(
        proxy.log().contains("open breakers restored"),
        "{}",
        proxy.log()
    );
    assert!(held(&reply(proxy.port, &thread, 7)), "held after kill -9");

    // Without a snapshot (lost with the disk's last second, or deleted), the held messages
    // bring the breaker back.
    kill_9(&mut proxy);
    std::fs::remove_file(proxy.dir.path().join("quarantine/breakers.json")).unwrap();
    proxy.restart();
    let lines = proxy.log_lines("open breakers restored");
    let last = lines.last().expect("restored again");
    assert_eq!(last["from_snapshot"], 0);
    assert_eq!(last["from_held_mail"], 1);
    assert!(
        held(&reply(proxy.port, &thread, 8)),
        "held after kill -9, no snapshot"
    );
    // Other keys of the storm come back with it (here the subject, from the held mail).
    let by_subject = {
        let mut c = Raw::connect(proxy.port);
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<phone@corp.test>");
        c.cmd(&format!("RCPT TO:<{LIST}>"));
        c.cmd("DATA");
        c.send(
            format!(
                "From: <phone@corp.test>\r\nSubject: AW: Restart {thread}\r\n\
                 Message-ID: <{thread}-phone@corp.test>\r\n\r\nx\r\n.\r\n"
            )
            .as_bytes(),
        );
        c.reply()
    };
    assert!(held(&by_subject), "{by_subject}");

    // One alert for the storm across both restarts.
    let opened = proxy.log_lines("breaker opened");
    let id = opened[0]["thread"].as_str().unwrap().to_string();
    settle();
    assert_eq!(admin_alerts(&id).len(), 1);
}

#[test]
fn a_breaker_tripped_by_hand_survives_kill_9() {
    let mut proxy = Stormbreaker::proxy(relay().postfix.port, "", &policy(free_port()));
    let thread = token("manualrestart").replace('-', "");
    let key = format!("subj:Restart {thread}");
    let o = proxy.admin(&["breaker", "trip", &key]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(wait_for(|| snapshot(&proxy).contains(&thread.to_lowercase())).is_some());
    kill_9(&mut proxy);
    proxy.restart();
    let answer = reply(proxy.port, &thread, 0);
    assert!(held(&answer), "{answer}");
    let listed = proxy.admin(&["breaker", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\"manual\""));
    // A clean stop writes the snapshot too; the reset is remembered across it.
    let o = proxy.admin(&["breaker", "reset", &key]);
    assert!(o.status.success());
    assert!(proxy.stop());
    assert!(!snapshot(&proxy).contains(&thread.to_lowercase()));
    proxy.restart();
    assert!(!held(&reply(proxy.port, &thread, 1)));
}
