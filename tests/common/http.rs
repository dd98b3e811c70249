//! A small client for seckill's HTTP API.

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use seckill_schemas::{CampaignState, CampaignView, Decision, DecisionStatus, OrderView};

use super::eventually;

/// An HTTP answer: status, content type and JSON body (`Null` when empty,
/// `{"_text": ...}` when not JSON).
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: Value,
}

impl Reply {
    async fn read(r: reqwest::Response) -> Result<Reply, String> {
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = r.bytes().await.map_err(|e| format!("reading body: {e}"))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(
                |_| json!({ "_text": String::from_utf8_lossy(&bytes).into_owned() }),
            )
        };
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }

    fn status_str(&self) -> Option<&str> {
        self.body.get("status").and_then(Value::as_str)
    }
}

/// What a test needs to say about a sale campaign; the rest is filled in
/// (window open from a minute ago for two hours, 10 min payment timeout).
#[derive(Debug, Clone)]
pub(crate) struct CampaignArgs {
    pub(crate) id: String,
    pub(crate) stock: u64,
    pub(crate) per_user_limit: u32,
    pub(crate) price: u64,
}

impl CampaignArgs {
    pub(crate) fn new(id: impl Into<String>, stock: u64, per_user_limit: u32) -> Self {
        CampaignArgs {
            id: id.into(),
            stock,
            per_user_limit,
            price: 1999,
        }
    }

    pub(crate) fn body(&self) -> Value {
        let now = Utc::now();
        json!({
            "id": self.id,
            "name": format!("e2e campaign {}", self.id),
            "kind": "sale",
            "stock": self.stock,
            "per_user_limit": self.per_user_limit,
            "starts_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
            "ends_at": (now + chrono::Duration::hours(2)).to_rfc3339(),
            "payment_timeout_secs": 600,
            "price": self.price,
        })
    }
}

/// Client for one ingest (or `all`) process.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    client: reqwest::Client,
}

impl Api {
    pub(crate) fn new(base: &str) -> Api {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(512)
            .build()
            .expect("http client");
        Api {
            base: base.trim_end_matches('/').to_owned(),
            client,
        }
    }

    // -- callers -------------------------------------------------------------

    /// `Bearer <token>` for `user`, with `roles` and eligibility
    /// `attributes`, signed with the stacks' key ([`super::jwt_key`]).
    pub(crate) fn bearer_with(user: &str, roles: &[&str], attributes: Option<&Value>) -> String {
        let token = seckill_ingest::mint(
            super::jwt_key(),
            &seckill_ingest::TokenClaims {
                sub: user.to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                attributes: attributes.and_then(|a| a.as_object().cloned()),
                ttl: Duration::from_secs(3600),
                issuer: None,
                audience: None,
            },
        );
        format!("Bearer {token}")
    }

    /// A buyer's `Authorization` value.
    pub(crate) fn bearer(user: &str) -> String {
        Api::bearer_with(user, &[], None)
    }

    /// The `Authorization` value of the operator (role admin), which
    /// [`Api::get`] and [`Api::post`] send unless told otherwise.
    pub(crate) fn admin() -> String {
        Api::bearer_with("test-ops", &["admin"], None)
    }

    /// The payment service's `Authorization` value (role payments).
    pub(crate) fn payments() -> String {
        Api::bearer_with("test-payments", &["payments"], None)
    }

    /// GET as the operator.
    pub(crate) async fn get(&self, path: &str) -> Result<Reply, String> {
        self.get_as(path, Some(&Api::admin())).await
    }

    /// GET with this `Authorization` value (none: anonymous).
    pub(crate) async fn get_as(&self, path: &str, auth: Option<&str>) -> Result<Reply, String> {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.map_err(|e| format!("GET {path}: {e}"))?;
        Reply::read(r).await
    }

    /// POST with `headers`; as the operator unless they hold an
    /// `Authorization`.
    pub(crate) async fn post(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(body);
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            req = req.header("Authorization", Api::admin());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.map_err(|e| format!("POST {path}: {e}"))?;
        Reply::read(r).await
    }

    // -- campaigns ---------------------------------------------------------

