//! Operations: metrics (and, with the engine, the admin API).

pub mod metric;
