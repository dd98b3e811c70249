//! Helpers for driving a sale (or a lottery) over HTTP the way a shop
//! would: campaign definitions, purchases with retries, pay and cancel,
//! the stats and participation endpoints; and the few assertions every
//! suite shares (`assert_clean`, `assert_none`, `tally`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};

use seckill_cli::check::DecisionRecord;
use seckill_schemas::{now_ms, CampaignState, CampaignView, Decision, OrderView};

use super::http::parse_decision;
use super::{eventually, purchase_json, Api, Producer, Report, Stack};

// ---------------------------------------------------------------------------
// Ids, time

/// A fresh request id, as an upstream service would make one.
pub(crate) fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) async fn sleep_ms(ms: i64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
    }
}

/// Sleeps until the wall clock reads `at_ms` (unix ms).
pub(crate) async fn sleep_until_ms(at_ms: i64) {
    sleep_ms(at_ms - now_ms()).await;
}

// ---------------------------------------------------------------------------
// Shared assertions

/// A decision (or the lack of one) as the status word a tally counts.
pub(crate) trait StatusWord {
    fn status_word(&self) -> &'static str;
}

impl StatusWord for Decision {
    fn status_word(&self) -> &'static str {
        self.status.as_str()
    }
}

impl StatusWord for DecisionRecord {
    fn status_word(&self) -> &'static str {
        self.status.as_str()
    }
}

impl<T: StatusWord + ?Sized> StatusWord for &T {
    fn status_word(&self) -> &'static str {
        (**self).status_word()
    }
}

/// `None`: a request without a decision.
impl<T: StatusWord> StatusWord for Option<T> {
    fn status_word(&self) -> &'static str {
        self.as_ref().map_or("undecided", StatusWord::status_word)
    }
}

/// Counts decisions by status ("undecided" for a missing one).
pub(crate) fn tally<T: StatusWord>(
    decisions: impl IntoIterator<Item = T>,
) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for d in decisions {
        *out.entry(d.status_word()).or_default() += 1;
    }
    out
}

/// Asserts a checker's report is clean, printing it either way. The
/// HTTP-side checker (`common::check_campaign`) and the one bound to a
/// stack (`common::Checker`) give the same report.
pub(crate) fn assert_clean(report: &Report) {
    eprintln!("{report}");
    assert!(report.is_clean(), "invariants violated:\n{report}");
}

