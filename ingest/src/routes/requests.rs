use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use seckill_schemas::{Decision, DecisionStatus, RequestAccepted};

use crate::problem::Problem;
use crate::state::App;
use crate::state::AppState;

/// The decision recorded for a request, if any.
pub(crate) async fn read_decision(
    app: &App,
    request_id: &str,
) -> Result<Option<Decision>, Problem> {
    let mut con = app.redis.clone();
    let raw: Option<String> = redis::cmd("GET")
        .arg(app.keys.decision(request_id))
        .query_async(&mut con)
        .await
        .map_err(|e| Problem::unavailable(format!("Redis unavailable: {e}")).retry_after(1))?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

/// `GET /v1/requests/{id}`: the decision, or `pending` while there is none.
/// Reads what the processor recorded in Redis, so it does not depend on the
/// sink having caught up.
pub(super) async fn get(State(app): State<AppState>, Path(request_id): Path<String>) -> Response {
    if request_id.is_empty() || request_id.len() > 128 {
        return Problem::bad_request("request_id must be 1-128 characters").into_response();
    }
    match read_decision(&app, &request_id).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => Json(RequestAccepted {
            request_id,
            status: DecisionStatus::Pending,
        })
        .into_response(),
        Err(p) => p.into_response(),
    }
}
