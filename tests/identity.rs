//! The trust boundary at ingest: who the caller is and what they may do.
//!
//! | guarantee | test |
//! |---|---|
//! | no token, another key's token, an expired or not-yet-valid one, `alg: none`, a header-only `X-User-Id`: 401 problem+json with `WWW-Authenticate: Bearer`; body attributes refused with a 400 naming the token; the token's attributes decide eligibility | `tokens_are_checked_and_attributes_come_from_the_token` |
//! | RS256 and ES256 from a JWKS URL (and from a file); `iss`/`aud` checked; an HS256 token made with the public key is refused; a key rotated into the JWKS is picked up on its unknown `kid`, a retired one refused | `jwks_keys_are_pinned_to_their_algorithm_and_rotation_is_picked_up` |
//! | campaign and ops endpoints need role admin (403 for a buyer); a buyer reads, lists and cancels only their own orders, requests and participation; payment needs role payments, stores the ref, the same ref answers the same, another ref is 409 | `roles_and_ownership_decide_who_may_do_what` |
//! | with no token key and no admin token the admin API answers 401 saying how to configure one; a static admin token is accepted, a wrong one is not; `SECKILL_AUTH=header` trusts `X-User-Id` and `/readyz` says so | `admin_is_closed_by_default_and_header_mode_is_explicit` |
//! | rate limits per user, per client address (X-Forwarded-For believed only from a trusted proxy) and per campaign; one user cannot drain the global budget | `rate_limits_are_keyed_on_user_address_and_campaign` |
//! | `seckill token` prints a token ingest accepts, with its roles and attributes | `seckill_token_prints_a_token_ingest_accepts` |
//! | `/readyz` names what is down, never an address or a credential | `readyz_names_what_is_down_without_addresses_or_credentials` |

mod common;

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::http::{Api, CampaignArgs, Reply};
use common::{token, Stack};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token with these claims, signed by `alg` under `key`.
fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 600, "iat": now() })
}

async fn purchase_as(api: &Api, auth: Option<&str>, body: &Value) -> Reply {
    let mut headers = vec![];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    // `post` sends the operator's token when no Authorization is given; an
    // anonymous call names an empty one instead.
    if auth.is_none() {
        headers.push(("Authorization", ""));
    }
    api.post("/v1/purchases?wait_ms=5000", body, &headers)
        .await
        .expect("POST /v1/purchases")
}

