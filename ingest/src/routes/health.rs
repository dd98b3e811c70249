use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::identity::Role;
use crate::problem::Problem;
use crate::state::AppState;

/// Liveness: the process answers. Checks no dependency on purpose, so a
/// broker outage does not get every ingest restarted.
pub(super) async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: broker, Redis and the order store all answer, and the
/// processors and sinks behind this gateway keep up (no stalled group).
/// A failed check names what is down, never an address or credential.
pub(super) async fn ready(State(app): State<AppState>) -> Response {
    let limit = Duration::from_secs(3);
    let kafka = tokio::time::timeout(limit, seckill_kafka::broker_reachable(&app.producer));
    let mut con = app.redis.clone();
    let redis = tokio::time::timeout(limit, async move {
        redis::cmd("PING").query_async::<String>(&mut con).await
    });
    let store = tokio::time::timeout(limit, app.store.ping());
    let (kafka, redis, store) = tokio::join!(kafka, redis, store);
    let verdict = |ok: bool, what: &str| if ok { "ok".to_owned() } else { what.to_owned() };
    let stalls = app.stalls.current();
    let checks = json!({
        "kafka": verdict(matches!(kafka, Ok(Ok(()))), "unreachable"),
        "redis": verdict(matches!(redis, Ok(Ok(_))), "unreachable"),
        "store": verdict(matches!(store, Ok(Ok(()))), "not answering"),
        "pipeline": verdict(stalls.is_empty(), &stalls.join("; ")),
    });
    let all_ok = checks
        .as_object()
        .is_some_and(|o| o.values().all(|v| v == "ok"));
    if all_ok {
        Json(json!({"status": "ready", "checks": checks, "auth": app.identity.describe()}))
            .into_response()
    } else {
        Problem::unavailable(format!(
            "not ready: {checks} (auth: {})",
            app.identity.describe()
        ))
        .into_response()
    }
}

pub(super) async fn metrics() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        seckill_kafka::metrics_text(),
    )
        .into_response()
}

/// `GET /v1/stats`: the whole system at a glance.
pub(super) async fn system_stats(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(p) = app.identity.with_role(&headers, Role::Admin).await {
        return p.into_response();
    }
    let mut con = app.redis.clone();
    let campaigns: Result<u64, _> = redis::cmd("SCARD")
        .arg(app.keys.campaigns())
        .query_async(&mut con)
        .await;
    let counters: serde_json::Map<String, serde_json::Value> = prometheus::gather()
        .iter()
        .filter(|f| f.name() == "seckill_ingest_purchases_total")
        .flat_map(|f| f.get_metric().iter())
        .filter_map(|m| {
            let outcome = m.get_label().first()?.value().to_owned();
            Some((outcome, json!(m.get_counter().get_value() as u64)))
        })
        .collect();
    match campaigns {
        Ok(n) => Json(json!({
            "campaigns": n,
            "uptime_secs": app.started.elapsed().as_secs(),
            "inflight": app.config.max_inflight - app.inflight.available_permits(),
            "purchases": counters,
        }))
        .into_response(),
        Err(e) => Problem::unavailable(format!("Redis unavailable: {e}")).into_response(),
    }
}
