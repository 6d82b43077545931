//! Reply-all storms: simulated through the engine with the clock passed in, and sent for real
//! through the proxy (and the milter) in front of Postfix.

mod both;
mod figures;
mod ids;
mod people;
mod proxy;
mod restart;
mod sim;
mod split;

use crate::support::clients::{swaks, text};
use crate::support::{relay, token, wait_for};

/// Sends a marker straight to the suite's Postfix and waits for it at the sink: Postfix has
/// then relayed what came before it, so counts of what was delivered are final.
fn settle() {
    let marker = token("marker");
    let out = swaks(
        relay().postfix.port,
        &[
            "--from",
            "m@corp.test",
            "--to",
            "m@corp.test",
            "--header",
            &format!("Subject: {marker}"),
        ],
    );
    assert!(text(&out).contains("250"), "{}", text(&out));
    assert!(
        wait_for(|| !relay().sink.mentioning(&marker).is_empty()).is_some(),
        "marker not delivered"
    );
}

/// The texts of the admin alerts at the suite's sink that mention `needle`.
fn admin_alerts(needle: &str) -> Vec<String> {
    relay()
        .sink
        .mentioning(needle)
        .iter()
        .filter(|m| m.rcpts.iter().any(|r| r.contains("admin@corp.test")))
        .map(|m| m.text().to_string())
        .collect()
}
