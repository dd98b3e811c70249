//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.
//!
//! Every operation is listed here, once, with who may call it, its
//! parameters and every status it answers. The bodies' schemas come from the
//! `seckill_schemas` types (schemars writes JSON Schema 2020-12, which
//! OpenAPI 3.1 takes as it is; the subschemas go to `components/schemas`),
//! so the document follows the types. The error body is the problem object
//! of `crate::problem`, described here.
//!
//! The committed copy is `schemas/openapi.json`. Tests fail when it differs
//! from what this module builds, and when the router (`routes/mod.rs`) and
//! the document disagree on the routes. Regenerate with
//! `SECKILL_WRITE_SCHEMAS=1 cargo test -p seckill-ingest openapi`.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use seckill_schemas::{
    AddStockBody, CampaignApplied, CampaignSpec, CampaignState, CampaignView, Decision,
    DecisionStatus, OrderCommandResult, OrderView, PayBody, PrizeStock, PurchaseBody,
    RequestAccepted, StockView, UserParticipation,
};

/// The OpenAPI version the document is written in.
const OPENAPI_VERSION: &str = "3.1.0";

/// The name of the bearer security scheme.
const BEARER: &str = "bearer";

/// `GET /openapi.json`: this document.
pub(crate) async fn serve() -> Response {
    static DOCUMENT: LazyLock<String> = LazyLock::new(render);
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// The document as it is served and committed: pretty JSON, a final newline.
pub(crate) fn render() -> String {
    // A `serde_json::Value` always serialises.
    let mut text = serde_json::to_string_pretty(&document()).expect("the document is JSON");
    text.push('\n');
    text
}

const UNAUTHORIZED: &str =
    "No bearer token, or one that is invalid or expired (the challenge is in `WWW-Authenticate`).";

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone; no token.
    Public,
    /// Any caller with a valid bearer token (what they may see is theirs).
    Caller,
    /// A bearer token with this role; for `admin` the static admin token
    /// works too.
    Role(&'static str),
}

/// One operation (a method on a path).
struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
    access: Access,
    params: Vec<Value>,
    body: Option<Value>,
    responses: Map<String, Value>,
}

impl Op {
    fn new(
        method: &'static str,
        path: &'static str,
        id: &'static str,
        tag: &'static str,
        access: Access,
    ) -> Self {
        Op {
            method,
            path,
            id,
            tag,
            summary: "",
            description: "",
            access,
            params: Vec::new(),
            body: None,
            responses: Map::new(),
        }
    }

    fn summary(mut self, summary: &'static str) -> Self {
        self.summary = summary;
        self
    }

    fn describe(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }

    /// A parameter, or a `$ref` to one under `components/parameters`.
    fn param(mut self, param: Value) -> Self {
        self.params.push(param);
        self
    }

    fn query(self, name: &str, description: &str, schema: Value) -> Self {
        self.param(json!({
            "name": name,
            "in": "query",
            "required": false,
            "description": description,
            "schema": schema,
        }))
    }

