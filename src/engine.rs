//! The decision point: envelope + headers + now -> verdict. Both front ends call `decide`.

use crate::config::Config;
use crate::envelope::Envelope;
use crate::verdict::Verdict;

/// The storm engine as the front ends see it.
pub struct Engine {}

impl Engine {
    pub fn new(_config: &Config) -> Self {
        Engine {}
    }

    /// Decides for one message. `headers` is the raw header block (up to the empty line);
    /// `now_ms` is Unix time in milliseconds, passed in so storms can be simulated.
    pub async fn decide(&self, _envelope: &Envelope, _headers: &[u8], _now_ms: u64) -> Verdict {
        Verdict::DELIVER
    }
}
