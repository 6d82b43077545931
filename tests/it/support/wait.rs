//! Waiting for asynchronous effects (a message relayed, a log line written, a port open): the
//! one polling helper. The limit is a guard against hanging, not a speed assertion.

use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long any wait goes on before the test gives up: generous, since the machine running the
/// suite may be busy (two cores, parallel tests).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// What a polled check returns: `true` or `Some(value)` when the wait is over.
pub trait Ready {
    type Value;
    fn ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `check` every 50 ms until it is ready, for at most [`PATIENCE`]. Returns its value, or
/// None when it never got ready: callers `expect` what they waited for, or assert with the
/// logs that explain a failure.
pub fn wait_for<R: Ready>(mut check: impl FnMut() -> R) -> Option<R::Value> {
    let start = Instant::now();
    loop {
        if let Some(value) = check().ready() {
            return Some(value);
        }
        if start.elapsed() > PATIENCE {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16) -> bool {
    wait_for(|| TcpStream::connect(("127.0.0.1", port)).is_ok()).is_some()
}
