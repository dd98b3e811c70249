//! The sinks: a consumer group on the orders topic that persists every order
//! to the order store, idempotently and with a status that only moves forward.

mod config;
mod internal_events;
mod run;
pub mod store;

pub use config::SinkConfig;
pub use run::{run, SinkStartError};
pub use store::{open_store, FaultInjection, OrderFilter, OrderStore, StoreError};
