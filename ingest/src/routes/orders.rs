use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use seckill_sinks::OrderFilter;

use crate::problem::Problem;
use crate::state::AppState;

const MAX_LIMIT: usize = 1000;

pub(super) async fn get(State(app): State<AppState>, Path(order_id): Path<String>) -> Response {
    match app.store.get_order(&order_id).await {
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
/// pass the last order id as `after` for the next page.
pub(super) async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return Problem::bad_request(format!("bad query string: {e}")).into_response(),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Problem::bad_request(format!("limit must be between 1 and {MAX_LIMIT}"))
            .into_response();
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
