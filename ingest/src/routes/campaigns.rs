use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::BTreeMap;

use serde_json::json;

use seckill_schemas::state::{meta, RecordError};
use seckill_schemas::{
    now_ms, validate_campaign_id, AddStockBody, CampaignAction, CampaignApplied, CampaignCommand,
    CampaignOutcome, CampaignSpec, DecisionStatus, RefusalReason, RequestEvent, UpsertCampaign,
    UserParticipation, SCHEMA_VERSION,
};

use super::queue::submit;
use crate::body;
use crate::cache::{read_count, read_definition, read_view, ReadError};
use crate::identity::Role;
use crate::listener::Wakeup;
use crate::problem::Problem;
use crate::state::{App, AppState};

/// How long a create waits for the processor to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(10);

fn redis_down(e: redis::RedisError) -> Problem {
    Problem::unavailable(format!("Redis unavailable: {e}")).retry_after(1)
}

/// A campaign field this build cannot read: the state is damaged or was
/// written by a build that disagrees with this one. Retrying will not help.
fn unreadable(e: RecordError) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        format!("campaign state unreadable: {e}"),
    )
}

fn read_failed(e: ReadError) -> Problem {
    match e {
        ReadError::Redis(e) => redis_down(e),
        ReadError::Record(e) => unreadable(e),
    }
}

pub(super) async fn view_response(app: &App, id: &str, status: StatusCode) -> Response {
    let mut con = app.redis.clone();
    match read_view(&mut con, &app.keys, &app.config.draw_key, id).await {
        Ok(Some(view)) => (status, Json(view)).into_response(),
        Ok(None) => Problem::not_found(format!("campaign {id:?} does not exist")).into_response(),
        Err(e) => read_failed(e).into_response(),
    }
}

/// `POST /v1/campaigns`: create (prewarm) a campaign. The definition travels
/// to the campaign's processor as a command, so the processor stays the only
/// writer of the campaign's state.
pub(super) async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match create_inner(&app, &headers, body).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn create_inner(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    app.identity.with_role(headers, Role::Admin).await?;
    let mut spec: CampaignSpec = body::parse_hinted(
        body,
        app.config.max_body_bytes,
        CampaignSpec::REFUSED_FIELDS,
    )?;
    spec.validate()
        .map_err(|e| Problem::bad_request(format!("invalid campaign: {e}")))?;
    let mut con = app.redis.clone();
    let existing = read_definition(&mut con, &app.keys, &spec.id)
        .await
        .map_err(redis_down)?;
    super::buckets::choose(app, &mut spec, existing.as_deref()).await?;
    let ours = serde_json::to_string(&spec).unwrap_or_default();
    let request_id = uuid::Uuid::new_v4().to_string();
    let event = RequestEvent::UpsertCampaign(UpsertCampaign {
        schema_version: SCHEMA_VERSION,
        request_id: request_id.clone(),
        campaign: spec.clone(),
        requested_at_ms: Some(now_ms()),
        auth: None,
    });
    match existing {
        Some(existing) if existing == ours => {
            super::buckets::ensure_siblings(app, &spec, &ours, &event).await?;
            return Ok(view_response(app, &spec.id, StatusCode::OK).await);
        }
        Some(_) => return Err(conflict(&spec.id)),
        None => {}
    }
    // Every other stock bucket's create first (see create_siblings).
    super::buckets::create_siblings(app, &spec, &event).await?;
    let check = || {
        let mut con = app.redis.clone();
        let ours = ours.clone();
        let id = spec.id.clone();
        async move {
            match read_definition(&mut con, &app.keys, &id).await {
                Ok(Some(d)) if d == ours => Some(CampaignOutcome::Created),
                Ok(Some(_)) => Some(CampaignOutcome::Conflict),
                _ => None,
            }
        }
    };
    let pick = |w| match w {
        Wakeup::Campaign(a) => Some(a.outcome),
        _ => None,
    };
    match submit(app, &event, Some(APPLY_WAIT), pick, check).await? {
        Some(CampaignOutcome::Created) => {
            super::buckets::wait_created(app, &spec, &ours).await?;
            Ok(view_response(app, &spec.id, StatusCode::CREATED).await)
        }
        Some(CampaignOutcome::Unchanged) => {
            super::buckets::wait_created(app, &spec, &ours).await?;
            Ok(view_response(app, &spec.id, StatusCode::OK).await)
        }
        Some(CampaignOutcome::Conflict) => Err(conflict(&spec.id)),
        Some(CampaignOutcome::Applied | CampaignOutcome::Refused) => Err(Problem::conflict(
            "the request id was answered for another command; send the create again",
        )),
        None => Err(Problem::unavailable(
            "the campaign was queued but not applied within 10 s (are the processors running?); \
             sending the same definition again is safe",
        )
        .request_id(request_id)
        .retry_after(2)),
    }
}

