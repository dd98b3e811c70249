use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use seckill_schemas::{
    now_ms, request_id_for_key, OrderAction, OrderCommand, OrderCommandResult, PayBody,
    RefusalReason, RequestEvent, SCHEMA_VERSION,
};
use seckill_store::OrderFilter;

use super::campaigns::read_result;
use super::purchases::idempotency_key;
use super::queue::{accepted, submit_in, waited_out};
use crate::body;
use crate::identity::{forbidden, Role};
use crate::listener::Wakeup;
use crate::problem::Problem;
use crate::state::{App, AppState};

const MAX_LIMIT: usize = 1000;

/// `GET /v1/orders/{id}`: the caller's own order (any order for an admin).
pub(super) async fn get(
    State(app): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match app.identity.caller(&headers).await {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    match app.store.get_order(&order_id).await {
        Ok(Some(o)) if !caller.may_see(&o.user_id) => {
            forbidden("the order belongs to another user").into_response()
        }
        Ok(Some(o)) => Json(o).into_response(),
        Ok(None) => Problem::not_found(format!(
            "no order {order_id:?} in the store (a fresh reservation may take a moment to be stored)"
        ))
        .into_response(),
        Err(e) => Problem::unavailable(e.to_string()).retry_after(1).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    campaign_id: Option<String>,
    user_id: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/orders?campaign_id=&user_id=&limit=&after=`, ordered by order id;
/// pass the last order id as `after` for the next page. A caller lists their
/// own orders; another `user_id`, or every user's, needs the role admin.
pub(super) async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let caller = match app.identity.caller(&headers).await {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    let Query(mut q) = match query {
        Ok(q) => q,
        Err(e) => return Problem::bad_request(format!("bad query string: {e}")).into_response(),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Problem::bad_request(format!("limit must be between 1 and {MAX_LIMIT}"))
            .into_response();
    }
    match &q.user_id {
        None if !caller.has(Role::Admin) => q.user_id = Some(caller.user.clone()),
        Some(u) if !caller.may_see(u) => {
            return forbidden(
                "orders of another user need the role admin; leave out user_id for your own",
            )
            .into_response()
        }
        _ => {}
    }
    let filter = OrderFilter {
        campaign_id: q.campaign_id,
        user_id: q.user_id,
        limit,
        after: q.after,
    };
    match app.store.list_orders(&filter).await {
        Ok(orders) => Json(orders).into_response(),
        Err(e) => Problem::unavailable(e.to_string())
            .retry_after(1)
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct WaitQuery {
    wait_ms: Option<u64>,
}

/// `POST /v1/orders/{id}/pay[?wait_ms=N]` {payment_ref}: the payment
/// service confirms a payment (role payments).
pub(super) async fn pay(
    State(app): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let caller = app.identity.with_role(&headers, Role::Payments).await?;
        let b: PayBody = body::parse(body, app.config.max_body_bytes)?;
        order_command(
            &app,
            &order_id,
            &caller.user,
            &headers,
            query,
            OrderAction::Pay,
            Some(b.payment_ref),
        )
        .await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/orders/{id}/cancel[?wait_ms=N]`.
pub(super) async fn cancel(
    State(app): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Response {
    let run = async {
        let caller = app.identity.caller(&headers).await?;
        order_command(
            &app,
            &order_id,
            &caller.user,
            &headers,
            query,
            OrderAction::Cancel,
            None,
        )
        .await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// The campaign key an order belongs to (its campaign id, or `<id>#<b>`
/// for the stock bucket that holds it): recorded by the processor with
/// the decision, or else read from the store (the bucket from its user).
async fn campaign_of(app: &App, order_id: &str) -> Result<Option<String>, Problem> {
    let mut con = app.redis.clone();
    let cached = crate::lookup::read(
        &mut con,
        &app.keys,
        seckill_schemas::state::LookupKind::OrderCampaign,
        order_id,
    )
    .await
    .map_err(|e| Problem::unavailable(format!("Redis unavailable: {e}")).retry_after(1))?;
    if cached.is_some() {
        return Ok(cached);
    }
    match app.store.get_order(order_id).await {
        Ok(Some(o)) => Ok(Some(
            super::buckets::order_key(app, &o.campaign_id, &o.user_id).await,
        )),
        Ok(None) => Ok(None),
        Err(e) => Err(Problem::unavailable(e.to_string()).retry_after(1)),
    }
}

fn refused(result: &OrderCommandResult) -> Problem {
    let (status, detail) = match result.reason {
        Some(RefusalReason::NotFound) => (StatusCode::NOT_FOUND, "no such order".to_owned()),
        Some(RefusalReason::NotOwner) => (
            StatusCode::FORBIDDEN,
            "the order belongs to another user".to_owned(),
        ),
        Some(RefusalReason::Expired) => (
            StatusCode::CONFLICT,
            "the payment deadline has passed; the units went back on sale".to_owned(),
        ),
        Some(RefusalReason::AlreadyPaid) => {
            (StatusCode::CONFLICT, "the order is paid already".to_owned())
        }
        Some(RefusalReason::Cancelled) => {
            (StatusCode::CONFLICT, "the order was cancelled".to_owned())
        }
        Some(other) => (StatusCode::CONFLICT, format!("refused: {other}")),
        None => (StatusCode::CONFLICT, "refused".to_owned()),
    };
    let problem = Problem::new(
        status,
        status.canonical_reason().unwrap_or("Conflict"),
        detail,
    )
    .request_id(result.request_id.clone());
    match result.reason {
        Some(reason) => problem.reason(reason.as_str().to_owned()),
        None => problem,
    }
}

async fn order_command(
    app: &App,
    order_id: &str,
    user: &str,
    headers: &HeaderMap,
    query: Result<Query<WaitQuery>, QueryRejection>,
    action: OrderAction,
    payment_ref: Option<String>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_request(format!("bad query string: {e}")))?;
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > app.config.max_wait_ms {
        return Err(Problem::bad_request(format!(
            "wait_ms must be at most {}",
            app.config.max_wait_ms
        )));
    }
    if order_id.is_empty() || order_id.len() > 128 {
        return Err(Problem::bad_request("order_id must be 1-128 characters"));
    }
    let Some(key) = campaign_of(app, order_id).await? else {
        return Err(Problem::not_found(format!("no order {order_id:?}")));
    };
    let (campaign_id, bucket) = super::buckets::split_order_key(&key)?;
    let verb = match action {
        OrderAction::Pay => "pay",
        OrderAction::Cancel => "cancel",
    };
    // Paying (or cancelling) one order twice is one intent, so without a key
    // the request id is derived from the order: a retry is safe either way.
    // A payment reference is part of the intent: the same ref again is a
    // retry, another ref is another payment (refused once the order is paid).
    let key = idempotency_key(headers)?.unwrap_or_else(|| match &payment_ref {
        Some(r) => format!("{verb}:{order_id}:ref:{r}"),
        None => format!("{verb}:{order_id}"),
    });
    let request_id = request_id_for_key(user, &campaign_id, &format!("{verb}:{order_id}:{key}"));
    if let Some(r) = read_result::<OrderCommandResult>(app, &request_id).await {
        return Ok(answer(r));
    }
    let event = RequestEvent::OrderCommand(OrderCommand {
        schema_version: SCHEMA_VERSION,
        request_id: request_id.clone(),
        campaign_id,
        order_id: order_id.to_owned(),
        user_id: user.to_owned(),
        action,
        requested_at_ms: Some(now_ms()),
        payment_ref,
        auth: None,
    });
    event
        .validate()
        .map_err(|e| Problem::bad_request(format!("the command cannot be accepted: {e}")))?;
    let pick = |w| match w {
        Wakeup::Order(r) => Some(r),
        _ => None,
    };
    let check = || async { read_result::<OrderCommandResult>(app, &request_id).await };
    let wait = (wait_ms > 0).then(|| Duration::from_millis(wait_ms));
    Ok(
        match submit_in(app, &event, bucket, wait, pick, check).await? {
            (Some(r), _) => answer(r),
            (None, placed) if wait.is_some() => waited_out(app, &request_id, placed).await,
            (None, _) => accepted(&request_id),
        },
    )
}

fn answer(r: OrderCommandResult) -> Response {
    if r.accepted {
        Json(r).into_response()
    } else {
        refused(&r).into_response()
    }
}