/// Fails the test with up to 20 of `violations`.
pub(crate) fn assert_none(what: &str, violations: &[String]) {
    if !violations.is_empty() {
        let shown: Vec<&String> = violations.iter().take(20).collect();
        panic!(
            "{what}: {} violation(s), e.g.\n  {}",
            violations.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// Campaigns

/// A sale campaign open from a minute ago for two hours, one unit per
/// user, price 19.99; `extra`'s fields override or add to it.
pub(crate) fn campaign_body(id: &str, stock: u64, extra: Value) -> Value {
    let now = Utc::now();
    let mut body = json!({
        "id": id,
        "name": format!("e2e campaign {id}"),
        "kind": "sale",
        "stock": stock,
        "per_user_limit": 1,
        "starts_at": (now - chrono::Duration::minutes(1)).to_rfc3339(),
        "ends_at": (now + chrono::Duration::hours(2)).to_rfc3339(),
        "payment_timeout_secs": 600,
        "price": 1999,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Creates a campaign (retrying a 503 while the processors join their
/// group: the same definition again is safe) and waits until GET shows it
/// in `state`.
pub(crate) async fn create(api: &Api, body: &Value, state: CampaignState) -> CampaignView {
    let id = body["id"].as_str().expect("campaign id").to_owned();
    let mut last = String::new();
    let mut created = false;
    for attempt in 0..12 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let r = api.post_campaign(body).await;
        match r.status {
            200 | 201 => {
                created = true;
                break;
            }
            s if s >= 500 => last = format!("{s}: {}", r.body),
            s => panic!("POST /v1/campaigns {id} answered {s}: {}", r.body),
        }
    }
    assert!(created, "POST /v1/campaigns {id} kept failing: {last}");
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let v = api.campaign(&id).await?;
            if v.state == state {
                Ok(v)
            } else {
                Err(format!("state {:?}, want {state:?}: {v:?}", v.state))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("campaign {id} never reached {state:?}: {e}"))
}

/// A campaign's stock as (total, available, reserved, paid).
pub(crate) fn stock_of(v: &CampaignView) -> (u64, u64, u64, u64) {
    (
        v.stock.total,
        v.stock.available,
        v.stock.reserved,
        v.stock.paid,
    )
}

// ---------------------------------------------------------------------------
// Purchases

/// POST /v1/purchases?wait_ms=10000 with optional attributes, retried
/// safely under one Idempotency-Key; a pending answer is followed up.
pub(crate) async fn buy(
    api: &Api,
    cid: &str,
    user: &str,
    key: &str,
    attributes: Option<&Value>,
) -> Decision {
    let body = json!({ "campaign_id": cid });
    // Eligibility attributes travel in the caller's token.
    let auth = Api::bearer_with(user, &[], attributes);
    let mut last = String::new();
    for attempt in 0..12u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
        }
        let reply = match api
            .post(
                "/v1/purchases?wait_ms=10000",
                &body,
                &[("Authorization", &auth), ("Idempotency-Key", key)],
            )
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
                let rid = reply.body["request_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no request_id in {}", reply.body))
                    .to_owned();
                if reply.status == 200 && reply.body["status"] != "pending" {
                    return parse_decision(&reply.body);
                }
                return api.wait_decision(&rid, Duration::from_secs(60)).await;
            }
            s if s >= 500 || s == 429 => last = format!("{s}: {}", reply.body),
            s => panic!(
                "POST /v1/purchases ({cid}, {user}, key {key}) answered {s}: {}",
                reply.body
            ),
        }
    }
    panic!("POST /v1/purchases ({cid}, {user}, key {key}) kept failing: {last}");
}

/// Produces purchases (request id, user) for `cid` straight to Kafka, in
/// this order (one key, so one partition, so decided in this order).
pub(crate) async fn produce_purchases(
    stack: &Stack,
    producer: &Producer,
    cid: &str,
    reqs: &[(String, String)],
) {
    let messages: Vec<(String, Vec<u8>)> = reqs
        .iter()
        .map(|(rid, user)| (cid.to_owned(), purchase_json(rid, cid, user, 1)))
        .collect();
    for chunk in messages.chunks(2000) {
        producer.send_all(&stack.topics.requests, chunk).await;
    }
}

// ---------------------------------------------------------------------------
// Pay and cancel

/// The answer to a pay or cancel.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    /// When the command was first sent, and when the final answer came
    /// (unix ms, this host's clock, which is also the Redis server's).
    pub(crate) sent_ms: i64,
    pub(crate) answered_ms: i64,
    /// Times ingest answered 404 "no order" (without a `reason`: it did not
    /// find the order's campaign, so nothing was queued) before the answer.
    pub(crate) early_404s: u32,
}

impl Answer {
    pub(crate) fn reason(&self) -> Option<&str> {
        self.body.get("reason").and_then(Value::as_str)
    }

    /// "200 paid", "409 expired", "404 not_found", ...
    pub(crate) fn describe(&self) -> String {
        if self.status == 200 {
            format!(
                "200 {}",
                self.body
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            )
        } else {
            format!("{} {}", self.status, self.reason().unwrap_or("(no reason)"))
        }
    }

    pub(crate) fn is_ok(&self, status: &str) -> bool {
        self.status == 200
            && self.body.get("status").and_then(Value::as_str) == Some(status)
            && self.body.get("accepted") == Some(&Value::Bool(true))
    }

    pub(crate) fn is_refused(&self, code: u16, reason: &str) -> bool {
        self.status == code && self.reason() == Some(reason)
    }
}

