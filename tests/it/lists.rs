//! Lists the MTA knows: sizes read from a private Postfix's `virtual_alias_maps` (with
//! `postconf` and `postmap`) and from a private slapd's groups, and reply-all storms to those
//! lists, declared nowhere in the policy, tripping through the proxy.

use crate::support::clients::send_message;
use crate::support::slapd::{ROOT_DN, Slapd, group, group_dn, people};
use crate::support::stormbreaker::Stormbreaker;
use crate::support::wait::wait_for;
use crate::support::{Postfix, Sink, scratch_dir, token};
use std::collections::HashSet;
use std::fmt::Write;
use std::path::Path;
use std::process::Command;
use stormbreaker::config::Config;
use stormbreaker::lists::Lists;

/// Counts replies, not "me too" messages; trips at the 10th reply to 2,500 people or more.
const POLICY: &str = "[policy]\ntrip_replies = 10\nwide_audience = 2500\nfast_audience = 0\n";

/// One message through the proxy; returns the reply to the final dot.
fn send(port: u16, from: &str, to: &str, headers: &str, tag: &str) -> String {
    let message = format!("From: <{from}>\r\nTo: <{to}>\r\n{headers}\r\nHello. {tag}\r\n");
    send_message(port, from, &[to], &message)
}

/// An original to `list`, then `replies` reply-alls from different people. Returns how many
/// replies the proxy held (its 250 says so).
fn storm(port: u16, list: &str, thread: &str, replies: usize) -> usize {
    let answer = send(
        port,
        "hr@corp.test",
        list,
        &format!("Subject: Welcome {thread}\r\nMessage-ID: <{thread}@corp.test>\r\n"),
        &format!("{thread}-original"),
    );
    assert!(answer.starts_with("250"), "{answer}");
    let mut held = 0;
    for i in 0..replies {
        let answer = send(
            port,
            &format!("user{i}@corp.test"),
            list,
            &format!(
                "Subject: RE: Welcome {thread}\r\nMessage-ID: <{thread}-r{i}@corp.test>\r\n\
                 In-Reply-To: <{thread}@corp.test>\r\nReferences: <{thread}@corp.test>\r\n"
            ),
            &format!("{thread}-r{i}"),
        );
        assert!(answer.starts_with("250"), "reply {i}: {answer}");
        if answer.contains("held") {
            held += 1;
        }
    }
    held
}

/// A virtual alias file: `staff@corp.test` reaches 3,000 people through 10 departments of 3
/// teams of 100, and also names a team and a person a second time. No cycle: Postfix answers
/// "451 4.6.0 Alias expansion error" to mail for an alias that names itself back (cycles are
/// counted in the unit tests of `lists::expand`).
fn virtual_aliases() -> String {
    let mut text = String::from("# made by tests/it/lists.rs\n");
    for t in 0..30 {
        write!(text, "team{t}@corp.test").unwrap();
        for j in 0..100 {
            // Postfix's source format: a line starting with white space continues the entry.
            if j % 10 == 0 {
                text.push_str("\n   ");
            }
            write!(text, " p{}@people.test,", t * 100 + j).unwrap();
        }
        text.push('\n');
    }
    for d in 0..10 {
        writeln!(
            text,
            "dept{d}@corp.test team{}@corp.test, team{}@corp.test, team{}@corp.test",
            3 * d,
            3 * d + 1,
            3 * d + 2,
        )
        .unwrap();
    }
    text.push_str("staff@corp.test ");
    for d in 0..10 {
        write!(text, "dept{d}@corp.test, ").unwrap();
    }
    text.push_str("team0@corp.test, p5@people.test\n");
    text
}