    /// The JSON request body (always required).
    fn body(mut self, schema: Value) -> Self {
        self.body = Some(json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        }));
        self
    }

    /// A JSON answer.
    fn json(mut self, status: u16, description: &str, schema: Value) -> Self {
        self.responses.insert(
            status.to_string(),
            json!({
                "description": description,
                "content": { "application/json": { "schema": schema } },
            }),
        );
        self
    }

    /// A text answer.
    fn text(mut self, status: u16, description: &str, media_type: &str) -> Self {
        self.responses.insert(
            status.to_string(),
            json!({
                "description": description,
                "content": { media_type: { "schema": { "type": "string" } } },
            }),
        );
        self
    }

    /// A problem answer (`application/problem+json`); a 401 carries the
    /// `WWW-Authenticate` challenge, a 429 and a 503 may say `Retry-After`.
    fn problem(mut self, status: u16, description: &str) -> Self {
        let mut response = json!({
            "description": description,
            "content": {
                "application/problem+json": { "schema": schema_ref("Problem") },
            },
        });
        let header = match status {
            401 => Some("WWW-Authenticate"),
            429 | 503 => Some("Retry-After"),
            _ => None,
        };
        if let Some(h) = header {
            response["headers"] = json!({ h: { "$ref": format!("#/components/headers/{h}") } });
        }
        self.responses.insert(status.to_string(), response);
        self
    }

    /// The standard 401 and, for a role, 403.
    fn auth_problems(self) -> Self {
        match self.access {
            Access::Public => self,
            Access::Caller => self.problem(401, UNAUTHORIZED),
            Access::Role(role) => self.problem(401, UNAUTHORIZED).problem(
                403,
                match role {
                    "admin" => "The token does not have the role admin.",
                    _ => "The token does not have the role payments.",
                },
            ),
        }
    }

    fn to_value(&self) -> Value {
        let access = match self.access {
            Access::Public => "Public: no token needed.".to_owned(),
            Access::Caller => "Needs a bearer token.".to_owned(),
            Access::Role("admin") => {
                "Needs a bearer token with the role admin, or the static admin token.".to_owned()
            }
            Access::Role(role) => format!("Needs a bearer token with the role {role}."),
        };
        let description = if self.description.is_empty() {
            access
        } else {
            format!("{}\n\n{access}", self.description)
        };
        let security = match self.access {
            Access::Public => json!([]),
            Access::Caller => json!([{ BEARER: [] }]),
            Access::Role(role) => json!([{ BEARER: [role] }]),
        };
        let mut params: Vec<Value> = path_params(self.path);
        params.extend(self.params.iter().cloned());
        let mut op = json!({
            "operationId": self.id,
            "tags": [self.tag],
            "summary": self.summary,
            "description": description,
            "security": security,
            "responses": self.responses,
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(body) = &self.body {
            op["requestBody"] = body.clone();
        }
        op
    }
}

/// `schema` with a description (next to a `$ref` too: JSON Schema 2020-12
/// allows that).
fn described(schema: &Value, description: &str) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(map) = &mut schema {
        map.insert("description".into(), description.into());
    }
    schema
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn param_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

/// The parameters named in a path template (`{id}`).
fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let (description, schema) = match name {
                "id" => (
                    "The campaign id.",
                    json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$" }),
                ),
                "user_id" => (
                    "The user id (a token's `sub`).",
                    json!({ "type": "string", "minLength": 1, "maxLength": 128 }),
                ),
                "request_id" => (
                    "The request id, as a 202 or a decision gave it.",
                    json!({ "type": "string", "minLength": 1, "maxLength": 128 }),
                ),
                "order_id" => (
                    "The order id, as the decision gave it.",
                    json!({ "type": "string", "minLength": 1, "maxLength": 128 }),
                ),
                _ => ("", json!({ "type": "string" })),
            };
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": description,
                "schema": schema,
            })
        })
        .collect()
}

/// The schema generator: JSON Schema 2020-12 (OpenAPI 3.1's dialect), with
/// every named subschema under `components/schemas`.
fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator()
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    g.subschema_for::<T>().to_value()
}

