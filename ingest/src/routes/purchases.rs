use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use seckill_schemas::{
    now_ms, request_id_for_key, validate_campaign_id, Attributes, CampaignKind, CampaignState,
    Decision, DecisionStatus, PurchaseBody, PurchaseRequested, RefusalReason, RequestEvent,
    MAX_QUANTITY, SCHEMA_VERSION,
};

use super::queue::{accepted, submit_placed, waited_out};
use super::requests::read_decision;
use super::ClientIp;
use crate::body;
use crate::cache::{state_at, Snapshot};
use crate::internal_events;
use crate::listener::Wakeup;
use crate::problem::Problem;
use crate::state::{App, AppState};

/// The fast path refuses by ingest's clock only this far outside the
/// window, so a small clock difference with Redis never refuses a request
/// the processor would accept.
const WINDOW_GRACE_MS: i64 = 1000;

#[derive(Debug, Deserialize)]
pub(super) struct WaitQuery {
    wait_ms: Option<u64>,
}

/// `POST /v1/purchases[?wait_ms=N]`.
pub(super) async fn create(
    State(app): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    headers: HeaderMap,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match purchase(&app, ip, &headers, query, body).await {
        Ok(r) => r,
        Err(p) => {
            internal_events::purchase("refused");
            p.into_response()
        }
    }
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::bad_request("Idempotency-Key must be 1-255 printable ASCII characters")
        })?;
    Ok(Some(key.to_owned()))
}

pub(super) fn too_many(detail: &str) -> Problem {
    Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests", detail).retry_after(1)
}

/// The answer the fast path can give from the cached snapshot, if any.
fn fast_answer(
    snap: &Snapshot,
    quantity: u32,
    attributes: Option<&Attributes>,
) -> Option<(DecisionStatus, RefusalReason)> {
    let now = now_ms();
    if snap.draft && !snap.closed {
        return Some((DecisionStatus::NotActive, RefusalReason::Draft));
    }
    if snap.closed {
        return Some((DecisionStatus::NotActive, RefusalReason::Closed));
    }
    if now < snap.starts_ms - WINDOW_GRACE_MS {
        return Some((DecisionStatus::NotActive, RefusalReason::NotStarted));
    }
    if now >= snap.ends_ms + WINDOW_GRACE_MS {
        return Some((DecisionStatus::NotActive, RefusalReason::Ended));
    }
    // The same rule the processor applies; the definition never changes.
    if let Some(rule) = &snap.spec.eligibility {
        if !attributes.is_some_and(|a| rule.eval(a)) {
            return Some((DecisionStatus::NotEligible, RefusalReason::NotEligible));
        }
    }
    // Only a clear sell-out is answered here: the state is at most one cache
    // period old.
    if state_at(snap.starts_ms, snap.ends_ms, snap.closed, snap.draft, now) == CampaignState::Active
        && snap.available < u64::from(quantity)
    {
        return Some((DecisionStatus::SoldOut, RefusalReason::SoldOut));
    }
    None
}

async fn purchase(
    app: &App,
    ClientIp(ip): ClientIp,
    headers: &HeaderMap,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let _permit = app.inflight.clone().try_acquire_owned().map_err(|_| {
        Problem::unavailable("system busy: too many requests in flight; retry shortly")
            .retry_after(1)
    })?;
    let Query(q) = query.map_err(|e| Problem::bad_request(format!("bad query string: {e}")))?;
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > app.config.max_wait_ms {
        return Err(Problem::bad_request(format!(
            "wait_ms must be at most {}",
            app.config.max_wait_ms
        )));
    }
    let caller = app.identity.caller(headers).await?;
    let user = caller.user;
    let body: PurchaseBody = body::parse_hinted(
        body,
        app.config.max_body_bytes,
        &[(
            "attributes",
            "eligibility attributes come from the caller's token (its attributes claim), \
             never from the request body; remove the field",
        )],
    )?;
    validate_campaign_id(&body.campaign_id).map_err(|e| Problem::bad_request(e.to_string()))?;
    app.limits
        .check(&user, ip, &body.campaign_id)
        .map_err(too_many)?;
    let quantity = body.quantity.unwrap_or(1);
    if quantity == 0 || quantity > MAX_QUANTITY {
        return Err(Problem::bad_request(format!(
            "quantity must be between 1 and {MAX_QUANTITY}"
        )));
    }

    let key = idempotency_key(headers)?;
    let request_id = match &key {
        Some(k) => request_id_for_key(&user, &body.campaign_id, k),
        None => uuid::Uuid::new_v4().to_string(),
    };
    if key.is_some() {
        // The id is scoped by campaign: a decision found is this one's.
        if let Some(d) = read_decision(app, &request_id).await? {
            internal_events::purchase("replayed");
            return Ok(Json(d).into_response());
        }
    }

    let event = RequestEvent::PurchaseRequested(PurchaseRequested {
        schema_version: SCHEMA_VERSION,
        request_id: request_id.clone(),
        campaign_id: body.campaign_id.clone(),
        user_id: user.clone(),
        quantity,
        requested_at_ms: Some(now_ms()),
        attributes: caller.attributes.clone(),
    });
    // One validation for both sides: what a processor would dead-letter is
    // refused here, before the client is told it was accepted.
    event
        .validate()
        .map_err(|e| Problem::bad_request(format!("the purchase cannot be accepted: {e}")))?;

    let mut con = app.redis.clone();
    match app.cache.get(&mut con, &app.keys, &body.campaign_id).await {
        Ok(None) => {
            return Err(Problem::not_found(format!(
                "campaign {:?} does not exist",
                body.campaign_id
            )))
        }
        Ok(Some(snap)) => {
            if snap.spec.kind == CampaignKind::Lottery && quantity != 1 {
                return Err(Problem::bad_request(
                    "a lottery draw is for one prize: send quantity 1 or none",
                ));
            }
            if let Some((status, reason)) = fast_answer(&snap, quantity, caller.attributes.as_ref())
            {
                internal_events::purchase(if status == DecisionStatus::SoldOut {
                    "fast_sold_out"
                } else {
                    "fast_not_active"
                });
                return Ok(Json(Decision {
                    request_id,
                    campaign_id: body.campaign_id,
                    user_id: user,
                    status,
                    reason: Some(reason),
                    order_id: None,
                    quantity: None,
                    expires_at_ms: None,
                    prize_id: None,
                    prize_name: None,
                })
                .into_response());
            }
        }
        // Without the cache the processor still decides correctly; only the
        // shortcut is lost.
        Err(e) => tracing::debug!(error = %e, "campaign cache unavailable; queueing"),
    }

    let pick = |w| match w {
        Wakeup::Decision(d) => Some(d),
        _ => None,
    };
    let check = || async { read_decision(app, &request_id).await.ok().flatten() };
    let wait = (wait_ms > 0).then(|| Duration::from_millis(wait_ms));
    let (outcome, placed) = submit_placed(app, &event, wait, pick, check).await?;
    internal_events::purchase("queued");
    Ok(match outcome {
        Some(d) => Json(d).into_response(),
        None if wait.is_some() => waited_out(app, &request_id, placed).await,
        None => accepted(&request_id),
    })
}
