//! Two real `stormbreaker run` proxies on one redis-server in front of a recording sink; the
//! Atos-shaped storm is sent through them round-robin over SMTP: no more than `trip_replies`
//! replies reach the sink, as with one proxy.

mod common;
mod redis_support;

use common::{Proxy, Raw};
use redis_support::{RedisServer, reply};

fn send(port: u16, from: &str, content: &str) -> String {
    let mut c = Raw::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    assert!(c.cmd("RCPT TO:<all@atos.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(content.as_bytes());
    let reply = c.cmd("\r\n.");
    c.cmd("QUIT");
    reply
}

#[test]
#[ignore = "needs service wiring: service.rs must build the engine with Engine::from_config"]
fn two_proxies_on_one_redis_deliver_at_most_trip_replies() {
    let redis = RedisServer::start_new();
    let sink = common::sink();
    let extra = format!(
        "[policy]\nfast_audience = 0\naction = \"reject\"\n\
         [state]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"e2e:\"\n\
         [[lists]]\naddress = \"all@atos.test\"\nmembers = 91053\n",
        redis.url()
    );
    let proxies = [
        Proxy::start(sink.addr.port(), "", &extra),
        Proxy::start(sink.addr.port(), "", &extra),
    ];
    let subject = "Atos Origin - new office opening";
    for i in 0..40usize {
        let content = format!(
            "{}From: user{i}@atos.test\r\n\r\nReply all.\r\n",
            reply(i, subject)
        );
        let answer = send(proxies[i % 2].port, &format!("user{i}@atos.test"), &content);
        assert!(
            answer.starts_with('2') || answer.starts_with('5'),
            "reply {i}: {answer}\n{}",
            proxies[i % 2].log()
        );
    }
    let delivered = sink
        .received()
        .iter()
        .filter(|m| String::from_utf8_lossy(&m.content).contains(subject))
        .count();
    assert_eq!(delivered, 10, "{}\n{}", proxies[0].log(), proxies[1].log());
    let keys = redis.cli(&["--scan"]);
    assert!(keys.contains("{e2e:}open"), "{keys}");
}