/// Every operation of the HTTP API.
fn operations(g: &mut SchemaGenerator) -> Vec<Op> {
    use Access::{Caller, Public, Role};
    const ADMIN: Access = Role("admin");
    const PAYMENTS: Access = Role("payments");

    let campaign_view = schema::<CampaignView>(g);
    let accepted = schema::<RequestAccepted>(g);
    let order_result = schema::<OrderCommandResult>(g);
    let unreadable = "The campaign's state in Redis cannot be read by this build.";
    let not_applied = "Redis or the broker is unavailable, or the command was queued but not \
                       applied within 10 s (are the processors running?).";
    let applied = "Applied: the campaign as it is now.";
    let queued = "Queued, not applied yet. When `wait_ms` ran out, `queue` says where the \
                  command stands in line.";
    let retry_same_key = "Redis or the broker is unavailable: retry with the same Idempotency-Key.";
    let refused = "Refused; `reason` says why: `expired`, `already_paid` or `cancelled`.";

    let command = |path: &'static str, id: &'static str| {
        Op::new("post", path, id, "campaigns", ADMIN)
            .json(200, applied, campaign_view.clone())
            .problem(400, "Invalid campaign id.")
            .auth_problems()
            .problem(404, "No such campaign.")
            .problem(
                409,
                "The processor refused the command (e.g. the campaign is closed).",
            )
            .problem(500, unreadable)
            .problem(503, not_applied)
    };

    vec![
        Op::new(
            "post",
            "/v1/campaigns",
            "createCampaign",
            "campaigns",
            ADMIN,
        )
        .summary("Create (prewarm) a campaign")
        .describe(
            "The definition travels to the campaign's processor as a command; the answer \
                 waits (up to 10 s) until it is applied. Sending the same definition again is \
                 safe.",
        )
        .body(schema::<CampaignSpec>(g))
        .json(201, "Created.", campaign_view.clone())
        .json(
            200,
            "A campaign with this id and the identical definition exists already.",
            campaign_view.clone(),
        )
        .problem(400, "Invalid body or campaign definition.")
        .auth_problems()
        .problem(
            409,
            "A campaign with this id exists with a different definition.",
        )
        .problem(413, "The body is too large.")
        .problem(500, unreadable)
        .problem(503, not_applied),
        Op::new(
            "get",
            "/v1/campaigns/{id}",
            "getCampaign",
            "campaigns",
            Public,
        )
        .summary("A campaign: state, stock, prizes, definition")
        .json(200, "The campaign.", campaign_view.clone())
        .problem(400, "Invalid campaign id.")
        .problem(404, "No such campaign.")
        .problem(500, unreadable)
        .problem(503, "Redis is unavailable."),
        Op::new(
            "post",
            "/v1/campaigns/{id}/stock",
            "addStock",
            "campaigns",
            ADMIN,
        )
        .summary("Add stock mid-sale")
        .body(schema::<AddStockBody>(g))
        .json(200, applied, campaign_view.clone())
        .problem(
            400,
            "Invalid body (quantity must be 1-1000000000) or campaign id.",
        )
        .auth_problems()
        .problem(404, "No such campaign.")
        .problem(
            409,
            "The processor refused the command (e.g. an unknown prize).",
        )
        .problem(413, "The body is too large.")
        .problem(500, unreadable)
        .problem(503, not_applied),
        command("/v1/campaigns/{id}/close", "closeCampaign")
            .summary("Close a campaign now")
            .describe("Stops taking requests."),
        command("/v1/campaigns/{id}/publish", "publishCampaign").summary("Take a draft live"),
        command("/v1/campaigns/{id}/reset", "resetCampaign")
            .summary("Reset a campaign (test environments only)")
            .describe(
                "Every unit back; every user, order and decision of the campaign forgotten. Off \
                 unless ingest runs with `SECKILL_ENABLE_RESET=true`.",
            )
            .problem(
                403,
                "The token does not have the role admin, or reset is off \
                 (`SECKILL_ENABLE_RESET`).",
            ),
        Op::new(
            "get",
            "/v1/campaigns/{id}/stats",
            "getCampaignStats",
            "campaigns",
            ADMIN,
        )
        .summary("A campaign's stock and its requests decided, by outcome")
        .json(200, "The campaign's counters.", schema_ref("CampaignStats"))
        .auth_problems()
        .problem(404, "No such campaign.")
        .problem(500, unreadable)
        .problem(503, "Redis is unavailable."),
        Op::new(
            "get",
            "/v1/campaigns/{id}/users/{user_id}",
            "getParticipation",
            "campaigns",
            Caller,
        )
        .summary("Has this user bought?")
        .describe("A caller reads their own participation; another user's needs the role admin.")
        .json(
            200,
            "The user's participation.",
            schema::<UserParticipation>(g),
        )
        .auth_problems()
        .problem(
            403,
            "The user is not the caller, and the token does not have the role admin.",
        )
        .problem(404, "No such campaign.")
        .problem(500, unreadable)
        .problem(503, "Redis is unavailable."),
        Op::new("get", "/v1/stats", "getSystemStats", "operations", ADMIN)
            .summary("The whole system at a glance")
            .json(200, "System counters.", schema_ref("SystemStats"))
            .auth_problems()
            .problem(503, "Redis is unavailable."),
        Op::new(
            "post",
            "/v1/purchases",
            "createPurchase",
            "purchases",
            Caller,
        )
        .summary("Buy (or draw, in a lottery)")
        .describe(
            "The user and their eligibility attributes come from the token, never from the \
                 body. Without `wait_ms` the request is queued and answered 202; poll \
                 `GET /v1/requests/{request_id}`. A retry with the same `Idempotency-Key` is \
                 the same request, and gets its decision.",
        )
        .param(param_ref("wait_ms"))
        .param(param_ref("Idempotency-Key"))
        .body(schema::<PurchaseBody>(g))
        .json(
            200,
            "Decided (also a refusal such as sold_out, not_active or not_eligible).",
            schema::<Decision>(g),
        )
        .json(
            202,
            "Queued, not decided yet. When `wait_ms` ran out, `queue` says where the request \
             stands in line.",
            accepted.clone(),
        )
        .problem(
            400,
            "Invalid body, query, campaign id, quantity or Idempotency-Key.",
        )
        .auth_problems()
        .problem(404, "No such campaign.")
        .problem(413, "The body is too large.")
        .problem(
            429,
            "Over a request rate (user, client address, campaign or instance).",
        )
        .problem(
            503,
            "Busy (too many requests in flight), or the broker is unavailable: the outcome \
                 is unknown; retry with the same Idempotency-Key.",
        ),
        Op::new(
            "get",
            "/v1/requests/{request_id}",
            "getRequest",
            "requests",
            Caller,
        )
        .summary("A request's decision or result")
        .describe(
            "What the processor recorded: a purchase decision, a pay or cancel result, or a \
                 campaign command's outcome; `pending` while there is none. A pending purchase \
                 also says where it stands in line (`queue`): how many messages of its \
                 partition of the requests topic the processors still have to go through before \
                 it (every message counts, commands included), and an estimated wait from \
                 their recent decision rate; `queue` is left out until ingest has recorded the \
                 request's position (a few ms after the answer), and for requests produced \
                 straight to the topic. A caller reads their own requests; others' need the \
                 role admin.",
        )
        .json(
            200,
            "The decision or result, or `{request_id, status: \"pending\", queue?}`.",
            json!({
                "anyOf": [
                    schema::<Decision>(g),
                    schema::<OrderCommandResult>(g),
                    schema::<CampaignApplied>(g),
                    accepted.clone(),
                ],
            }),
        )
        .problem(400, "Invalid request id.")
        .auth_problems()
        .problem(
            403,
            "The request (decided, or pending with a known place in line) is another \
             user's, and the token does not have the role admin.",
        )
        .problem(503, "Redis is unavailable."),
        Op::new("get", "/v1/orders", "listOrders", "orders", Caller)
            .summary("List orders, by order id")
            .describe(
                "A caller lists their own orders; another `user_id`, or every user's, needs the \
                 role admin. Pass the last order id as `after` for the next page.",
            )
            .query(
                "campaign_id",
                "Only this campaign's orders.",
                json!({ "type": "string" }),
            )
            .query(
                "user_id",
                "Only this user's orders (the caller's when left out, unless admin).",
                json!({ "type": "string" }),
            )
            .query(
                "limit",
                "At most this many (default 100).",
                json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 }),
            )
            .query(
                "after",
                "Orders after this order id.",
                json!({ "type": "string" }),
            )
            .json(
                200,
                "The orders.",
                json!({ "type": "array", "items": schema::<OrderView>(g) }),
            )
            .problem(400, "Invalid query string or limit.")
            .auth_problems()
            .problem(
                403,
                "`user_id` is another user, or left out, and the token does not have the role \
                 admin.",
            )
            .problem(503, "The order store is unavailable."),
        Op::new("get", "/v1/orders/{order_id}", "getOrder", "orders", Caller)
            .summary("An order")
            .describe("The caller's own order; any order for the role admin.")
            .json(200, "The order.", schema::<OrderView>(g))
            .auth_problems()
            .problem(403, "The order belongs to another user.")
            .problem(
                404,
                "No such order in the store (a fresh reservation may take a moment to be \
                 stored).",
            )
            .problem(503, "The order store is unavailable."),
        Op::new(
            "post",
            "/v1/orders/{order_id}/pay",
            "payOrder",
            "orders",
            PAYMENTS,
        )
        .summary("Confirm an order's payment")
        .describe(
            "Sent by the payment service. The same `payment_ref` again is a retry; another \
                 one is another payment (refused once the order is paid).",
        )
        .param(param_ref("wait_ms"))
        .param(param_ref("Idempotency-Key"))
        .body(schema::<PayBody>(g))
        .json(200, "Paid.", order_result.clone())
        .json(202, queued, accepted.clone())
        .problem(400, "Invalid body, query, order id or Idempotency-Key.")
        .auth_problems()
        .problem(404, "No such order.")
        .problem(409, refused)
        .problem(413, "The body is too large.")
        .problem(503, retry_same_key),
        Op::new(
            "post",
            "/v1/orders/{order_id}/cancel",
            "cancelOrder",
            "orders",
            Caller,
        )
        .summary("Cancel an order")
        .describe("The order's owner cancels it; its units go back on sale.")
        .param(param_ref("wait_ms"))
        .param(param_ref("Idempotency-Key"))
        .json(200, "Cancelled.", order_result.clone())
        .json(202, queued, accepted.clone())
        .problem(400, "Invalid query, order id or Idempotency-Key.")
        .auth_problems()
        .problem(
            403,
            "The order belongs to another user (`reason`: `not_owner`).",
        )
        .problem(404, "No such order.")
        .problem(409, refused)
        .problem(503, retry_same_key),
        Op::new("get", "/healthz", "live", "operations", Public)
            .summary("Liveness")
            .describe("The process answers; no dependency is checked.")
            .json(200, "Alive.", schema_ref("Liveness")),
        Op::new("get", "/readyz", "ready", "operations", Public)
            .summary("Readiness")
            .describe(
                "The broker, Redis and the order store answer, and no processor or sink group \
                 behind this gateway is stalled.",
            )
            .json(200, "Ready.", schema_ref("Readiness"))
            .problem(503, "Not ready; `detail` names what is down."),
        Op::new("get", "/metrics", "metrics", "operations", Public)
            .summary("Prometheus metrics")
            .text(
                200,
                "The metrics (Prometheus text format).",
                "text/plain; version=0.0.4",
            ),
        Op::new("get", "/openapi.json", "openapi", "operations", Public)
            .summary("This document")
            .json(
                200,
                "The OpenAPI 3.1 document of this API.",
                json!({ "type": "object" }),
            ),
    ]
}

