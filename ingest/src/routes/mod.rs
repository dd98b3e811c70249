mod buckets;
mod campaigns;
mod health;
mod orders;
mod purchases;
mod queue;
mod requests;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

use crate::internal_events;
use crate::problem::Problem;
use crate::state::AppState;

pub(crate) fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/campaigns", post(campaigns::create))
        .route("/v1/campaigns/{id}", get(campaigns::get))
        .route("/v1/campaigns/{id}/stock", post(campaigns::add_stock))
        .route("/v1/campaigns/{id}/close", post(campaigns::close))
        .route("/v1/campaigns/{id}/publish", post(campaigns::publish))
        .route("/v1/campaigns/{id}/reset", post(campaigns::reset))
        .route("/v1/campaigns/{id}/stats", get(campaigns::stats))
        .route("/v1/campaigns/{id}/users/{user_id}", get(campaigns::user))
        .route("/v1/stats", get(health::system_stats))
        .route("/v1/purchases", post(purchases::create))
        .route("/v1/requests/{request_id}", get(requests::get))
        .route("/v1/orders", get(orders::list))
        .route("/v1/orders/{order_id}", get(orders::get))
        .route("/v1/orders/{order_id}/pay", post(orders::pay))
        .route("/v1/orders/{order_id}/cancel", post(orders::cancel))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(crate::openapi::serve))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            client_address,
        ))
        .layer(middleware::from_fn(count))
        .with_state(state)
}

/// The client's address (see [`crate::state::client_ip`]), for the handlers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(pub(crate) std::net::IpAddr);

async fn client_address(
    axum::extract::State(app): axum::extract::State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let ip = crate::state::client_ip(peer, req.headers(), &app.config.trusted_proxies);
    req.extensions_mut().insert(ClientIp(ip));
    next.run(req).await
}

async fn not_found() -> Problem {
    Problem::not_found("no such route; see the HTTP API in the README")
}

async fn count(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await.into_response();
    internal_events::http_answered(&route, resp.status().as_u16());
    resp
}
