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
mod partition;
mod progress;
mod resume;
pub mod retry;
mod role;
mod settings;
mod watchdog;

pub use admin::{ensure_topics, partition_count, TopicReport, TopicSettings};
pub use batch::{commit_on_stop, next_batch, next_offsets, recv_batch, store_done};
pub use dead_letter::{
    dead_letter, failure_headers, forward, header_i64, header_str, headers, ErrorClass,
};
pub use partition::{murmur2, partition_for};
pub use progress::{watch_progress, Stalls, Watched};
pub use retry::{retry_until, Backoff};
pub use role::{broker_reachable, close_on_stop, metrics_text, shutdown_signal, CLOSE_ON_STOP};
pub use settings::{
    parse_property, BadProperty, KafkaConsumer, KafkaSettings, RoleContext, FETCH_WAIT_MS,
};
