//! Durable hold of messages a breaker stopped, and their release.

pub mod cli;
