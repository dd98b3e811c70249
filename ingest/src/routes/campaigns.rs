use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use seckill_schemas::{
    now_ms, validate_campaign_id, CampaignOutcome, CampaignSpec, RequestEvent, UpsertCampaign,
    SCHEMA_VERSION,
};

use super::queue::{enqueue, wait_for};
use crate::body;
use crate::cache::{read_definition, read_view};
use crate::listener::Wakeup;
use crate::problem::Problem;
use crate::state::{App, AppState};

/// How long a create waits for the processor to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(10);

fn redis_down(e: redis::RedisError) -> Problem {
    Problem::unavailable(format!("Redis unavailable: {e}")).retry_after(1)
}

pub(super) fn check_admin(app: &App, headers: &HeaderMap) -> Result<(), Problem> {
    let Some(token) = &app.config.admin_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.as_str()) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the admin API needs 'Authorization: Bearer <admin token>' (SECKILL_ADMIN_TOKEN)",
        ))
    }
}

async fn view_response(app: &App, id: &str, status: StatusCode) -> Response {
    let mut con = app.redis.clone();
    match read_view(&mut con, &app.keys, id).await {
        Ok(Some(view)) => (status, Json(view)).into_response(),
        Ok(None) => Problem::not_found(format!("campaign {id:?} does not exist")).into_response(),
        Err(e) => redis_down(e).into_response(),
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
    check_admin(app, headers)?;
    let spec: CampaignSpec = body::parse(body, app.config.max_body_bytes)?;
    spec.validate()
        .map_err(|e| Problem::bad_request(format!("invalid campaign: {e}")))?;
    let ours = serde_json::to_string(&spec).unwrap_or_default();
    let mut con = app.redis.clone();
    match read_definition(&mut con, &app.keys, &spec.id)
        .await
        .map_err(redis_down)?
    {
        Some(existing) if existing == ours => {
            return Ok(view_response(app, &spec.id, StatusCode::OK).await)
        }
        Some(_) => return Err(conflict(&spec.id)),
        None => {}
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let rx = app.waiters.register(&request_id);
    let event = RequestEvent::UpsertCampaign(UpsertCampaign {
        schema_version: SCHEMA_VERSION,
        request_id: request_id.clone(),
        campaign: spec.clone(),
        requested_at_ms: Some(now_ms()),
    });
    if let Err(p) = enqueue(app, &event).await {
        app.waiters.forget(&request_id);
        return Err(p);
    }
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
        Wakeup::Campaign(o) => Some(o),
        Wakeup::Decision(_) => None,
    };
    match wait_for(app, &request_id, rx, APPLY_WAIT, pick, check).await {
        Some(CampaignOutcome::Created) => {
            Ok(view_response(app, &spec.id, StatusCode::CREATED).await)
        }
        Some(CampaignOutcome::Unchanged) => Ok(view_response(app, &spec.id, StatusCode::OK).await),
        Some(CampaignOutcome::Conflict) => Err(conflict(&spec.id)),
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