/// The schemas written here rather than derived: the problem object of
/// `crate::problem` and the bodies the handlers build with `json!`.
fn local_schemas(g: &mut SchemaGenerator) -> Vec<(&'static str, Value)> {
    let count = schema::<u64>(g);
    vec![
        (
            "Problem",
            json!({
                "description": "An error (RFC 9457 problem details), sent as \
                                `application/problem+json`.",
                "type": "object",
                "properties": {
                    "type": {
                        "description": "Always `about:blank`: the status says what kind of error \
                                        it is.",
                        "type": "string",
                    },
                    "title": {
                        "description": "The status's reason phrase, e.g. `Not Found`.",
                        "type": "string",
                    },
                    "status": {
                        "description": "The HTTP status code.",
                        "type": "integer",
                        "minimum": 100,
                        "maximum": 599,
                    },
                    "detail": {
                        "description": "What went wrong, and what to do about it.",
                        "type": "string",
                    },
                    "request_id": {
                        "description": "The request the error is about, when there is one (e.g. a \
                                        command queued but not applied in time, a refused pay or \
                                        cancel).",
                        "type": "string",
                    },
                    "reason": {
                        "description": "Machine-readable cause, e.g. `expired`, `already_paid`, \
                                        `cancelled`, `not_owner`.",
                        "type": "string",
                    },
                },
                "required": ["type", "title", "status", "detail"],
            }),
        ),
        (
            "CampaignStats",
            json!({
                "description": "`GET /v1/campaigns/{id}/stats`.",
                "type": "object",
                "properties": {
                    "campaign_id": { "type": "string" },
                    "state": schema::<CampaignState>(g),
                    "stock": schema::<StockView>(g),
                    "prizes": schema::<Vec<PrizeStock>>(g),
                    "decisions": {
                        "description": "Requests decided, by decision status.",
                        "type": "object",
                        "propertyNames": schema::<DecisionStatus>(g),
                        "additionalProperties": count,
                    },
                    "users_holding": described(&count, "Users who hold units (prizes) now."),
                    "orders_awaiting_payment":
                        described(&count, "Reservations waiting for their payment."),
                },
                "required": [
                    "campaign_id", "state", "stock", "prizes", "decisions",
                    "users_holding", "orders_awaiting_payment",
                ],
            }),
        ),
        (
            "SystemStats",
            json!({
                "description": "`GET /v1/stats`.",
                "type": "object",
                "properties": {
                    "campaigns": described(&count, "Campaigns known."),
                    "uptime_secs": described(&count, "Seconds since this instance started."),
                    "inflight": described(&count, "Purchase requests being handled now."),
                    "purchases": {
                        "description": "Purchase requests handled by this instance, by outcome \
                                        (`queued`, `replayed`, `refused`, `fast_sold_out`, \
                                        `fast_not_active`).",
                        "type": "object",
                        "additionalProperties": count,
                    },
                },
                "required": ["campaigns", "uptime_secs", "inflight", "purchases"],
            }),
        ),
        (
            "Liveness",
            json!({
                "type": "object",
                "properties": { "status": { "const": "ok" } },
                "required": ["status"],
            }),
        ),
        (
            "Readiness",
            json!({
                "type": "object",
                "properties": {
                    "status": { "const": "ready" },
                    "checks": {
                        "description": "Each dependency: `ok`, or what is wrong.",
                        "type": "object",
                        "properties": {
                            "kafka": { "type": "string" },
                            "redis": { "type": "string" },
                            "store": { "type": "string" },
                            "pipeline": { "type": "string" },
                        },
                        "additionalProperties": { "type": "string" },
                    },
                },
                "required": ["status", "checks"],
            }),
        ),
    ]
}