/// POST /v1/orders/{id}/{verb}?wait_ms=10000: a cancel as `user`, a pay as
/// the payment service (with payment ref `ref-<key or 1>`). Without a key
/// the request id is derived from (caller, verb, order, ref), so re-posting
/// after a 202, a 5xx or a transport error is the same request and safe.
pub(crate) async fn order_command(
    api: &Api,
    order_id: &str,
    user: &str,
    verb: &str,
    key: Option<&str>,
) -> Answer {
    let path = format!("/v1/orders/{order_id}/{verb}?wait_ms=10000");
    // A pay comes from the payment service (role payments) with a reference
    // derived from the key: the same key, the same payment.
    let (auth, body) = if verb == "pay" {
        (
            Api::payments(),
            json!({ "payment_ref": format!("ref-{}", key.unwrap_or("1")) }),
        )
    } else {
        (Api::bearer(user), json!({}))
    };
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(k) = key {
        headers.push(("Idempotency-Key", k));
    }
    let sent_ms = now_ms();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last;
    let mut early_404s = 0;
    loop {
        match api.post(&path, &body, &headers).await {
            Ok(r) if r.status == 202 || r.status == 429 || r.status >= 500 => {
                last = format!("{}: {}", r.status, r.body)
            }
            // Ingest's own "no order" (no `reason`): it could not tell the
            // order's campaign yet. Tried again for a while, and counted.
            Ok(r) if r.status == 404 && r.body.get("reason").is_none() && early_404s < 25 => {
                early_404s += 1;
                last = format!("{}: {}", r.status, r.body)
            }
            Ok(r) => {
                if r.status != 200 {
                    assert!(
                        r.content_type.starts_with("application/problem+json"),
                        "POST {path}: {} answered as {:?}: {}",
                        r.status,
                        r.content_type,
                        r.body
                    );
                }
                return Answer {
                    status: r.status,
                    body: r.body,
                    sent_ms,
                    answered_ms: now_ms(),
                    early_404s,
                };
            }
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "POST {path} as {user} got no final answer in 90 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// Stats, participation, orders

/// GET /v1/campaigns/{id}/stats.
pub(crate) async fn stats(api: &Api, cid: &str) -> Value {
    let r = api
        .get(&format!("/v1/campaigns/{cid}/stats"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "GET /v1/campaigns/{cid}/stats: {}", r.body);
    r.body
}

pub(crate) fn decision_count(stats: &Value, status: &str) -> u64 {
    stats["decisions"][status].as_u64().unwrap_or(0)
}

pub(crate) fn decisions_total(stats: &Value) -> u64 {
    stats["decisions"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Waits until the processor has decided `n` purchase requests of `cid`.
pub(crate) async fn wait_decided(api: &Api, cid: &str, n: u64, timeout: Duration) -> Value {
    eventually(timeout, Duration::from_millis(250), || async {
        let s = stats(api, cid).await;
        if decisions_total(&s) >= n {
            Ok(s)
        } else {
            Err(s)
        }
    })
    .await
    .unwrap_or_else(|s| panic!("{cid}: fewer than {n} decisions within {timeout:?}: {s}"))
}

/// GET /v1/campaigns/{id}/users/{user}.
pub(crate) async fn participation(api: &Api, cid: &str, user: &str) -> Value {
    let r = api
        .get(&format!("/v1/campaigns/{cid}/users/{user}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "GET users/{user}: {}", r.body);
    r.body
}

/// Every order of a campaign in the store, page by page.
pub(crate) async fn all_orders(api: &Api, cid: &str) -> Vec<OrderView> {
    let mut out: Vec<OrderView> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/orders?campaign_id={cid}&limit=1000");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let r = api.get(&path).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        let page: Vec<OrderView> = serde_json::from_value(r.body.clone())
            .unwrap_or_else(|e| panic!("GET {path}: not a list of orders ({e})"));
        let n = page.len();
        after = page.last().map(|o| o.order_id.clone());
        out.extend(page);
        if n < 1000 {
            return out;
        }
    }
}
