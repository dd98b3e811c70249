//! What ingest counts and logs, in one place.

use std::sync::LazyLock;

use prometheus::{register_histogram, register_int_counter_vec, Histogram, IntCounterVec};

// Each name is registered once, here, so registration cannot fail.
static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_http_requests_total",
        "HTTP requests answered by ingest, by route and status code",
        &["route", "status"]
    )
    .expect("metric registered once")
});

static PURCHASES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_ingest_purchases_total",
        "Purchase requests by how ingest answered them (queued, fast_sold_out, fast_not_active, replayed, refused)",
        &["outcome"]
    )
    .expect("metric registered once")
});

static PRODUCE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "seckill_ingest_produce_duration_seconds",
        "Time until the broker acknowledged a queued request",
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]
    )
    .expect("metric registered once")
});

static POSITIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "seckill_ingest_positions_total",
        "Queued purchases' positions (partition, offset) for their place in line, by what became \
         of them (written, dropped: the writer's queue was full, failed: Redis refused the write)",
        &["outcome"]
    )
    .expect("metric registered once")
});

pub(crate) fn http_answered(route: &str, status: u16) {
    HTTP_REQUESTS
        .with_label_values(&[route, &status.to_string()])
        .inc();
}

pub(crate) fn purchase(outcome: &'static str) {
    PURCHASES.with_label_values(&[outcome]).inc();
}

pub(crate) fn produced(seconds: f64) {
    PRODUCE_SECONDS.observe(seconds);
}

pub(crate) fn produce_failed(request_id: &str, error: &dyn std::fmt::Display) {
    PURCHASES.with_label_values(&["unknown_outcome"]).inc();
    tracing::warn!(request_id, error = %error, "no acknowledgement from the broker; answered 503 (outcome unknown)");
}

/// `n` positions were written, dropped or lost.
pub(crate) fn positions(outcome: &'static str, n: usize) {
    POSITIONS
        .with_label_values(&[outcome])
        .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
}