fn postmap(conf: &Path, map: &str) {
    let out = Command::new("postmap")
        .arg("-c")
        .arg(conf)
        .arg(map)
        .output()
        .expect("postmap");
    assert!(
        out.status.success(),
        "postmap {map}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_storm_to_an_alias_known_only_from_postfix_virtual_alias_maps_trips() {
    let sink = Sink::start();
    let maps = scratch_dir("sb-virtual.");
    let virtual_file = maps.path().join("virtual");
    std::fs::write(&virtual_file, virtual_aliases()).unwrap();
    // Compiled before Postfix starts: its smtpd looks the recipients up as they arrive. Any
    // main.cf will do for postmap.
    let postmap_conf = maps.path().join("conf");
    std::fs::create_dir(&postmap_conf).unwrap();
    std::fs::write(postmap_conf.join("main.cf"), "").unwrap();
    postmap(&postmap_conf, &format!("hash:{}", virtual_file.display()));
    let postfix = Postfix::start(
        sink.port(),
        &format!(
            "virtual_alias_maps = hash:{}\n\
             virtual_alias_expansion_limit = 5000\n\
             smtp_destination_recipient_limit = 1000\n\
             smtpd_authorized_xclient_hosts = 127.0.0.0/8",
            virtual_file.display()
        ),
    );
    // Nothing about staff@ in the policy: its size comes from the Postfix configuration.
    let proxy = Stormbreaker::proxy(
        postfix.port,
        "",
        &format!(
            "{POLICY}[[list_sources]]\nkind = \"postfix\"\nconfig_dir = \"{}\"\nrefresh = \"15m\"\n",
            postfix.conf().display()
        ),
    );
    let read = proxy.log_lines("list source read");
    assert_eq!(read.len(), 1, "{}", proxy.log());
    // 30 teams, 10 departments, staff: every alias reaches 50 people or more.
    assert_eq!(read[0]["lists"], 41, "{}", proxy.log());

    let thread = token("virtual").replace('-', "");
    let held = storm(proxy.port, "staff@corp.test", &thread, 14);
    assert_eq!(held, 4, "replies 11 to 14 held: {}", proxy.log());
    let hold = proxy.log_lines("holding");
    assert_eq!(hold[0]["audience"], 3000, "{hold:?}");

    // Postfix expanded the original to the same 3,000 people that stormbreaker counted.
    let reached = || {
        sink.mentioning(&format!("{thread}-original"))
            .iter()
            .flat_map(|m| m.addresses())
            .collect::<HashSet<_>>()
    };
    wait_for(|| reached().len() >= 3000).expect("the original delivered to 3,000 people");
    let reached = reached();
    assert_eq!(reached.len(), 3000);
    assert!(reached.iter().all(|a| a.ends_with("@people.test")));
}

/// Groups under ou=groups: all-staff (3,000 people through eng, sales and ops; ops names
/// all-staff back and repeats an engineer), eng (1,200, an address of its own), sales (no
/// address: not a list, still counted inside all-staff), team (5: under min_members).
fn directory(slapd: &Slapd) {
    let mut ops = people(2200..3000);
    ops.push(group_dn("all-staff"));
    ops.push(people(0..1).remove(0));
    let mut all = vec![group_dn("eng"), group_dn("sales"), group_dn("ops")];
    all.extend(people(10..20));
    let ldif = [
        group("eng", Some("eng@corp.test"), &people(0..1200)),
        group("sales", None, &people(1200..2200)),
        group("ops", Some("ops@corp.test"), &ops),
        group("all-staff", Some("all-staff@corp.test"), &all),
        group("team", Some("team@corp.test"), &people(0..5)),
    ]
    .concat();
    slapd.add(&ldif);
}

fn ldap_source(slapd: &Slapd, extra: &str) -> String {
    format!(
        "[[list_sources]]\nkind = \"ldap\"\nname = \"directory\"\nurl = \"{}\"\n\
         bind_dn = \"{ROOT_DN}\"\npassword_file = \"{}\"\nbase_dn = \"ou=groups,dc=corp,dc=test\"\n\
         filter = \"(objectClass=groupOfNames)\"\n{extra}",
        slapd.url(),
        slapd.password_file().display()
    )
}

fn lists_from(text: &str) -> Lists {
    let config = Config::parse(
        &format!("[milter]\nlisten = \"127.0.0.1:1\"\n{text}"),
        Path::new("t.toml"),
    )
    .unwrap();
    Lists::from_config(&config).unwrap()
}

#[test]
fn ldap_groups_are_counted_nested_paged_and_once_per_person() {
    let slapd = Slapd::start();
    directory(&slapd);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Pages of 2 groups: the search takes several round trips.
    let lists = lists_from(&ldap_source(&slapd, "page_size = 2\n"));
    assert_eq!(rt.block_on(lists.refresh_all()), 0);
    let t = lists.table();
    assert_eq!(t.get("all-staff@corp.test").map(|l| l.members), Some(3000));
    assert_eq!(t.get("eng@corp.test").map(|l| l.members), Some(1200));
    // ops: 800 people, the engineer it repeats, and all-staff's 3,000 through the cycle.
    assert_eq!(t.get("ops@corp.test").map(|l| l.members), Some(3000));
    assert!(
        t.get("team@corp.test").is_none(),
        "5 people: under min_members"
    );
    assert_eq!(t.len(), 3);

    let direct = lists_from(&ldap_source(
        &slapd,
        "nested = \"direct\"\nmin_members = 5\n",
    ));
    assert_eq!(rt.block_on(direct.refresh_all()), 0);
    let t = direct.table();
    assert_eq!(t.get("all-staff@corp.test").map(|l| l.members), Some(13));
    assert_eq!(t.get("team@corp.test").map(|l| l.members), Some(5));

    // A wrong password fails the read; nothing is made up.
    std::fs::write(slapd.dir().join("bind.pw"), "wrong\n").unwrap();
    let text = ldap_source(&slapd, "").replace(
        &slapd.password_file().display().to_string(),
        &slapd.dir().join("wrong.pw").display().to_string(),
    );
    std::fs::write(slapd.dir().join("wrong.pw"), "wrong\n").unwrap();
    let refused = lists_from(&text);
    assert_eq!(rt.block_on(refused.refresh_all()), 1);
    assert!(refused.table().is_empty());
}

#[test]
fn a_storm_to_an_ldap_group_trips_and_a_group_added_later_is_read_on_sighup() {
    let slapd = Slapd::start();
    directory(&slapd);
    let sink = Sink::start();
    let proxy = Stormbreaker::proxy(
        sink.port(),
        "",
        &format!("{POLICY}{}", ldap_source(&slapd, "refresh = \"1h\"\n")),
    );
    let thread = token("ldap").replace('-', "");
    assert_eq!(storm(proxy.port, "all-staff@corp.test", &thread, 12), 2);
    assert_eq!(proxy.log_lines("holding")[0]["audience"], 3000);

    // A new group nesting all-staff: unknown until the lists are read again.
    slapd.add(&group(
        "late",
        Some("late@corp.test"),
        &[group_dn("all-staff")],
    ));
    let before = token("late").replace('-', "");
    assert_eq!(
        storm(proxy.port, "late@corp.test", &before, 12),
        0,
        "one recipient"
    );
    proxy.signal("-HUP");
    wait_for(|| !proxy.log_lines("lists reloaded").is_empty()).expect("reload logged");
    let after = token("late").replace('-', "");
    assert_eq!(storm(proxy.port, "late@corp.test", &after, 12), 2);
}

#[test]
fn a_source_that_does_not_answer_at_start_leaves_mail_flowing() {
    let sink = Sink::start();
    let closed = crate::support::free_port();
    let proxy = Stormbreaker::proxy(
        sink.port(),
        "",
        &format!(
            "{POLICY}[[list_sources]]\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1:{closed}\"\n\
             base_dn = \"dc=corp,dc=test\"\ntimeout = \"2s\"\n"
        ),
    );
    let failed = proxy.log_lines("list source not read");
    assert_eq!(failed.len(), 1, "{}", proxy.log());
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&closed.to_string())),
        "{failed:?}"
    );
    let tag = token("flows");
    let answer = send(
        proxy.port,
        "a@corp.test",
        "all-staff@corp.test",
        "Subject: hi\r\n",
        &tag,
    );
    assert!(answer.starts_with("250"), "{answer}");
    sink.wait_delivered(1);
    assert_eq!(sink.mentioning(&tag).len(), 1);
}