fn assert_401(r: &Reply, what: &str, says: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    assert_eq!(r.content_type, "application/problem+json", "{what}");
    let detail = r.body["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains(says),
        "{what}: the 401 should say {says:?}: {detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_attributes_come_from_the_token() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let cid = format!("id-{}", token(6));
    let mut body = CampaignArgs::new(&cid, 10, 1).body();
    body["eligibility"] = json!({ "attr": "age", "op": ">=", "value": 18 });
    let r = api.post("/v1/campaigns", &body, &[]).await.expect("create");
    assert_eq!(r.status, 201, "{}", r.body);
    let buy = json!({ "campaign_id": cid });

    // No credentials: 401 with the Bearer challenge.
    let client = reqwest::Client::new();
    let raw = client
        .post(format!("{}/v1/purchases", api.base))
        .json(&buy)
        .send()
        .await
        .expect("post");
    assert_eq!(raw.status().as_u16(), 401);
    let challenge = raw
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge:?}");
    let r = purchase_as(&api, None, &buy).await;
    assert_401(&r, "no token", "Bearer");

    // X-User-Id is not an identity in the default mode.
    let r = api
        .post(
            "/v1/purchases",
            &buy,
            &[("Authorization", ""), ("X-User-Id", "alice")],
        )
        .await
        .expect("post");
    assert_401(&r, "X-User-Id only", "Bearer");

    let ours = EncodingKey::from_secret(common::jwt_key());
    let theirs = EncodingKey::from_secret(b"another-key-of-32-bytes-000000000");
    let forged = sign(Algorithm::HS256, None, &theirs, &claims("alice"));
    let r = purchase_as(&api, Some(&format!("Bearer {forged}")), &buy).await;
    assert_401(&r, "another key", "another key");

    let expired = sign(
        Algorithm::HS256,
        None,
        &ours,
        &json!({ "sub": "alice", "exp": now() - 3600 }),
    );
    let r = purchase_as(&api, Some(&format!("Bearer {expired}")), &buy).await;
    assert_401(&r, "expired", "expired");

    let early = sign(
        Algorithm::HS256,
        None,
        &ours,
        &json!({ "sub": "alice", "exp": now() + 7200, "nbf": now() + 3600 }),
    );
    let r = purchase_as(&api, Some(&format!("Bearer {early}")), &buy).await;
    assert_401(&r, "nbf in an hour", "not valid yet");

    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("alice").to_string().as_bytes())
    );
    let r = purchase_as(&api, Some(&format!("Bearer {none}")), &buy).await;
    assert_eq!(r.status, 401, "alg none: {}", r.body);

    let no_sub = sign(
        Algorithm::HS256,
        None,
        &ours,
        &json!({ "exp": now() + 600 }),
    );
    let r = purchase_as(&api, Some(&format!("Bearer {no_sub}")), &buy).await;
    assert_401(&r, "no sub", "sub");

    // Attributes come from the token, never from the body.
    let adult = Api::bearer_with("adult", &[], Some(&json!({ "age": 30 })));
    let r = purchase_as(
        &api,
        Some(&adult),
        &json!({ "campaign_id": cid, "attributes": { "age": 99 } }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["detail"].as_str().unwrap_or("").contains("token"),
        "the 400 should say attributes come from the token: {}",
        r.body
    );
    let r = purchase_as(&api, Some(&adult), &buy).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], json!("reserved"), "{}", r.body);
    let minor = Api::bearer_with("minor", &[], Some(&json!({ "age": 15 })));
    let r = purchase_as(&api, Some(&minor), &buy).await;
    assert_eq!(r.body["status"], json!("not_eligible"), "{}", r.body);
    let claimless = Api::bearer("claimless");
    let r = purchase_as(&api, Some(&claimless), &buy).await;
    assert_eq!(r.body["status"], json!("not_eligible"), "{}", r.body);
    drop(all);
}

/// Serves `dir/jwks.json` over HTTP, read on every request.
async fn serve_jwks(dir: std::path::PathBuf) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let dir = dir.clone();
            async move { std::fs::read_to_string(dir.join("jwks.json")).unwrap_or_default() }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/jwks.json")
}

/// A new private key in PEM (openssl genpkey).
fn genkey(dir: &std::path::Path, name: &str, args: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let out = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&path)
        .output()
        .expect("run openssl (scripts/install-deps installs it)");
    assert!(out.status.success(), "openssl: {out:?}");
    std::fs::read(&path).expect("read key")
}

