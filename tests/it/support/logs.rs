//! Log lines of in-process library code (tracing events), captured per test thread.
//!
//! Tests run in parallel threads of one process, so a test cannot own the process's tracing
//! subscriber, and a thread-scoped one (`tracing::subscriber::set_default`) misses events
//! whose call site another thread reached first: tracing caches a call site's interest, and
//! with a single scoped subscriber it asks only the registering thread's. So one global
//! subscriber formats every event, and its writer keeps the lines of the threads that asked
//! for them.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

type Buffer = Arc<Mutex<Vec<u8>>>;

thread_local! {
    static CAPTURE: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Writes into the current thread's capture, if it has one; drops the line otherwise.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(buffer) = c.borrow().as_ref() {
                buffer.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines this thread has written since [`capture`]; capturing stops on drop.
pub struct Captured(Buffer);

/// Starts capturing the log lines (INFO and above) of events on this thread. Code under test
/// must run on it: a current-thread runtime's `block_on`, not a multi-thread runtime.
pub fn capture() -> Captured {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| ThreadWriter)
            .with_ansi(false)
            .init();
    });
    let buffer = Buffer::default();
    CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
    Captured(buffer)
}

impl Captured {
    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}
