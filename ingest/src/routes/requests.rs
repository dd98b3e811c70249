use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use redis::aio::ConnectionManager;
use seckill_schemas::state::{LookupKind, Position};
use seckill_schemas::{Decision, DecisionStatus, RequestAccepted};

use crate::identity::{Caller, Role};
use crate::position::Placed;
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
    let raw = crate::lookup::read(&mut con, &app.keys, LookupKind::Result, request_id)
        .await
        .map_err(redis_down)?;
    current_result(app, &mut con, request_id, raw).await
}

/// The result stored as `raw` for `request_id`, if readable and current.
async fn current_result(
    app: &App,
    con: &mut ConnectionManager,
    request_id: &str,
    raw: Option<String>,
) -> Result<Option<serde_json::Value>, Problem> {
    let Some(value) = raw.and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok()) else {
        return Ok(None);
    };
    let Some(campaign) = value.get("campaign_id").and_then(|c| c.as_str()) else {
        return Ok(Some(value));
    };
    let current: bool = redis::cmd("HEXISTS")
        .arg(super::buckets::requests_key(app, campaign, &value).await)
        .arg(request_id)
        .query_async(con)
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
/// A caller reads the results of their own requests; an admin any. The
/// same goes for a pending purchase's place in line (see
/// [`pending_answer`]).
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
    // The result and the position in one round trip: a pending request,
    // which is what gets polled, needs both.
    let mut con = app.redis.clone();
    let windows = match crate::lookup::windows(&mut con, &app.keys).await {
        Ok(w) => w,
        Err(e) => return redis_down(e).into_response(),
    };
    let mut pipe = redis::pipe();
    crate::lookup::queue_reads(
        &mut pipe,
        &app.keys,
        windows,
        LookupKind::Result,
        &request_id,
    );
    crate::position::queue_position_reads(&mut pipe, &app.keys, &request_id);
    // Four replies for the result, then four for the position.
    type S = Option<String>;
    type Read = (S, S, S, S, S, S, S, S);
    let read: Result<Read, _> = pipe.query_async(&mut con).await;
    let (result, position) = match read {
        Ok((a, b, c, d, e, f, g, h)) => (
            crate::lookup::first([a, b, c, d]),
            crate::lookup::first([e, f, g, h]),
        ),
        Err(e) => return redis_down(e).into_response(),
    };
    match current_result(&app, &mut con, &request_id, result).await {
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
        Ok(None) => pending_answer(&app, &mut con, &caller, request_id, position).await,
        Err(p) => p.into_response(),
    }
}

/// `pending`, with the request's place in line when its position is known
/// (`position`, as stored) and the caller may see it.
///
/// A stranger is refused exactly as for the request's result (403, and
/// nothing of the place): the same id will say as much once decided.
/// Request ids are the caller's own to choose only within their own user
/// (an Idempotency-Key is hashed with the user and the campaign), so no
/// one can make ingest record a position under another's request id, and
/// the user stored with it is the one who sent the request. A request
/// with no position (not recorded yet, dropped, expired, produced by an
/// upstream service, or a command) answers plain `pending`, as an unknown
/// id does.
async fn pending_answer(
    app: &App,
    con: &mut ConnectionManager,
    caller: &Caller,
    request_id: String,
    position: Option<String>,
) -> Response {
    let position = position.and_then(|raw| match Position::parse(&raw) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(error = %e, "unreadable request position; ignored");
            None
        }
    });
    let queue = match position {
        Some(p) if !caller.may_see(&p.user_id) => {
            return crate::identity::forbidden("the request is another user's").into_response();
        }
        Some(p) => {
            let placed = Placed {
                partition: p.partition,
                offset: p.offset,
            };
            // The place is a convenience: without it the answer is still
            // true.
            match app.line.place(con, placed).await {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::debug!(error = %e, "could not read the processors' progress");
                    None
                }
            }
        }
        None => None,
    };
    Json(RequestAccepted {
        request_id,
        status: DecisionStatus::Pending,
        queue,
    })
    .into_response()
}
