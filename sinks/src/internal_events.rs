//! What the sinks count and log, in one place.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, Histogram, IntCounter,
    IntCounterVec,
};

// Each name is registered once, here, so registration cannot fail.
static EVENTS_STORED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seckill_sink_events_applied_total",
        "Order-topic events applied to the order store"
    )
    .expect("metric registered once")
});

static WRITE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "seckill_store_write_duration_seconds",
        "Time of one batch write to the order store",
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]
    )
    .expect("metric registered once")
});

static WRITE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_store_write_failures_total",
        "Failed batch writes to the order store, by error class",
        &["error_class"]
    )
    .expect("metric registered once")
});

static DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_orders_dead_lettered_total",
        "Order-topic messages sent to the orders DLQ, by error class",
        &["error_class"]
    )
    .expect("metric registered once")
});

static FULFILMENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seckill_fulfilment_events_total",
        "Fulfilment events published for paid orders and free prizes"
    )
    .expect("metric registered once")
});

static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_sink_retries_total",
        "Order events sent to a retry tier, by tier",
        &["tier"]
    )
    .expect("metric registered once")
});

pub(crate) fn retried(tier: usize) {
    RETRIES.with_label_values(&[&tier.to_string()]).inc();
}

static DLQ_BACKLOG: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    prometheus::register_int_gauge_vec!(
        "seckill_dlq_backlog_messages",
        "Messages in a dead-letter topic (high minus low watermark), by topic",
        &["topic"]
    )
    .expect("metric registered once")
});

static REPLAYED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "seckill_sink_replayed_events_total",
        "Order events the sink received back from a DLQ replay"
    )
    .expect("metric registered once")
});

pub(crate) fn dlq_backlog(topic: &str, messages: i64) {
    DLQ_BACKLOG.with_label_values(&[topic]).set(messages);
}

pub(crate) fn replayed(n: usize) {
    REPLAYED.inc_by(n as u64);
}

pub(crate) fn fulfilments(n: usize) {
    FULFILMENTS.inc_by(n as u64);
}

pub(crate) fn applied(events: usize, seconds: f64) {
    EVENTS_STORED.inc_by(events as u64);
    WRITE_SECONDS.observe(seconds);
}

pub(crate) fn write_failed(error_class: &'static str, error: &dyn std::fmt::Display) {
    WRITE_FAILURES.with_label_values(&[error_class]).inc();
    tracing::warn!(error_class, error = %error, "order store write failed");
}

pub(crate) fn dead_lettered(error_class: &str, reason: &str, partition: i32, offset: i64) {
    DEAD_LETTERED.with_label_values(&[error_class]).inc();
    tracing::warn!(
        error_class,
        reason,
        partition,
        offset,
        "order event sent to the dead-letter topic"
    );
}