    /// POST /v1/campaigns and the raw answer.
    pub(crate) async fn post_campaign(&self, body: &Value) -> Reply {
        self.post("/v1/campaigns", body, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates a campaign (201, or 200 when it exists identically) and
    /// waits until it is active with its stock in place.
    pub(crate) async fn create_campaign(&self, args: &CampaignArgs) -> CampaignView {
        let reply = self.post_campaign(&args.body()).await;
        assert!(
            reply.status == 201 || reply.status == 200,
            "POST /v1/campaigns {} answered {}: {}",
            args.id,
            reply.status,
            reply.body
        );
        let view = eventually(
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                let view = self.campaign(&args.id).await?;
                if view.state == CampaignState::Active && view.stock.total == args.stock {
                    Ok(view)
                } else {
                    Err(format!("campaign not active yet: {view:?}"))
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("campaign {} never became active: {e}", args.id));
        assert_eq!(view.per_user_limit, args.per_user_limit, "{view:?}");
        view
    }

    /// GET /v1/campaigns/{id}.
    pub(crate) async fn campaign(&self, id: &str) -> Result<CampaignView, String> {
        let reply = self.get(&format!("/v1/campaigns/{id}")).await?;
        if reply.status != 200 {
            return Err(format!(
                "GET /v1/campaigns/{id}: {} {}",
                reply.status, reply.body
            ));
        }
        serde_json::from_value(reply.body.clone())
            .map_err(|e| format!("campaign view {}: {e}", reply.body))
    }

    // -- purchases ---------------------------------------------------------

    /// POST /v1/purchases as `user`, with an optional Idempotency-Key,
    /// quantity and `?wait_ms=`.
    pub(crate) async fn purchase(
        &self,
        campaign: &str,
        user: &str,
        key: Option<&str>,
        quantity: Option<u32>,
        wait_ms: Option<u64>,
    ) -> Result<Reply, String> {
        let path = match wait_ms {
            Some(ms) => format!("/v1/purchases?wait_ms={ms}"),
            None => "/v1/purchases".to_owned(),
        };
        let mut body = json!({ "campaign_id": campaign });
        if let Some(q) = quantity {
            body["quantity"] = json!(q);
        }
        let auth = Api::bearer(user);
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(k) = key {
            headers.push(("Idempotency-Key", k));
        }
        self.post(&path, &body, &headers).await
    }

    /// Buys and returns the final decision. Uses `key` as Idempotency-Key,
    /// so transport errors and 5xx answers (e.g. 503 "outcome unknown") are
    /// retried safely; a pending answer is followed up with
    /// GET /v1/requests/{id}.
    pub(crate) async fn purchase_decided(
        &self,
        campaign: &str,
        user: &str,
        key: &str,
        quantity: Option<u32>,
    ) -> Decision {
        let mut last = String::new();
        for attempt in 0..12 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
            }
            let reply = match self
                .purchase(campaign, user, Some(key), quantity, Some(10_000))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match reply.status {
                200 | 202 => {
                    let request_id = reply
                        .body
                        .get("request_id")
                        .and_then(Value::as_str)
                        .unwrap_or_else(|| panic!("no request_id in {}", reply.body))
                        .to_owned();
                    if reply.status == 200 && reply.status_str() != Some("pending") {
                        return parse_decision(&reply.body);
                    }
                    return self
                        .wait_decision(&request_id, Duration::from_secs(60))
                        .await;
                }
                s if s >= 500 || s == 429 => {
                    last = format!("{s}: {}", reply.body);
                }
                s => panic!(
                    "POST /v1/purchases ({campaign}, {user}, key {key}) answered {s}: {}",
                    reply.body
                ),
            }
        }
        panic!("POST /v1/purchases ({campaign}, {user}, key {key}) kept failing: {last}");
    }

    /// GET /v1/requests/{id}: `Some` once decided (read as the operator).
    pub(crate) async fn decision(&self, request_id: &str) -> Result<Option<Decision>, String> {
        let reply = self.get(&format!("/v1/requests/{request_id}")).await?;
        match reply.status {
            200 if reply.status_str() == Some("pending") => Ok(None),
            200 => Ok(Some(parse_decision(&reply.body))),
            // Not known (yet): ingest may answer 404 before the first event.
            404 => Ok(None),
            s => Err(format!("GET /v1/requests/{request_id}: {s} {}", reply.body)),
        }
    }

    /// Polls GET /v1/requests/{id} until decided; panics after `timeout`.
    pub(crate) async fn wait_decision(&self, request_id: &str, timeout: Duration) -> Decision {
        eventually(timeout, Duration::from_millis(100), || async {
            self.decision(request_id)
                .await?
                .ok_or_else(|| "still pending".to_owned())
        })
        .await
        .unwrap_or_else(|e| panic!("request {request_id} not decided within {timeout:?}: {e}"))
    }

    // -- orders --------------------------------------------------------------

    /// GET /v1/orders?campaign_id=&user_id=&limit=1000.
    pub(crate) async fn orders(
        &self,
        campaign: Option<&str>,
        user: Option<&str>,
    ) -> Result<Vec<OrderView>, String> {
        let mut query = vec!["limit=1000".to_owned()];
        if let Some(c) = campaign {
            query.push(format!("campaign_id={c}"));
        }
        if let Some(u) = user {
            query.push(format!("user_id={u}"));
        }
        let path = format!("/v1/orders?{}", query.join("&"));
        let reply = self.get(&path).await?;
        if reply.status != 200 {
            return Err(format!("GET {path}: {} {}", reply.status, reply.body));
        }
        serde_json::from_value(reply.body.clone())
            .map_err(|e| format!("GET {path}: not a list of orders ({e}): {}", reply.body))
    }

    /// Polls the campaign's orders until there are at least `n` (or
    /// `timeout` passes) and returns the last listing.
    pub(crate) async fn wait_orders(
        &self,
        campaign: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<OrderView> {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            match self.orders(Some(campaign), None).await {
                Ok(orders) => last = orders,
                Err(e) => eprintln!("listing orders: {e}"),
            }
            if last.len() >= n || std::time::Instant::now() >= deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Parses a decision body, panicking with the body when it does not fit.
pub(crate) fn parse_decision(body: &Value) -> Decision {
    let d: Decision = serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("not a decision ({e}): {body}"));
    assert!(
        d.status != DecisionStatus::Reserved || d.order_id.is_some(),
        "reserved decision without order_id: {body}"
    );
    d
}
