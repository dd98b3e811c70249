//! Everything the processors count or log about their work, in one place.
//! Metric names are written here and nowhere else.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    Histogram, HistogramVec, IntCounter, IntCounterVec,
};

// Registration only fails on a duplicate name, and each name is registered
// once, here.
static DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_decisions_total",
        "Requests decided by the processors, by outcome",
        &["outcome"]
    )
    .expect("metric registered once")
});

static LUA_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "seckill_lua_duration_seconds",
        "Time of one decision script call (one campaign of one batch)",
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]
    )
    .expect("metric registered once")
});

static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "seckill_processor_stage_duration_seconds",
        "Time one batch spends in a processor stage: parse (read and check the \
         messages), decide (the Lua calls), emit (events and lookups built, \
         lookups written, events handed to the producer), settle (until the \
         broker acknowledged every event)",
        &["stage"],
        vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]
    )
    .expect("metric registered once")
});

static BATCH_MESSAGES: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "seckill_processor_batch_messages",
        "Messages per processor batch",
        vec![1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0]
    )
    .expect("metric registered once")
});

static BATCH_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_processor_retries_total",
        "Batch steps retried after a transient failure, by step",
        &["step"]
    )
    .expect("metric registered once")
});

static FORWARDED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seckill_requests_forwarded_total",
        "Request-topic messages found on another partition than their key maps to \
         under murmur2 and forwarded to it (an upstream producer partitions differently)"
    )
    .expect("metric registered once")
});

static DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_requests_dead_lettered_total",
        "Request-topic messages sent to the requests DLQ, by error class",
        &["error_class"]
    )
    .expect("metric registered once")
});

static EVENTS_EMITTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seckill_order_events_emitted_total",
        "Events the processors produced to the orders topic"
    )
    .expect("metric registered once")
});

pub(crate) fn batch_received(messages: usize) {
    BATCH_MESSAGES.observe(messages as f64);
}

/// A batch spent `seconds` in `stage` (`parse`, `decide`, `emit`, `settle`).
pub(crate) fn stage(stage: &'static str, seconds: f64) {
    STAGE_SECONDS.with_label_values(&[stage]).observe(seconds);
}

pub(crate) fn decided(outcome: &str) {
    DECISIONS.with_label_values(&[outcome]).inc();
}

pub(crate) fn lua_call(seconds: f64) {
    LUA_SECONDS.observe(seconds);
}

pub(crate) fn events_emitted(n: usize) {
    EVENTS_EMITTED.inc_by(n as u64);
}

pub(crate) fn step_failed(step: &'static str, error: &dyn std::fmt::Display) {
    BATCH_RETRIES.with_label_values(&[step]).inc();
    tracing::warn!(step, error = %error, "batch step failed; retrying the batch (decisions are idempotent)");
}

pub(crate) fn forwarded(from: i32, to: i32) {
    FORWARDED.inc();
    tracing::debug!(
        from,
        to,
        "request forwarded to the partition its key maps to"
    );
}

pub(crate) fn dead_lettered(error_class: &str, reason: &str, partition: i32, offset: i64) {
    DEAD_LETTERED.with_label_values(&[error_class]).inc();
    tracing::warn!(
        error_class,
        reason,
        partition,
        offset,
        "request sent to the dead-letter topic"
    );
}

static BUCKET_COMMANDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_bucket_commands_total",
        "Commands between a campaign's stock buckets sent by the processors \
         (borrow: a drained bucket asks a sibling; transfer: the units lent back)",
        &["command"]
    )
    .expect("metric registered once")
});

static BUCKET_UNITS_LENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seckill_bucket_units_lent_total",
        "Units a stock bucket lent to a sibling (sent in a transfer)"
    )
    .expect("metric registered once")
});

static BUCKET_REROUTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seckill_bucket_purchases_rerouted_total",
        "Purchases produced under another key of their campaign than their \
         user's stock bucket, forwarded to that bucket's key"
    )
    .expect("metric registered once")
});

pub(crate) fn bucket_command(command: &'static str, units: u64) {
    BUCKET_COMMANDS.with_label_values(&[command]).inc();
    if command == "transfer" {
        BUCKET_UNITS_LENT.inc_by(units);
    }
    tracing::debug!(command, units, "stock bucket command sent");
}

pub(crate) fn bucket_rerouted(from: &str, to: &str) {
    BUCKET_REROUTED.inc();
    tracing::debug!(from, to, "purchase forwarded to its user's stock bucket");
}
