//! Durable hold of messages a breaker stopped, and their release.
//!
//! - `store`: the quarantine folder (durable write, list, read, delete, purge).
//! - `record`: the self-checking file format of one held message.
//! - `journal`: per-message release journal (which recipients the upstream accepted).
//! - `release`: SMTP re-injection with the original envelope.
//! - `audit`: the append-only audit log.
//! - `expiry`: the retention task the server runs.
//! - `cli`: `stormbreaker quarantine ...`.

pub mod audit;
pub mod cli;
pub mod expiry;
pub mod journal;
pub mod record;
pub mod release;
pub mod store;

pub use record::{HeldMeta, HeldSummary};
pub use release::{ReleaseError, ReleaseOptions, ReleaseReport};
pub use store::{HeldId, HeldMessage, HoldWriter, ListFilter, Quarantine, QuarantineError, State};
