//! SMTP: wire syntax and framing, the proxy session, the upstream client.
pub mod server;
