//! Two real `stormbreaker run` proxies on one redis-server in front of a recording sink; the
//! Atos-shaped storm is sent through them round-robin over SMTP: no more than `trip_replies`
//! replies reach the sink, as with one proxy.

use super::reply;
use crate::support::Sink;
use crate::support::clients::Raw;
use crate::support::redis::RedisServer;
use crate::support::stormbreaker::Stormbreaker;

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
fn two_proxies_on_one_redis_deliver_at_most_trip_replies() {
    let redis = RedisServer::shared();
    let sink = Sink::start();
    let extra = format!(
        "[policy]\nfast_audience = 0\naction = \"reject\"\n\
         [state]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"e2e:\"\n\
         [[lists]]\naddress = \"all@atos.test\"\nmembers = 91053\n",
        redis.url()
    );
    let proxies = [
        Stormbreaker::proxy(sink.port(), "", &extra),
        Stormbreaker::proxy(sink.port(), "", &extra),
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
    let delivered = sink.mentioning(subject).len();
    assert_eq!(delivered, 10, "{}\n{}", proxies[0].log(), proxies[1].log());
    let keys = redis.cli(&["--scan"]);
    assert!(keys.contains("{e2e:}open"), "{keys}");
}
