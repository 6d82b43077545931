//! Two real `stormbreaker run` proxies on one redis-server in front of a recording sink; the
//! Atos-shaped storm is sent through them round-robin over SMTP: no more than `trip_replies`
//! replies reach the sink, as with one proxy.

use super::{reply, send};
use crate::support::Sink;
use crate::support::redis::RedisServer;
use crate::support::stormbreaker::Stormbreaker;

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
