use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use seckill_schemas::{Decision, DecisionStatus, RequestAccepted};

use crate::identity::Role;
use crate::problem::Problem;
use crate::state::App;
use crate::state::AppState;

fn redis_down(e: redis::RedisError) -> Problem {
    Problem::unavailable(format!("Redis unavailable: {e}")).retry_after(1)
}

/// The result recorded for a request (a purchase decision, a pay or cancel
/// result, a campaign command's outcome), if any and still current: a
/// campaign reset forgets its requests, and with them these results.
pub(crate) async fn read_result_json(
    app: &App,
    request_id: &str,
) -> Result<Option<serde_json::Value>, Problem> {
    let mut con = app.redis.clone();
    let raw: Option<String> = redis::cmd("GET")
        .arg(app.keys.decision(request_id))
        .query_async(&mut con)
        .await
        .map_err(redis_down)?;
    let Some(value) = raw.and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok()) else {
        return Ok(None);
    };
    let Some(campaign) = value.get("campaign_id").and_then(|c| c.as_str()) else {
        return Ok(Some(value));
    };
    let current: bool = redis::cmd("HEXISTS")
        .arg(super::buckets::requests_key(app, campaign, &value).await)
        .arg(request_id)
        .query_async(&mut con)
        .await
        .map_err(redis_down)?;
    Ok(current.then_some(value))
}

/// The purchase decision recorded for a request, if any.
pub(crate) async fn read_decision(
    app: &App,
    request_id: &str,
) -> Result<Option<Decision>, Problem> {
    Ok(read_result_json(app, request_id)
        .await?
        .and_then(|v| serde_json::from_value(v).ok()))
}

/// `GET /v1/requests/{id}`: the decision, or `pending` while there is none.
/// Reads what the processor recorded in Redis, so it does not depend on the
/// sink having caught up.
/// A caller reads the results of their own requests; an admin any.
pub(super) async fn get(
    State(app): State<AppState>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match app.identity.caller(&headers).await {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    if request_id.is_empty() || request_id.len() > 128 {
        return Problem::bad_request("request_id must be 1-128 characters").into_response();
    }
    match read_result_json(&app, &request_id).await {
        Ok(Some(d)) => {
            // A result names its user, except a campaign command's (admin).
            let owner = d.get("user_id").and_then(|u| u.as_str());
            let allowed = match owner {
                Some(u) => caller.may_see(u),
                None => caller.has(Role::Admin),
            };
            if allowed {
                Json(d).into_response()
            } else {
                crate::identity::forbidden("the request is another user's").into_response()
            }
        }
        Ok(None) => Json(RequestAccepted {
            request_id,
            status: DecisionStatus::Pending,
        })
        .into_response(),
        Err(p) => p.into_response(),
    }
}
