//! One quarantine view over two real stormbreaker proxies sharing a real redis-server, each
//! with its admin API and the other as `[admin] peers` (plus, on the first, a peer nothing
//! listens on): a storm held partly on each node; `quarantine list --all-nodes --json` and the
//! console's API on node 1 list both nodes' held mail by node, name the dead peer, and a
//! release of node 2's message issued on node 1 (command and API) goes out from node 2 through
//! the suite's Postfix to the sink, in node 2's audit log as "alice via mx1".

use crate::support::http::{self, token_file};
use crate::support::redis::RedisServer;
use crate::support::stormbreaker::{Stormbreaker, assert_held_entry_fields};
use crate::support::wait::{wait_for, wait_port};
use crate::support::{free_port, relay, scratch_dir, storm, token};

struct Node {
    sb: Stormbreaker,
}

impl Node {
    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.sb.dir.path().join("quarantine/audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A proxy in front of the suite's Postfix, named `name`, its admin API on `admin_port`,
/// breakers in the shared Redis under `prefix`, `peers` as a TOML array.
fn node(name: &str, admin_port: u16, tokens: &std::path::Path, prefix: &str, peers: &str) -> Node {
    let admin = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"{}\"\nnode_name = \"{name}\"\n\
         peers = {peers}\n",
        tokens.display()
    );
    let state = format!(
        "[state]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\n",
        RedisServer::shared().url()
    );
    let sb = Stormbreaker::proxy(
        relay().postfix.port,
        "",
        &format!("{}\n{state}", storm::policy("quarantine", 5, &admin)),
    );
    assert!(wait_port(admin_port), "{}", sb.log());
    Node { sb }
}

#[test]
fn every_nodes_held_mail_is_listed_and_released_from_any_node() {
    let tokens = scratch_dir("sb-tokens.");
    let (secret, tokens_path) = token_file(tokens.path(), "alice");
    let bearer = format!("Bearer {secret}");
    let (p1, p2, dead) = (free_port(), free_port(), free_port());
    let prefix = format!("{}:", token("nodes"));
    let n1 = node(
        "mx1",
        p1,
        &tokens_path,
        &prefix,
        &format!(
            "[{{ name = \"mx2\", url = \"http://127.0.0.1:{p2}\" }}, \
             {{ name = \"mx3\", url = \"http://127.0.0.1:{dead}/\" }}]"
        ),
    );
    let n2 = node(
        "mx2",
        p2,
        &tokens_path,
        &prefix,
        &format!("[{{ name = \"mx1\", url = \"http://127.0.0.1:{p1}\" }}]"),
    );

    // Replies 0-4 pass on node 1 (the 5th opens the breaker in Redis), 5-6 are held there;
    // 7-9 go to node 2, which sees the open breaker and holds them.
    let thread = token("nodes").replace('-', "");
    let held1 = storm::send(n1.sb.port, &thread, 7);
    assert_eq!(held1.len(), 2, "{held1:?}");
    let held2: Vec<String> = (7..10)
        .map(|i| {
            let (tag, answer) = storm::reply(n2.sb.port, &thread, i);
            assert!(answer.contains("held"), "reply {i} on node 2: {answer}");
            tag
        })
        .collect();

    // The command on node 1: both nodes' held mail, each entry with its node; the dead peer
    // is named and the exit code says the list is partial.
    let out = n1
        .sb
        .admin(&["quarantine", "list", "--all-nodes", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("node mx3 (http://127.0.0.1:{dead}/)"))
            && stderr.contains("not listed"),
        "{stderr}"
    );
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").contains(&thread))
        .collect();
    let on = |node: &str| -> Vec<String> {
        ours.iter()
            .filter(|e| e["node"] == node)
            .map(|e| e["message_id"].as_str().unwrap().to_string())
            .collect()
    };
    let mids = |tags: &[String]| -> Vec<String> {
        tags.iter().map(|t| format!("{t}@corp.test")).collect()
    };
    assert_eq!(on("mx1"), mids(&held1), "{ours:?}");
    assert_eq!(on("mx2"), mids(&held2), "{ours:?}");
    for e in &ours {
        assert_held_entry_fields(e);
    }
    let id_of = |tag: &str| -> String {
        ours.iter()
            .find(|e| e["message_id"] == format!("{tag}@corp.test"))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Node 2's first held reply, released with the command on node 1.
    let (tag, id) = (&held2[0], id_of(&held2[0]));
    let out = n1
        .sb
        .admin(&["quarantine", "release", &format!("mx2:{id}")]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("mx2:{id}: released to 1")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let delivered = wait_for(|| {
        let found = relay().sink.mentioning(&format!("<{tag}@corp.test>"));
        (!found.is_empty()).then_some(found)
    })
    .expect("node 2's released reply reaches the sink");
    assert_eq!(delivered[0].addresses(), [storm::LIST]);
    let released_on_2 = |id: &str| {
        n2.audit()
            .into_iter()
            .find(|l| l["action"] == "release" && l["id"] == id)
    };
    let line = released_on_2(&id).expect("node 2's audit log has the release");
    assert_eq!(line["who"], "alice via mx1", "{line}");
    assert!(
        !n2.sb
            .quarantine_list()
            .iter()
            .any(|e| e["id"] == id.as_str()),
        "released, so no longer held on node 2"
    );
    assert!(n1.audit().iter().all(|l| l["id"] != id.as_str()));

    // An unknown node is the administrator's mistake.
    let out = n1
        .sb
        .admin(&["quarantine", "release", &format!("mx9:{id}")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node named \"mx9\""));

    // The console's API on node 1: both nodes' rows with their node, the dead one named.
    let held = http::get(
        p1,
        &format!("/api/held?q={thread}&state=held&nodes=all"),
        &[("Authorization", &bearer)],
    );
    assert_eq!(held.status, 200, "{}", held.body);
    let held = held.json();
    let rows = held["messages"].as_array().unwrap();
    let node_of = |tag: &str| {
        rows.iter()
            .find(|r| r["message_id"] == format!("{tag}@corp.test"))
            .map(|r| r["node"].as_str().unwrap().to_string())
    };
    assert_eq!(node_of(&held1[0]).as_deref(), Some("mx1"), "{held}");
    assert_eq!(node_of(&held2[1]).as_deref(), Some("mx2"), "{held}");
    assert_eq!(node_of(&held2[0]), None, "released on node 2: {held}");
    let nodes = held["nodes"].as_array().unwrap();
    let dead_node = nodes.iter().find(|n| n["name"] == "mx3").unwrap();
    assert_eq!(dead_node["ok"], false, "{held}");
    assert!(
        dead_node["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach")
    );
    // Without nodes=all, node 1's own only.
    let local = http::get(
        p1,
        &format!("/api/held?q={thread}&state=held"),
        &[("Authorization", &bearer)],
    )
    .json();
    assert_eq!(local["messages"].as_array().unwrap().len(), 2, "{local}");
    // The storm list on node 1 counts node 2's held mail too.
    let storms = http::get(p1, "/api/storms?nodes=all", &[("Authorization", &bearer)]).json();
    let ours = storms["storms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subject"].as_str().is_some_and(|t| t.contains(&thread)))
        .unwrap_or_else(|| panic!("no storm for {thread}: {storms}"));
    assert_eq!(ours["held"], 2 + 2, "{ours}");

    // The console's release button on node 1 for node 2's second reply.
    let (tag, id) = (&held2[1], id_of(&held2[1]));
    let answer = http::post_json(
        p1,
        "/api/release",
        &[("Authorization", &bearer)],
        &serde_json::json!({ "ids": [format!("mx2:{id}")] }),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let result = &answer.json()["results"][0];
    assert_eq!(result["id"], format!("mx2:{id}"), "{result}");
    assert_eq!(result["ok"], true, "{result}");
    assert!(
        wait_for(|| !relay()
            .sink
            .mentioning(&format!("<{tag}@corp.test>"))
            .is_empty())
        .is_some()
    );
    assert_eq!(
        released_on_2(&id).expect("audited on node 2")["who"],
        "alice via mx1"
    );
    // A release of the dead node's message fails with the reason, and nothing else happens.
    let answer = http::post_json(
        p1,
        "/api/release",
        &[("Authorization", &bearer)],
        &serde_json::json!({ "ids": [format!("mx3:{id}")] }),
    )
    .json();
    assert_eq!(answer["results"][0]["ok"], false, "{answer}");
    assert!(
        answer["results"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{answer}"
    );
}
