//! The SMTP proxy front end: clients in front, the MTA behind.
//!
//! - `server`: the listener, connection limits (total and per client), graceful shutdown.
//! - `session`: one client session: a single loop over its state (commands, DATA, AUTH).
//! - `data`: a message's DATA phase, where the engine's verdict is acted on.
//! - `upstream`: the link to the MTA, the only code that sends a final dot.
//! - `pool`: idle upstream connections kept for the next client session.
//! - `tls`: the client stream, plain or TLS (STARTTLS or implicit).

pub mod data;
pub mod pool;
pub mod server;
pub mod session;
pub mod tls;
pub mod upstream;