fn public_pem(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.join(name))
        .output()
        .expect("openssl pkey");
    assert!(out.status.success(), "openssl: {out:?}");
    out.stdout
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut j =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).expect("jwk"))
            .expect("json");
    j["kid"] = json!(kid);
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_are_pinned_to_their_algorithm_and_rotation_is_picked_up() {
    let stack = Stack::start().await;
    let dir = stack.dir().to_path_buf();
    let rsa = genkey(
        &dir,
        "rsa1.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let ec = genkey(
        &dir,
        "ec1.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let rsa_key = EncodingKey::from_rsa_pem(&rsa).expect("rsa key");
    let ec_key = EncodingKey::from_ec_pem(&ec).expect("ec key");
    let set = json!({ "keys": [
        jwk(&rsa_key, Algorithm::RS256, "rsa-1"),
        jwk(&ec_key, Algorithm::ES256, "ec-1"),
    ]});
    std::fs::write(dir.join("jwks.json"), set.to_string()).expect("write jwks");
    let url = serve_jwks(dir.clone()).await;
    let all = stack
        .seckill(
            &["all"],
            &[
                ("SECKILL_JWT_JWKS", url.as_str()),
                ("SECKILL_JWT_ISSUER", "https://id.example"),
                ("SECKILL_JWT_AUDIENCE", "seckill"),
                // Only the JWKS: no HS256 key at all.
                ("SECKILL_JWT_HS256_KEY_FILE", ""),
                ("SECKILL_ADMIN_TOKEN", "static-admin-token-0123456789"),
            ],
        )
        .await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let admin = [("Authorization", "Bearer static-admin-token-0123456789")];
    let cid = format!("jwks-{}", token(6));
    let r = api
        .post(
            "/v1/campaigns",
            &CampaignArgs::new(&cid, 10, 1).body(),
            &admin,
        )
        .await
        .expect("create");
    assert_eq!(r.status, 201, "{}", r.body);
    let buy = json!({ "campaign_id": cid });
    let good = |sub: &str| json!({ "sub": sub, "exp": now() + 600, "iss": "https://id.example", "aud": "seckill" });

    let t = sign(Algorithm::RS256, Some("rsa-1"), &rsa_key, &good("rs-user"));
    let r = purchase_as(&api, Some(&format!("Bearer {t}")), &buy).await;
    assert_eq!(r.status, 200, "RS256: {}", r.body);
    assert_eq!(r.body["user_id"], json!("rs-user"));
    let t = sign(Algorithm::ES256, Some("ec-1"), &ec_key, &good("es-user"));
    let r = purchase_as(&api, Some(&format!("Bearer {t}")), &buy).await;
    assert_eq!(r.status, 200, "ES256: {}", r.body);

    // The wrong issuer or audience.
    let mut bad = good("x");
    bad["iss"] = json!("https://evil.example");
    let t = sign(Algorithm::RS256, Some("rsa-1"), &rsa_key, &bad);
    assert_401(
        &purchase_as(&api, Some(&format!("Bearer {t}")), &buy).await,
        "iss",
        "iss",
    );
    let mut bad = good("x");
    bad["aud"] = json!("other-service");
    let t = sign(Algorithm::RS256, Some("rsa-1"), &rsa_key, &bad);
    assert_401(
        &purchase_as(&api, Some(&format!("Bearer {t}")), &buy).await,
        "aud",
        "aud",
    );

    // HS256 made with the RSA public key as the secret: never checked
    // against a public key.
    let public = public_pem(&dir, "rsa1.pem");
    let t = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(&public),
        &good("x"),
    );
    assert_401(
        &purchase_as(&api, Some(&format!("Bearer {t}")), &buy).await,
        "HS/RS",
        "HS256",
    );
    // An ES256 header on the RSA key's kid.
    let t = sign(Algorithm::ES256, Some("rsa-1"), &ec_key, &good("x"));
    assert_eq!(
        purchase_as(&api, Some(&format!("Bearer {t}")), &buy)
            .await
            .status,
        401
    );

    // Rotation: a token under a key the JWKS does not hold yet is refused;
    // once the JWKS holds it, the unknown kid fetches the set again.
    let rsa2 = genkey(
        &dir,
        "rsa2.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let rsa2_key = EncodingKey::from_rsa_pem(&rsa2).expect("rsa2");
    let t2 = sign(Algorithm::RS256, Some("rsa-2"), &rsa2_key, &good("rotated"));
    let r = purchase_as(&api, Some(&format!("Bearer {t2}")), &buy).await;
    assert_401(&r, "not yet published", "rsa-2");
    let set = json!({ "keys": [
        jwk(&rsa2_key, Algorithm::RS256, "rsa-2"),
        jwk(&ec_key, Algorithm::ES256, "ec-1"),
    ]});
    std::fs::write(dir.join("jwks.json"), set.to_string()).expect("write jwks");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = purchase_as(&api, Some(&format!("Bearer {t2}")), &buy).await;
    assert_eq!(r.status, 200, "after rotation: {}", r.body);
    assert_eq!(r.body["user_id"], json!("rotated"));
    // The retired key's tokens stop working once it is gone from the set
    // (here: fetched with the rotation).
    let t = sign(Algorithm::RS256, Some("rsa-1"), &rsa_key, &good("old"));
    assert_eq!(
        purchase_as(&api, Some(&format!("Bearer {t}")), &buy)
            .await
            .status,
        401
    );
    drop(all);

    // The same keys from a JWKS file.
    let file = dir.join("jwks.json").display().to_string();
    let all = stack
        .seckill(
            &["all"],
            &[
                ("SECKILL_JWT_JWKS", file.as_str()),
                ("SECKILL_JWT_ISSUER", "https://id.example"),
                ("SECKILL_JWT_AUDIENCE", "seckill"),
                ("SECKILL_JWT_HS256_KEY_FILE", ""),
            ],
        )
        .await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let t = sign(Algorithm::ES256, Some("ec-1"), &ec_key, &good("from-file"));
    let r = purchase_as(&api, Some(&format!("Bearer {t}")), &buy).await;
    // Accepted: decided (200) or queued (202) while the new process joins.
    assert!(
        r.status == 200 || r.status == 202,
        "ES256 from a JWKS file: {} {}",
        r.status,
        r.body
    );
    drop(all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_ownership_decide_who_may_do_what() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let alice = Api::bearer("alice");
    let bob = Api::bearer("bob");
    let cid = format!("own-{}", token(6));

    // Campaign and ops endpoints need role admin.
    let body = CampaignArgs::new(&cid, 10, 1).body();
    let r = api
        .post("/v1/campaigns", &body, &[("Authorization", &alice)])
        .await
        .expect("create");
    assert_eq!(r.status, 403, "a buyer creating a campaign: {}", r.body);
    api.create_campaign(&CampaignArgs::new(&cid, 10, 1)).await;
    for path in [
        format!("/v1/campaigns/{cid}/close"),
        format!("/v1/campaigns/{cid}/publish"),
        format!("/v1/campaigns/{cid}/reset"),
    ] {
        let r = api
            .post(&path, &json!({}), &[("Authorization", &alice)])
            .await
            .expect("post");
        assert_eq!(r.status, 403, "{path} as a buyer: {}", r.body);
    }
    let r = api
        .post(
            &format!("/v1/campaigns/{cid}/stock"),
            &json!({ "quantity": 5 }),
            &[("Authorization", &alice)],
        )
        .await
        .expect("post");
    assert_eq!(r.status, 403, "stock as a buyer: {}", r.body);
    for path in [format!("/v1/campaigns/{cid}/stats"), "/v1/stats".to_owned()] {
        let r = api.get_as(&path, Some(&alice)).await.expect("get");
        assert_eq!(r.status, 403, "{path} as a buyer: {}", r.body);
        let r = api.get_as(&path, None).await.expect("get");
        assert_eq!(r.status, 401, "{path} anonymous: {}", r.body);
    }
    // The campaign view stays public.
    assert_eq!(
        api.get_as(&format!("/v1/campaigns/{cid}"), None)
            .await
            .expect("get")
            .status,
        200
    );

    let a = api.purchase_decided(&cid, "alice", "a1", None).await;
    let b = api.purchase_decided(&cid, "bob", "b1", None).await;
    let (a_order, b_order) = (a.order_id.expect("order"), b.order_id.expect("order"));
    api.wait_orders(&cid, 2, Duration::from_secs(30)).await;

    // Orders, requests and participation are the buyer's own.
    let r = api
        .get_as(&format!("/v1/orders/{b_order}"), Some(&alice))
        .await
        .expect("get");
    assert_eq!(r.status, 403, "alice reading bob's order: {}", r.body);
    let r = api
        .get_as(&format!("/v1/orders/{a_order}"), Some(&alice))
        .await
        .expect("get");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api
        .get_as(&format!("/v1/orders?campaign_id={cid}"), Some(&alice))
        .await
        .expect("list");
    let mine: Vec<&str> = r
        .body
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|o| o["user_id"].as_str())
        .collect();
    assert_eq!(
        mine,
        vec!["alice"],
        "alice lists only her orders: {}",
        r.body
    );
    let r = api
        .get_as(
            &format!("/v1/orders?campaign_id={cid}&user_id=bob"),
            Some(&alice),
        )
        .await
        .expect("list");
    assert_eq!(r.status, 403, "alice listing bob's orders: {}", r.body);
    let r = api
        .get(&format!("/v1/orders?campaign_id={cid}"))
        .await
        .expect("list");
    assert_eq!(
        r.body.as_array().map(Vec::len),
        Some(2),
        "admin lists all: {}",
        r.body
    );
    let r = api
        .get_as(&format!("/v1/requests/{}", b.request_id), Some(&alice))
        .await
        .expect("get");
    assert_eq!(r.status, 403, "alice reading bob's request: {}", r.body);
    let r = api
        .get_as(&format!("/v1/requests/{}", b.request_id), Some(&bob))
        .await
        .expect("get");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api
        .get_as(&format!("/v1/campaigns/{cid}/users/bob"), Some(&alice))
        .await
        .expect("get");
    assert_eq!(
        r.status, 403,
        "alice reading bob's participation: {}",
        r.body
    );

    // A buyer cannot cancel another's order, nor pay at all.
    let cancel = format!("/v1/orders/{b_order}/cancel?wait_ms=5000");
    let r = api
        .post(&cancel, &json!({}), &[("Authorization", &alice)])
        .await
        .expect("cancel");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["reason"], json!("not_owner"), "{}", r.body);
    let pay = format!("/v1/orders/{a_order}/pay?wait_ms=5000");
    let r = api
        .post(
            &pay,
            &json!({ "payment_ref": "psp-1" }),
            &[("Authorization", &alice)],
        )
        .await
        .expect("pay");
    assert_eq!(r.status, 403, "a buyer paying their own order: {}", r.body);

    // The payment service pays, with a reference.
    let payments = Api::payments();
    let r = api
        .post(&pay, &json!({}), &[("Authorization", &payments)])
        .await
        .expect("pay");
    assert_eq!(r.status, 400, "a pay without payment_ref: {}", r.body);
    let first = api
        .post(
            &pay,
            &json!({ "payment_ref": "psp-1" }),
            &[("Authorization", &payments)],
        )
        .await
        .expect("pay");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], json!("paid"), "{}", first.body);
    let same = api
        .post(
            &pay,
            &json!({ "payment_ref": "psp-1" }),
            &[("Authorization", &payments)],
        )
        .await
        .expect("pay");
    assert_eq!(same.status, 200, "the same ref again: {}", same.body);
    assert_eq!(same.body, first.body, "the same ref gives the same answer");
    let other = api
        .post(
            &pay,
            &json!({ "payment_ref": "psp-2" }),
            &[("Authorization", &payments)],
        )
        .await
        .expect("pay");
    assert_eq!(
        other.status, 409,
        "another ref for a paid order: {}",
        other.body
    );
    let view = common::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let r = api
                .get_as(&format!("/v1/orders/{a_order}"), Some(&alice))
                .await?;
            if r.body["status"] == json!("paid") {
                Ok(r.body)
            } else {
                Err(r.body.to_string())
            }
        },
    )
    .await
    .expect("the order is stored paid");
    assert_eq!(view["payment_ref"], json!("psp-1"), "{view}");
    drop(all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_closed_by_default_and_header_mode_is_explicit() {
    let stack = Stack::start().await;
    // Nothing configured to let anyone in.
    let closed = stack
        .seckill(&["all"], &[("SECKILL_JWT_HS256_KEY_FILE", "")])
        .await;
    let api = Api::new(closed.http.as_deref().expect("http"));
    let cid = format!("closed-{}", token(6));
    let body = CampaignArgs::new(&cid, 10, 1).body();
    let r = api
        .post("/v1/campaigns", &body, &[("Authorization", "")])
        .await
        .expect("create");
    assert_eq!(r.status, 401, "{}", r.body);
    let detail = r.body["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("SECKILL_ADMIN_TOKEN") && detail.contains("SECKILL_JWT_HS256_KEY_FILE"),
        "the 401 should say how to configure an admin: {detail}"
    );
    // A token signed with any key is refused: there is no key.
    let r = api.post("/v1/campaigns", &body, &[]).await.expect("create");
    assert_eq!(r.status, 401, "{}", r.body);
    drop(closed);

    // A static admin token, compared in constant time.
    let with_token = stack
        .seckill(
            &["all"],
            &[("SECKILL_ADMIN_TOKEN", "static-admin-token-0123456789")],
        )
        .await;
    let api = Api::new(with_token.http.as_deref().expect("http"));
    let r = api
        .post(
            "/v1/campaigns",
            &body,
            &[("Authorization", "Bearer static-admin-token-012345678X")],
        )
        .await
        .expect("create");
    assert_eq!(r.status, 401, "a wrong static token: {}", r.body);
    let r = api
        .post(
            "/v1/campaigns",
            &body,
            &[("Authorization", "Bearer static-admin-token-0123456789")],
        )
        .await
        .expect("create");
    assert_eq!(r.status, 201, "{}", r.body);
    drop(with_token);

    // The insecure mode is explicit and visible.
    let header = stack.seckill(&["all"], &[("SECKILL_AUTH", "header")]).await;
    let api = Api::new(header.http.as_deref().expect("http"));
    let ready = api.get_as("/readyz", None).await.expect("readyz");
    assert!(
        ready.body["auth"]
            .as_str()
            .unwrap_or("")
            .contains("insecure"),
        "{}",
        ready.body
    );
    let r = api
        .post(
            "/v1/purchases?wait_ms=5000",
            &json!({ "campaign_id": cid }),
            &[("Authorization", ""), ("X-User-Id", "hdr-user")],
        )
        .await
        .expect("purchase");
    assert!(r.status == 200 || r.status == 202, "{}", r.body);
    let rid = r.body["request_id"]
        .as_str()
        .expect("request id")
        .to_owned();
    let client = reqwest::Client::new();
    let decided = common::eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let d: Value = client
                .get(format!("{}/v1/requests/{rid}", api.base))
                .header("X-User-Id", "hdr-user")
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if d["status"] == json!("pending") {
                Err(d.to_string())
            } else {
                Ok(d)
            }
        },
    )
    .await
    .expect("decided");
    assert_eq!(decided["user_id"], json!("hdr-user"), "{decided}");
    assert!(
        header.log_tail(200_000).contains("SECKILL_AUTH=header"),
        "the insecure mode is logged at start"
    );
    drop(header);
}

