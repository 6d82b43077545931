//! The binary's commands as an administrator runs them.

use crate::support::stormbreaker::command;

fn stormbreaker(args: &[&str]) -> std::process::Output {
    command().args(args).output().expect("run stormbreaker")
}

#[test]
fn the_example_policy_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/stormbreaker.toml");
    let out = stormbreaker(&["check-config", "--config", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_file_line_and_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dir.path().join("lists.txt");
    std::fs::write(&lists, "all@corp.test 5000\nbroken line\n").unwrap();
    let cases = [
        (
            "[proxy]\nlisten = \"127.0.0.1:2525\"\n\n[policy]\ntrip_replys = 3\n",
            5,
            "trip_replys",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:2525\"\n[policy]\nblock_for = \"a while\"\n",
            4,
            "policy.block_for",
        ),
        ("[proxy]\nlisten = \"not an address\"\n", 2, "proxy.listen"),
        (
            "[proxy]\nlisten = \"127.0.0.1:2525\"\n[[lists]]\naddress = \"all@corp.test\"\nmembers = 0\n",
            5,
            "members",
        ),
        ("[proxy\nlisten = 1\n", 1, ""),
        // Values that type-check but break the service or lose mail (issue 14).
        (
            "[proxy]\nlisten = \"127.0.0.1:2525\"\n",
            2,
            "upstream.address",
        ),
        (
            "[milter]\nlisten = \"127.0.0.1:8891\"\n[quarantine]\nretention = \"0s\"\n",
            4,
            "quarantine.retention",
        ),
        (
            "[milter]\nlisten = \"127.0.0.1:8891\"\n[log]\nlevel = \"verbose\"\n",
            4,
            "log.level",
        ),
        (
            "[milter]\nlisten = \"127.0.0.1:8891\"\n[admin]\nlisten = \"0.0.0.0:9925\"\n",
            4,
            "admin.listen",
        ),
        (
            "[milter]\nlisten = \"127.0.0.1:8891\"\n[policy]\nlists_file = \"/nonexistent/lists.txt\"\n",
            4,
            "policy.lists_file",
        ),
        (
            "[milter]\nlisten = \"/nonexistent/milter.sock\"\n",
            2,
            "milter.listen",
        ),
        (
            "[milter]\nlisten = \"127.0.0.1:8891\"\n[quarantine]\ndir = \"/etc/passwd/q\"\n",
            4,
            "quarantine.dir",
        ),
    ];
    for (i, (text, line, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = stormbreaker(&["check-config", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        let at = format!("{}:{line}", path.display());
        assert!(err.contains(&at), "case {i}: wants {at}: {err}");
        assert!(err.contains(key), "case {i}: wants key {key}: {err}");
    }
    // A lists file that does not parse is named with its own line.
    let path = dir.path().join("lists.toml");
    let q = dir.path().join("q");
    std::fs::write(
        &path,
        format!(
            "[milter]\nlisten = \"127.0.0.1:8891\"\n[quarantine]\ndir = \"{}\"\n[policy]\nlists_file = \"{}\"\n",
            q.display(),
            lists.display()
        ),
    )
    .unwrap();
    let out = stormbreaker(&["check-config", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}:2", lists.display())), "{err}");
    // run refuses it the same way, before binding anything.
    let out = stormbreaker(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lists_file"));
    let missing = stormbreaker(&["check-config", "--config", "/nonexistent/policy.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/policy.toml"));
}

#[test]
fn demo_replays_the_storm_and_reports() {
    // The demo keeps its folder for the reader to inspect: here it goes in one of ours.
    let tmp = tempfile::tempdir().unwrap();
    let out = command()
        .arg("demo")
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run stormbreaker");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("sent                 420"), "{report}");
    // At most trip_replies (10) replies and the original reach the list; the rest are held.
    let figure = |label: &str| -> usize {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap();
        line[label.len() + 2..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let delivered = figure("delivered");
    let held = figure("held in quarantine");
    assert!(delivered <= 11, "{report}");
    assert_eq!(delivered + held, 420, "{report}");
    assert!(report.contains("deliveries avoided"), "{report}");
    // The command the report ends with lists exactly the held messages.
    let config = report
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("inspect with"))
        .and_then(|command| {
            command
                .trim()
                .strip_prefix("stormbreaker quarantine list --config ")
        })
        .unwrap_or_else(|| panic!("no inspect command in {report}"));
    assert!(config.starts_with(tmp.path().to_str().unwrap()), "{config}");
    let list = stormbreaker(&["quarantine", "list", "--config", config]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed}");
    let rows = listed.lines().filter(|l| l.starts_with("20")).count();
    assert_eq!(rows, held, "{listed}");
}

#[test]
fn config_dump_prints_the_effective_configuration() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/stormbreaker.toml");
    let out = stormbreaker(&["config", "dump", "--config", path]);
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Defaults the example leaves out are filled in, durations written as they are read.
    assert!(dump.contains("max_connections_per_client = 50"), "{dump}");
    assert!(dump.contains("window = \"1h\""), "{dump}");
    assert!(dump.contains("[[lists]]"), "{dump}");
}
