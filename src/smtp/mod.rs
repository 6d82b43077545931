//! SMTP: wire syntax and framing, the proxy session, the upstream client.
//!
//! - `command`: client command lines (smtp-proto) and the canonical MAIL/RCPT sent upstream.
//! - `data`: DATA framing, strict end of data, dot-(un)stuffing.
//! - `extensions`: EHLO keywords, upstream's and ours.
//! - `upstream`: the SMTP client to the MTA.
//! - `pool`: idle upstream connections kept for the next client session.
//! - `session`: one client session's command loop.
//! - `transfer`: the DATA phase, where the engine's verdict is acted on.
//! - `server`: the listener, connection limit, graceful shutdown.
//! - `tls`: STARTTLS on the client side (certificate loading, the client stream).

pub mod command;
pub mod data;
pub mod extensions;
pub mod pool;
pub mod server;
pub mod session;
pub mod tls;
pub mod transfer;
pub mod upstream;