fn conflict(id: &str) -> Problem {
    Problem::conflict(format!(
        "campaign {id:?} already exists with a different definition; pick another id"
    ))
}

/// `GET /v1/campaigns/{id}`.
pub(super) async fn get(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    if let Err(e) = validate_campaign_id(&id) {
        return Problem::bad_request(e.to_string()).into_response();
    }
    view_response(&app, &id, StatusCode::OK).await
}

/// Queues an admin action for a campaign and waits for the processor to
/// apply it; answers with the campaign as it is then.
async fn command(
    app: &App,
    headers: &HeaderMap,
    id: &str,
    action: CampaignAction,
) -> Result<Response, Problem> {
    app.identity.with_role(headers, Role::Admin).await?;
    validate_campaign_id(id).map_err(|e| Problem::bad_request(e.to_string()))?;
    let mut con = app.redis.clone();
    let Some(def) = read_definition(&mut con, &app.keys, id)
        .await
        .map_err(redis_down)?
    else {
        return Err(Problem::not_found(format!(
            "campaign {id:?} does not exist"
        )));
    };
    // A campaign with stock buckets: every bucket applies the action.
    let buckets = serde_json::from_str::<CampaignSpec>(&def).map_or(1, |s| s.bucket_count());
    if buckets > 1 {
        return super::buckets::command_all(app, id, action, buckets).await;
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let event = RequestEvent::CampaignCommand(CampaignCommand {
        schema_version: SCHEMA_VERSION,
        request_id: request_id.clone(),
        campaign_id: id.to_owned(),
        action,
        requested_at_ms: Some(now_ms()),
        auth: None,
    });
    let check = || async { read_result::<CampaignApplied>(app, &request_id).await };
    let pick = |w| match w {
        Wakeup::Campaign(a) => Some(a),
        _ => None,
    };
    match submit(app, &event, Some(APPLY_WAIT), pick, check).await? {
        Some(a) if a.outcome == CampaignOutcome::Applied => {
            Ok(view_response(app, id, StatusCode::OK).await)
        }
        Some(a) => Err(Problem::conflict(format!(
            "{} refused: {}",
            a.action,
            a.reason.map_or("refused", RefusalReason::as_str)
        ))),
        None => Err(Problem::unavailable(
            "the command was queued but not applied within 10 s (are the processors running?)",
        )
        .request_id(request_id)
        .retry_after(2)),
    }
}

/// `POST /v1/campaigns/{id}/stock` {quantity, prize_id?}: add units mid-sale.
pub(super) async fn add_stock(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let b: AddStockBody = body::parse(body, app.config.max_body_bytes)?;
        if b.quantity == 0 || b.quantity > 1_000_000_000 {
            return Err(Problem::bad_request(
                "quantity must be between 1 and 1000000000",
            ));
        }
        command(
            &app,
            &headers,
            &id,
            CampaignAction::AddStock {
                quantity: b.quantity,
                prize_id: b.prize_id,
            },
        )
        .await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/campaigns/{id}/close`: stop taking requests now.
pub(super) async fn close(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    command(&app, &headers, &id, CampaignAction::Close)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/campaigns/{id}/publish`: take a draft live.
pub(super) async fn publish(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    command(&app, &headers, &id, CampaignAction::Publish)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/campaigns/{id}/reset` (tests only; off unless enabled): every
/// unit back, every user, order and decision of the campaign forgotten.
pub(super) async fn reset(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(p) = app.identity.with_role(&headers, Role::Admin).await {
        return p.into_response();
    }
    if !app.config.enable_reset {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "reset is for test environments and is off; start ingest with SECKILL_ENABLE_RESET=true to allow it",
        )
        .into_response();
    }
    command(&app, &headers, &id, CampaignAction::Reset)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/campaigns/{id}/users/{user_id}`: has this user bought?
pub(super) async fn user(
    State(app): State<AppState>,
    Path((id, user_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match app.identity.caller(&headers).await {
        Ok(c) if c.may_see(&user_id) => {}
        Ok(_) => {
            return crate::identity::forbidden("another user's participation needs the role admin")
                .into_response()
        }
        Err(p) => return p.into_response(),
    }
    // The user's holdings are in its stock bucket's records.
    let k = app
        .keys
        .bucket(&id, super::buckets::user_bucket(&app, &id, &user_id).await);
    let mut con = app.redis.clone();
    let r: Result<(Option<String>, Option<String>, Option<String>), _> = redis::pipe()
        .hget(&k.meta, meta::DEFINITION)
        .hget(&k.users, &user_id)
        .hget(&k.attempts, &user_id)
        .query_async(&mut con)
        .await;
    let (units, attempts) = match r {
        Ok((None, _, _)) => {
            return Problem::not_found(format!("campaign {id:?} does not exist")).into_response()
        }
        Ok((Some(_), units, attempts)) => (units, attempts),
        Err(e) => return redis_down(e).into_response(),
    };
    let count = |kind, v: Option<String>| read_count(kind, &user_id, v.as_deref());
    let (units, attempts) = match (count("users", units), count("attempts", attempts)) {
        (Ok(units), Ok(attempts)) => (units, attempts),
        (Err(e), _) | (_, Err(e)) => return unreadable(e).into_response(),
    };
    Json(UserParticipation {
        campaign_id: id,
        user_id,
        bought: units > 0,
        units,
        attempts,
    })
    .into_response()
}

/// The `stats` hash: decision status -> requests decided so.
fn read_decisions(
    raw: &BTreeMap<String, String>,
) -> Result<BTreeMap<&'static str, u64>, RecordError> {
    raw.iter()
        .map(|(status, n)| {
            let s = DecisionStatus::parse(status).ok_or_else(|| RecordError {
                kind: "stats",
                raw: format!("{status}={n}"),
                why: "unknown decision status".into(),
            })?;
            Ok((s.as_str(), read_count("stats", status, Some(n))?))
        })
        .collect()
}

/// `GET /v1/campaigns/{id}/stats`: stock, and requests decided by outcome.
pub(super) async fn stats(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(p) = app.identity.with_role(&headers, Role::Admin).await {
        return p.into_response();
    }
    let mut con = app.redis.clone();
    let view = match read_view(&mut con, &app.keys, &app.config.draw_key, &id).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Problem::not_found(format!("campaign {id:?} does not exist")).into_response()
        }
        Err(e) => return read_failed(e).into_response(),
    };
    // Every stock bucket's records, added up.
    let (mut decisions, mut buyers, mut awaiting_payment) = (BTreeMap::new(), 0, 0);
    for b in 0..view.buckets {
        let k = app.keys.bucket(&id, b);
        let r: Result<(BTreeMap<String, String>, u64, u64), _> = redis::pipe()
            .hgetall(&k.stats)
            .hlen(&k.users)
            .zcard(&k.deadlines)
            .query_async(&mut con)
            .await;
        let (raw, users, due) = match r {
            Ok(v) => v,
            Err(e) => return redis_down(e).into_response(),
        };
        match read_decisions(&raw) {
            Ok(d) => {
                for (status, n) in d {
                    *decisions.entry(status).or_insert(0) += n;
                }
            }
            Err(e) => return unreadable(e).into_response(),
        }
        buyers += users;
        awaiting_payment += due;
    }
    Json(json!({
        "campaign_id": id,
        "state": view.state,
        "stock": view.stock,
        "prizes": view.prizes,
        "decisions": decisions,
        "users_holding": buyers,
        "orders_awaiting_payment": awaiting_payment,
    }))
    .into_response()
}

/// The recorded result of a command, by request id.
pub(crate) async fn read_result<T: serde::de::DeserializeOwned>(
    app: &App,
    request_id: &str,
) -> Option<T> {
    super::requests::read_result_json(app, request_id)
        .await
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_value(v).ok())
}