#[test]
fn the_example_policy_s_list_sources_parse_when_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/stormbreaker.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let begin = text
        .find("# --- list sources")
        .expect("the list sources block");
    let end = text.find("# --- end of list sources ---").unwrap();
    let uncommented: String = text[begin..end]
        .lines()
        .skip(1)
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.starts_with("[[")
                || l.split_once(" = ")
                    .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let config = Config::parse(&format!("{text}\n{uncommented}"), &path)
        .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let names: Vec<String> = config
        .list_sources
        .iter()
        .enumerate()
        .map(|(i, s)| s.label(i))
        .collect();
    assert_eq!(names, ["postfix", "aliases-copy", "directory"]);
}

#[test]
fn a_list_source_added_to_the_policy_file_is_read_on_sighup() {
    let sink = Sink::start();
    let proxy = Stormbreaker::proxy(sink.port(), "", POLICY);
    let before = token("added").replace('-', "");
    assert_eq!(
        storm(proxy.port, "staff@corp.test", &before, 12),
        0,
        "one recipient"
    );
    // An alias file in Postfix's source format, read without Postfix.
    let aliases = proxy.dir.path().join("virtual");
    std::fs::write(&aliases, virtual_aliases()).unwrap();
    let mut policy = std::fs::read_to_string(&proxy.config).unwrap();
    write!(
        policy,
        "\n[[list_sources]]\nkind = \"postfix\"\nmaps = [\"{}\"]\n",
        aliases.display()
    )
    .unwrap();
    std::fs::write(&proxy.config, policy).unwrap();
    proxy.signal("-HUP");
    wait_for(|| !proxy.log_lines("lists reloaded").is_empty()).expect("reload logged");
    let after = token("added").replace('-', "");
    assert_eq!(storm(proxy.port, "staff@corp.test", &after, 12), 2);
    assert_eq!(proxy.log_lines("holding")[0]["audience"], 3000);
}

#[test]
fn a_directory_that_hangs_at_start_delays_the_listener_at_most_briefly() {
    // Accepts connections and never answers: the LDAP bind would wait its whole timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let sink = Sink::start();
    let proxy = Stormbreaker::proxy(
        sink.port(),
        "",
        &format!(
            "{POLICY}[[list_sources]]\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1:{port}\"\n\
             base_dn = \"dc=corp,dc=test\"\nbind_dn = \"cn=x\"\npassword_file = \"/dev/null\"\n\
             timeout = \"10m\"\n"
        ),
    );
    assert_eq!(
        proxy
            .log_lines("list sources still being read; listening meanwhile")
            .len(),
        1,
        "{}",
        proxy.log()
    );
    let tag = token("hang");
    let answer = send(
        proxy.port,
        "a@corp.test",
        "all-staff@corp.test",
        "Subject: hi\r\n",
        &tag,
    );
    assert!(answer.starts_with("250"), "{answer}");
}
