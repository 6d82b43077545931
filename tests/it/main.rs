//! The integration tests: one binary (the crate is linked once), modules by area, one harness
//! in `support`. The tests talk to real peers (private Postfix instances, redis-server, swaks,
//! Python's smtplib, the stormbreaker binary itself) on free loopback ports, and run in
//! parallel threads: each finds its own messages among the shared peers' by a unique token.

mod support;

mod cli;
mod console;
mod corpus;
mod interop;
mod lists;
mod logs;
mod metrics;
mod milter;
mod package;
mod proxy;
mod proxy_tls;
mod quarantine;
mod redis;
mod reload;
mod replay;
mod storm;
mod upstream_reuse;
