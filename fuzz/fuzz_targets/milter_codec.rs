//! Feeds arbitrary bytes to the milter codec and the session state machine: neither may panic,
//! and a decoded stream re-encodes to packets that decode to the same commands.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormbreaker::milter::codec::{decode, encode_command};
use stormbreaker::milter::session::{Session, Step};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut session = Session::new(true);
    while let Ok(Some((command, used))) = decode(rest) {
        rest = &rest[used..];
        let mut again = Vec::new();
        encode_command(&command, &mut again);
        let (round_trip, _) = decode(&again).expect("re-encoded packet decodes").expect("whole");
        assert_eq!(round_trip, command);
        match session.handle(command) {
            Ok(Step::Decide(_)) => {
                let _ = session.verdict(&stormbreaker::verdict::Verdict::DELIVER);
            }
            Ok(Step::Close) | Err(_) => break,
            Ok(Step::Reply(_)) => {}
        }
    }
});
