//! `max_connections_per_client`: one host cannot take every session (behind the proxy the MTA
//! sees one address, so its own anvil limit cannot tell clients apart).

use crate::support::clients::Raw;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{relay, wait_for};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;

/// Connects and reads the first line the proxy sends.
fn first_line(port: u16) -> (BufReader<TcpStream>, String) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(crate::support::wait::PATIENCE))
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    (r, line)
}

#[test]
fn the_fourth_connection_from_one_host_gets_421_and_a_freed_slot_serves_again() {
    let proxy = Stormbreaker::proxy(
        relay().postfix.port,
        "max_connections_per_client = 3\nmax_connections = 100",
        "",
    );
    // The start-up probe's session may hold a slot for a moment: retry until greeted.
    let greeted = || {
        wait_for(|| {
            let (r, line) = first_line(proxy.port);
            line.starts_with("220").then(|| Raw { reader: r })
        })
        .expect("a free slot")
    };
    let mut sessions = vec![greeted(), greeted(), greeted()];
    // All three hold a slot: the fourth from 127.0.0.1 is refused with the per-client text,
    // and the connection is closed.
    let (mut fourth, line) = first_line(proxy.port);
    assert!(
        line.starts_with("421 4.7.0") && line.contains("from your host"),
        "{line}"
    );
    let mut rest = String::new();
    assert_eq!(
        fourth.read_line(&mut rest).unwrap_or(0),
        0,
        "closed after the 421"
    );
    let refused = wait_for(|| proxy.log().contains("per-client connection limit reached"));
    assert!(refused.is_some(), "{}", proxy.log());

    // The three are served as usual.
    for s in sessions.iter_mut() {
        let r = s.cmd("EHLO limit.test");
        assert!(r.starts_with("250"), "{r}");
    }
    // One leaves; a new session from the same host is served once its slot is free.
    let mut leaving = sessions.pop().unwrap();
    assert!(leaving.cmd("QUIT").starts_with("221"));
    assert!(leaving.closed());
    let mut again = greeted();
    assert!(again.cmd("EHLO again.test").starts_with("250"));
    assert!(again.cmd("MAIL FROM:<a@corp.test>").starts_with("250"));
    assert!(again.cmd("QUIT").starts_with("221"));
}