/// The whole document.
pub(crate) fn document() -> Value {
    let mut g = generator();
    let ops = operations(&mut g);
    let local = local_schemas(&mut g);
    let mut schemas = g.take_definitions(true);
    for (name, schema) in local {
        // Deterministic, so the tests catch a clash; better loud than shadowed.
        assert!(
            schemas.insert(name.to_owned(), schema).is_none(),
            "schema name {name} is taken by a seckill_schemas type; rename the local one"
        );
    }

    let mut paths = Map::new();
    for op in &ops {
        let item = paths
            .entry(op.path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[op.method] = op.to_value();
    }

    json!({
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "seckill ingest",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP gateway of seckill, a flash-sale engine: campaigns, \
                            purchases, requests and orders. Errors are `application/problem+json` \
                            (RFC 9457).",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "tags": [
            { "name": "campaigns", "description": "Create, run and inspect campaigns." },
            { "name": "purchases", "description": "Buy, or draw in a lottery." },
            { "name": "requests", "description": "What became of a request." },
            { "name": "orders", "description": "Orders: read, pay, cancel." },
            { "name": "operations", "description": "Health, metrics, this document." },
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "`Authorization: Bearer <JWT>`, signed HS256, RS256 or ES256. \
                                    The user is the `sub` claim; the roles (`admin`, `payments`) \
                                    and the eligibility attributes come from claims too. The \
                                    static admin token (`SECKILL_ADMIN_TOKEN`) is accepted as the \
                                    bearer of the admin routes. An operation's security \
                                    requirement names the role it needs.",
                },
            },
            "parameters": {
                "wait_ms": {
                    "name": "wait_ms",
                    "in": "query",
                    "required": false,
                    "description": "Wait up to this many milliseconds for the outcome (at most \
                                    the gateway's `SECKILL_MAX_WAIT_MS`). 0 or left out: answer \
                                    202 at once.",
                    "schema": { "type": "integer", "minimum": 0, "default": 0 },
                },
                "Idempotency-Key": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": false,
                    "description": "The same key again is the same request: it is decided once, \
                                    and a retry gets that decision.",
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": "^[!-~]+$",
                    },
                },
            },
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": { "type": "integer", "minimum": 0 },
                },
                "WWW-Authenticate": {
                    "description": "The bearer challenge, e.g. `Bearer realm=\"seckill\", \
                                    error=\"invalid_token\"`.",
                    "required": true,
                    "schema": { "type": "string" },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use axum::http::StatusCode;
    use serde_json::Value;

    use super::{document, render};
    use crate::problem::Problem;

    const METHODS: [&str; 8] = [
        "get", "post", "put", "patch", "delete", "head", "options", "trace",
    ];

    /// The router's source: the routes are read from it.
    const ROUTER_SRC: &str = include_str!("routes/mod.rs");

    /// Splits `s`, which follows an opening parenthesis, at the matching
    /// closing one: (inside, after).
    fn split_parens(s: &str) -> (&str, &str) {
        let mut depth = 0usize;
        let mut in_str = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_str => escaped = true,
                '"' => in_str = !in_str,
                '(' if !in_str => depth += 1,
                ')' if !in_str => {
                    if depth == 0 {
                        return (&s[..i], &s[i + 1..]);
                    }
                    depth -= 1;
                }
                _ => {}
            }
        }
        panic!("unbalanced parentheses in routes/mod.rs after {s:?}");
    }

    /// (method, path, handler) of each `.route("path", get(h).post(h2))` in
    /// the router. Anything it cannot read fails the test rather than
    /// being skipped.
    fn registered_routes() -> Vec<(String, String, String)> {
        routes_in(ROUTER_SRC)
    }

    fn routes_in(src: &str) -> Vec<(String, String, String)> {
        let code: String = src
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for unread in [".nest(", ".merge(", ".route_service(", ".nest_service("] {
            assert!(
                !code.contains(unread),
                "routes/mod.rs registers routes with `{unread}`, which this test does not \
                 read; teach registered_routes about it"
            );
        }
        let mut found = Vec::new();
        let mut rest = code.as_str();
        while let Some(at) = rest.find(".route(") {
            let (args, after) = split_parens(&rest[at + ".route(".len()..]);
            rest = after;
            let args = args.trim();
            let lit = args
                .strip_prefix('"')
                .unwrap_or_else(|| panic!("route path is not a string literal: {args}"));
            let end = lit.find('"').expect("the path literal ends");
            let path = &lit[..end];
            let mut chain = lit[end + 1..]
                .trim_start()
                .strip_prefix(',')
                .unwrap_or_else(|| panic!("route {path}: no method router"))
                .trim_start();
            loop {
                let open = chain
                    .find('(')
                    .unwrap_or_else(|| panic!("route {path}: cannot read {chain:?}"));
                let func = chain[..open].trim();
                let method = func.rsplit("::").next().unwrap_or(func);
                assert!(
                    METHODS.contains(&method),
                    "route {path}: {func:?} is not a method router this test reads"
                );
                let (handler, after) = split_parens(&chain[open + 1..]);
                found.push((
                    method.to_owned(),
                    path.to_owned(),
                    handler.trim().to_owned(),
                ));
                let after = after.trim_start();
                match after.strip_prefix('.') {
                    Some(next) => chain = next,
                    None => {
                        assert!(
                            after.trim_start_matches(',').trim().is_empty(),
                            "route {path}: cannot read {after:?}"
                        );
                        break;
                    }
                }
            }
        }
        assert!(!found.is_empty(), "no routes found in routes/mod.rs");
        found
    }

    #[test]
    fn the_route_reader_reads_wrapped_and_chained_method_routers() {
        let src = r#"
            // .route("/commented", get(out))
            Router::new()
                .route("/a/{id}", get(a::get).post(a::create))
                .route(
                    "/b",
                    axum::routing::delete(b::remove),
                )
                .route_layer(middleware::from_fn(check))
                .fallback(not_found)
        "#;
        let found: Vec<_> = routes_in(src)
            .into_iter()
            .map(|(m, p, h)| format!("{m} {p} {h}"))
            .collect();
        assert_eq!(
            found,
            [
                "get /a/{id} a::get",
                "post /a/{id} a::create",
                "delete /b b::remove"
            ]
        );
        let nested =
            std::panic::catch_unwind(|| routes_in(r#".route("/x", get(x)).nest("/y", y)"#));
        assert!(nested.is_err(), "a nested router must not pass unread");
        let not_literal = std::panic::catch_unwind(|| routes_in(".route(PATH, get(x))"));
        assert!(
            not_literal.is_err(),
            "a path that is not a literal must not pass unread"
        );
    }

    fn routed() -> BTreeSet<(String, String)> {
        registered_routes()
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect()
    }

    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("path item");
                item.keys()
                    .filter(|k| METHODS.contains(&k.as_str()))
                    .map(|m| (m.clone(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn committed_openapi_document_matches_the_types() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/openapi.json");
        let text = render();
        if std::env::var_os("SECKILL_WRITE_SCHEMAS").is_some() {
            std::fs::write(&path, &text).expect("write schemas/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "schemas/openapi.json is out of date; run \
             SECKILL_WRITE_SCHEMAS=1 cargo test -p seckill-ingest openapi and commit it"
        );
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_routed() {
        let routes = routed();
        let doc = documented(&document());
        let undocumented: Vec<_> = routes.difference(&doc).collect();
        let unrouted: Vec<_> = doc.difference(&routes).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "router and OpenAPI document disagree: in routes/mod.rs but not in openapi.rs: \
             {undocumented:?}; in openapi.rs but not routed: {unrouted:?}"
        );
        let serve = registered_routes()
            .into_iter()
            .find(|(m, p, _)| m == "get" && p == "/openapi.json")
            .map(|(_, _, h)| h);
        assert!(
            serve
                .as_deref()
                .is_some_and(|h| h.ends_with("openapi::serve")),
            "GET /openapi.json must be served by openapi::serve, not {serve:?}"
        );
    }

    #[tokio::test]
    async fn openapi_json_is_served_with_the_bearer_scheme_and_every_route() {
        let resp = super::serve().await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        let doc: Value = serde_json::from_slice(&bytes).expect("the document is JSON");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1.")),
            "openapi version: {}",
            doc["openapi"]
        );
        let bearer = &doc["components"]["securitySchemes"]["bearer"];
        assert_eq!(bearer["type"], "http");
        assert_eq!(bearer["scheme"], "bearer");
        let missing: Vec<_> = routed().difference(&documented(&doc)).cloned().collect();
        assert!(
            missing.is_empty(),
            "routes missing from /openapi.json: {missing:?}"
        );
    }

    /// Every operation names its security and answers; a protected one
    /// says 401 (with the challenge), a role one 403, and every problem is
    /// the problem schema.
    #[test]
    fn every_operation_declares_its_security_and_problems() {
        let doc = document();
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let at = format!("{method} {path}");
                assert!(
                    ids.insert(op["operationId"].as_str().expect("operationId").to_owned()),
                    "{at}: duplicate operationId"
                );
                let security = op["security"].as_array().expect("security");
                let responses = op["responses"].as_object().expect("responses");
                assert!(responses.keys().any(|s| s.starts_with('2')), "{at}: no 2xx");
                if let Some(req) = security.first() {
                    let roles = req["bearer"].as_array().expect("the bearer scheme");
                    let challenge = responses
                        .get("401")
                        .map(|r| &r["headers"]["WWW-Authenticate"]);
                    assert!(
                        challenge.is_some_and(Value::is_object),
                        "{at}: needs a token but documents no 401 with WWW-Authenticate"
                    );
                    if !roles.is_empty() {
                        assert!(responses.contains_key("403"), "{at}: role without 403");
                    }
                }
                for (status, resp) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            resp["content"]["application/problem+json"]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{at}: {status} is not a problem"
                        );
                    }
                }
            }
        }
    }

    /// No `$defs` are left, and every `$ref` points into the document.
    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, doc: &Value, bad: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    for (k, v) in map {
                        if k == "$defs" {
                            bad.push("$defs".into());
                        }
                        if k == "$ref" {
                            let target = v
                                .as_str()
                                .and_then(|r| r.strip_prefix('#'))
                                .and_then(|p| doc.pointer(p));
                            if target.is_none() {
                                bad.push(v.to_string());
                            }
                        }
                        walk(v, doc, bad);
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc, bad)),
                _ => {}
            }
        }
        let doc = document();
        let mut bad = Vec::new();
        walk(&doc, &doc, &mut bad);
        assert!(bad.is_empty(), "unresolved references: {bad:?}");
    }

    /// The problem schema has exactly the fields `crate::problem` writes,
    /// and requires the ones it always writes.
    #[test]
    fn problem_schema_mirrors_the_problem_type() {
        let keys = |p: Problem| -> BTreeSet<String> {
            match serde_json::to_value(p).expect("a problem serialises") {
                Value::Object(m) => m.keys().cloned().collect(),
                other => panic!("a problem is an object, not {other}"),
            }
        };
        let doc = document();
        let schema = &doc["components"]["schemas"]["Problem"];
        let properties: BTreeSet<String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        let required: BTreeSet<String> = schema["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let full = Problem::conflict("x")
            .request_id("r")
            .reason("expired".into())
            .retry_after(1)
            .www_authenticate("Bearer".into());
        assert_eq!(keys(full), properties);
        assert_eq!(keys(Problem::not_found("x")), required);
    }
}
