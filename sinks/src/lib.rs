//! The sinks: a consumer group on the orders topic that persists every order
//! to the order store, idempotently and with a status that only moves forward.

mod config;
mod internal_events;
mod run;

pub use config::SinkConfig;
pub use run::{run, SinkStartError};
