//! Kafka plumbing shared by every role: client settings, topic creation,
//! the group watchdog, batch reads and offset bookkeeping, dead-letter
//! publishing, the retry helper, and what a role does at start and stop.
//!
//! The contract itself (event types, topic names, keys) is in
//! `seckill-schemas`, which has no runtime dependencies; this crate is what
//! a role needs to run.

mod admin;
mod batch;
mod dead_letter;
pub mod retry;
mod role;
mod settings;
mod watchdog;

pub use admin::ensure_topics;
pub use batch::{commit_on_stop, next_batch, next_offsets, recv_batch, store_done};
pub use dead_letter::{
    dead_letter, failure_headers, forward, header_i64, header_str, headers, ErrorClass,
};
pub use retry::{retry_until, Backoff};
pub use role::{broker_reachable, metrics_text, shutdown_signal};
pub use settings::{KafkaConsumer, KafkaSettings, RoleContext};