/// Counts the answers of `n` purchases with `headers`.
async fn statuses(
    api: &Api,
    cid: &str,
    auth: &str,
    extra: &[(&str, &str)],
    n: usize,
) -> (usize, usize) {
    let mut headers = vec![("Authorization", auth)];
    headers.extend_from_slice(extra);
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        let r = api
            .post("/v1/purchases", &json!({ "campaign_id": cid }), &headers)
            .await
            .expect("purchase");
        match r.status {
            429 => limited += 1,
            200 | 202 => ok += 1,
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    (ok, limited)
}

/// One purchase each from `n` users `<prefix>-<i>`, with the
/// X-Forwarded-For `xff(i)`; how many passed the limits.
async fn one_each(
    api: &Api,
    cid: &str,
    n: usize,
    prefix: &str,
    xff: impl Fn(usize) -> Option<String>,
) -> usize {
    let mut passed = 0;
    for i in 0..n {
        let auth = Api::bearer(&format!("{prefix}-{i}"));
        let hop = xff(i);
        let extra: Vec<(&str, &str)> = hop
            .iter()
            .map(|h| ("X-Forwarded-For", h.as_str()))
            .collect();
        passed += statuses(api, cid, &auth, &extra, 1).await.0;
    }
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_keyed_on_user_address_and_campaign() {
    let stack = Stack::start().await;
    // Per user 2/s (burst 4), per address 5/s (burst 10) believing the
    // loopback proxy, per campaign 10/s (burst 20), global 15/s (burst 30).
    let all = stack
        .seckill(
            &["all"],
            &[
                ("SECKILL_RATE_LIMIT_PER_USER", "2"),
                ("SECKILL_RATE_LIMIT_PER_IP", "5"),
                ("SECKILL_RATE_LIMIT_PER_CAMPAIGN", "10"),
                ("SECKILL_RATE_LIMIT_GLOBAL", "15"),
                ("SECKILL_TRUSTED_PROXIES", "127.0.0.1/32"),
            ],
        )
        .await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let (c1, c2) = (format!("rl1-{}", token(6)), format!("rl2-{}", token(6)));
    api.create_campaign(&CampaignArgs::new(&c1, 1000, 1000))
        .await;
    api.create_campaign(&CampaignArgs::new(&c2, 1000, 1000))
        .await;

    // One user hammering spends only their own budget...
    let hog = Api::bearer("hog");
    let (ok, limited) = statuses(&api, &c1, &hog, &[("X-Forwarded-For", "10.0.0.1")], 40).await;
    assert!(
        ok <= 6 && limited >= 34,
        "per user: {ok} passed, {limited} limited"
    );
    // ... so another user still gets through.
    let (ok, _) = statuses(
        &api,
        &c1,
        &Api::bearer("other"),
        &[("X-Forwarded-For", "10.0.0.2")],
        2,
    )
    .await;
    assert_eq!(ok, 2, "the hog drained someone else's budget");

    // Many users behind one address: the address limit (burst 10).
    let passed = one_each(&api, &c2, 20, "crowd", |_| Some("10.9.9.9".into())).await;
    assert!(
        passed <= 12,
        "per address: {passed} of 20 passed from one address"
    );
    // A client forging its own X-Forwarded-For in front of the proxy's
    // entry gains nothing: the nearest untrusted hop counts.
    let forged = one_each(&api, &c2, 5, "forger", |i| {
        Some(format!("1.2.3.{i}, 10.9.9.9"))
    })
    .await;
    assert!(
        forged <= 2,
        "forged leftmost hops escaped the address limit: {forged} of 5 passed"
    );
    drop(all);

    // Without trusted proxies the header is ignored: the peer counts.
    let all = stack
        .seckill(
            &["all"],
            &[
                ("SECKILL_RATE_LIMIT_PER_USER", "1000"),
                ("SECKILL_RATE_LIMIT_PER_IP", "5"),
            ],
        )
        .await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let passed = one_each(&api, &c2, 20, "rot", |i| Some(format!("10.1.1.{i}"))).await;
    assert!(
        passed <= 12,
        "rotating X-Forwarded-For from an untrusted peer: {passed} of 20 passed"
    );
    drop(all);

    // Per campaign: a hot campaign is limited, the other is not.
    let all = stack
        .seckill(
            &["all"],
            &[
                ("SECKILL_RATE_LIMIT_PER_USER", "1000"),
                ("SECKILL_RATE_LIMIT_PER_CAMPAIGN", "5"),
            ],
        )
        .await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let hot = one_each(&api, &c1, 20, "h", |_| None).await;
    assert!(hot <= 12, "per campaign: {hot} of 20 passed");
    let (cold, _) = statuses(&api, &c2, &Api::bearer("cold"), &[], 3).await;
    assert_eq!(cold, 3, "the other campaign was limited too");
    drop(all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seckill_token_prints_a_token_ingest_accepts() {
    let stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    let admin = stack
        .seckill_output(
            &["token", "--sub", "ops", "--role", "admin", "--ttl", "10m"],
            &[],
            30,
        )
        .await;
    let admin = format!("Bearer {}", admin.trim());
    let cid = format!("tok-{}", token(6));
    let mut body = CampaignArgs::new(&cid, 10, 1).body();
    body["eligibility"] = json!({ "attr": "age", "op": ">=", "value": 18 });
    let r = api
        .post("/v1/campaigns", &body, &[("Authorization", &admin)])
        .await
        .expect("create");
    assert_eq!(r.status, 201, "{}", r.body);
    let buyer = stack
        .seckill_output(&["token", "--sub", "tina", "--attr", "age=19"], &[], 30)
        .await;
    let r = purchase_as(
        &api,
        Some(&format!("Bearer {}", buyer.trim())),
        &json!({ "campaign_id": cid }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user_id"], json!("tina"));
    assert_eq!(
        r.body["status"],
        json!("reserved"),
        "the token's age=19 made her eligible: {}",
        r.body
    );
    // A buyer's token is no admin's.
    let r = api
        .post(
            &format!("/v1/campaigns/{cid}/close"),
            &json!({}),
            &[("Authorization", &format!("Bearer {}", buyer.trim()))],
        )
        .await
        .expect("close");
    assert_eq!(r.status, 403, "{}", r.body);
    drop(all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_what_is_down_without_addresses_or_credentials() {
    let mut stack = Stack::start().await;
    let all = stack.seckill(&["all"], &[]).await;
    let api = Api::new(all.http.as_deref().expect("http"));
    stack.kill_redis();
    let body = common::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let r = api.get_as("/readyz", None).await?;
            if r.status == 503 {
                Ok(r.body.to_string())
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        },
    )
    .await
    .expect("/readyz fails once Redis is gone");
    assert!(
        body.contains("redis") && body.contains("unreachable"),
        "{body}"
    );
    for secret in [stack.redis_url(), stack.brokers(), "127.0.0.1".to_owned()] {
        assert!(!body.contains(&secret), "/readyz shows {secret:?}: {body}");
    }
    drop(all);
}
