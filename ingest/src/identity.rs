//! Who the caller is. A caller proves it with a signed token
//! (`Authorization: Bearer <JWT>`): HS256 under a shared key file, or
//! RS256/ES256 under a key from a JWKS (a file, or a URL refreshed on a
//! timer and whenever a token names a key id not seen yet). Every key is
//! pinned to one algorithm, so a token cannot pick how it is checked: no
//! `none`, and an HS256 token is never checked against a public key.
//!
//! The user is the `sub` claim; roles (`admin`, `payments`) and the
//! eligibility attributes come from claims too, never from the request.
//! Behind a gateway that authenticates callers itself, `SECKILL_AUTH=header`
//! trusts `X-User-Id` (with `X-User-Roles` and `X-User-Attributes`)
//! instead: insecure anywhere a client can reach ingest directly, so it is
//! never the default, it is logged at start and `/readyz` shows it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use seckill_schemas::{validate_user_id, Attributes};

use crate::problem::Problem;

/// How the caller's identity is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Signed tokens (the default).
    Jwt,
    /// Trust `X-User-Id` and friends, set by an authenticating gateway.
    Header,
}

/// Where the public keys of RS256/ES256 tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    /// `http(s)://...`, fetched at start, on a timer and on an unknown `kid`.
    Url(String),
}

impl JwksSource {
    /// A URL when it starts with `http://` or `https://`, else a file path.
    pub fn parse(s: &str) -> JwksSource {
        if s.starts_with("https://") || s.starts_with("http://") {
            JwksSource::Url(s.to_owned())
        } else {
            JwksSource::File(PathBuf::from(s))
        }
    }
}

/// Everything identity needs.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub mode: AuthMode,
    /// The HS256 key (`SECKILL_JWT_HS256_KEY_FILE`).
    pub hs256_key: Option<Vec<u8>>,
    pub jwks: Option<JwksSource>,
    /// How often a JWKS URL is fetched again.
    pub jwks_refresh: Duration,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The claim holding the caller's roles (a list, or a space-separated
    /// string).
    pub roles_claim: String,
    /// The claim holding the caller's eligibility attributes (an object).
    pub attributes_claim: String,
    /// A static bearer token that also opens the admin API, compared in
    /// constant time.
    pub admin_token: Option<String>,
}

impl IdentityConfig {
    /// Signed tokens under `hs256_key`, default claims, nothing else.
    pub fn hs256(key: Vec<u8>) -> IdentityConfig {
        IdentityConfig {
            mode: AuthMode::Jwt,
            hs256_key: Some(key),
            jwks: None,
            jwks_refresh: Duration::from_secs(300),
            issuer: None,
            audience: None,
            leeway_secs: 30,
            roles_claim: "roles".into(),
            attributes_claim: "attributes".into(),
            admin_token: None,
        }
    }
}

/// What a caller may do beyond buying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Campaign and ops endpoints; reading any user's orders.
    Admin,
    /// Confirming payments.
    Payments,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Payments => "payments",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub user: String,
    pub roles: Vec<String>,
    pub attributes: Option<Attributes>,
}

impl Caller {
    pub(crate) fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|r| r == role.as_str())
    }

    /// May this caller act on `user`'s things (orders, requests)?
    pub(crate) fn may_see(&self, user: &str) -> bool {
        self.user == user || self.has(Role::Admin)
    }
}

/// 401 with the `WWW-Authenticate: Bearer` challenge.
fn unauthorized(detail: impl Into<String>) -> Problem {
    let detail = detail.into();
    let challenge = format!(
        "Bearer realm=\"seckill\", error=\"invalid_token\", error_description=\"{}\"",
        detail.replace(['"', '\\'], "'")
    );
    Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail).www_authenticate(challenge)
}

/// 403: authenticated, but not allowed.
pub(crate) fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "Forbidden", detail)
}

/// One public key of the JWKS, pinned to its algorithm.
struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The algorithm a JWK is checked with: its `alg` when given, else the one
/// its key type implies. Only RS256 and ES256 are accepted.
fn pinned_alg(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return Err("only RSA and P-256 keys are accepted".into()),
    };
    match jwk.common.key_algorithm {
        None => Ok(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Ok(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Ok(implied),
        Some(other) => Err(format!(
            "alg {other} is not accepted for this key (RS256 for RSA, ES256 for P-256)"
        )),
    }
}

fn parse_jwks(raw: &[u8]) -> Result<Vec<PublicKey>, String> {
    let set: JwkSet = serde_json::from_slice(raw)
        .map_err(|e| format!("not a JWKS ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let name = kid.as_deref().unwrap_or("(no kid)");
        match pinned_alg(jwk).and_then(|alg| {
            DecodingKey::from_jwk(jwk)
                .map(|key| (alg, key))
                .map_err(|e| e.to_string())
        }) {
            Ok((alg, key)) => keys.push(PublicKey { kid, alg, key }),
            Err(e) => tracing::warn!(kid = name, error = %e, "JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable RS256 or ES256 key".into());
    }
    Ok(keys)
}

/// The JWKS, kept fresh.
struct Jwks {
    source: JwksSource,
    keys: RwLock<Arc<Vec<PublicKey>>>,
    /// When the last fetch started; one at a time.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    client: reqwest::Client,
}

/// An unknown `kid` fetches the JWKS again at most this often.
const MIN_REFETCH: Duration = Duration::from_secs(1);

impl Jwks {
    async fn load(&self) -> Result<usize, String> {
        let raw = match &self.source {
            JwksSource::File(path) => std::fs::read(path)
                .map_err(|e| format!("reading the JWKS {}: {e}", path.display()))?,
            JwksSource::Url(url) => {
                let resp = self
                    .client
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| format!("fetching the JWKS: {e}"))?;
                resp.bytes()
                    .await
                    .map_err(|e| format!("fetching the JWKS: {e}"))?
                    .to_vec()
            }
        };
        let keys = parse_jwks(&raw)?;
        let n = keys.len();
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(keys);
        }
        Ok(n)
    }

    /// Fetches again unless a fetch started less than [`MIN_REFETCH`] ago.
    async fn refresh(&self) {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.load().await {
            tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys already loaded");
        }
    }

    fn current(&self) -> Arc<Vec<PublicKey>> {
        self.keys.read().map(|k| Arc::clone(&k)).unwrap_or_default()
    }
}

/// The algorithms a token may be signed with.
const ACCEPTED: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];

/// `exp` and `sub` required, `nbf` honoured, both with the leeway; `iss` and
/// `aud` required when configured; only `alg`.
fn validation_for(config: &IdentityConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway_secs;
    v.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &config.issuer {
        Some(iss) => {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        None => v.iss = None,
    }
    match &config.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// Checks callers.
pub(crate) struct Identity {
    config: IdentityConfig,
    hs256: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    /// One per accepted algorithm ([`ACCEPTED`]).
    validations: Vec<Validation>,
}

impl Identity {
    /// Loads the keys; a JWKS URL is fetched again every `jwks_refresh`
    /// until `cancel`.
    pub(crate) async fn start(
        config: IdentityConfig,
        cancel: CancellationToken,
    ) -> Result<Identity, String> {
        if config.mode == AuthMode::Header {
            tracing::warn!(
                "SECKILL_AUTH=header: X-User-Id, X-User-Roles and X-User-Attributes are trusted \
                 as sent; anyone who can reach this port can act as any user and as admin. Use \
                 it only behind a gateway that authenticates callers and sets these headers"
            );
        }
        let hs256 = config.hs256_key.as_deref().map(DecodingKey::from_secret);
        let jwks = match &config.jwks {
            None => None,
            Some(source) => {
                let jwks = Arc::new(Jwks {
                    source: source.clone(),
                    keys: RwLock::new(Arc::new(Vec::new())),
                    fetching: tokio::sync::Mutex::new(None),
                    client: reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .map_err(|e| format!("JWKS client: {e}"))?,
                });
                match (jwks.load().await, source) {
                    (Ok(n), _) => tracing::info!(keys = n, "JWKS loaded"),
                    // A file is this deployment's own: a bad one is a
                    // configuration error.
                    (Err(e), JwksSource::File(_)) => return Err(e),
                    (Err(e), JwksSource::Url(_)) => tracing::error!(
                        error = %e,
                        "JWKS not loaded; RS256/ES256 tokens are refused until it is"
                    ),
                }
                let refresher = Arc::downgrade(&jwks);
                let every = config.jwks_refresh.max(MIN_REFETCH);
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(every) => {}
                        }
                        let Some(j) = refresher.upgrade() else { break };
                        j.refresh().await;
                    }
                });
                Some(jwks)
            }
        };
        if config.mode == AuthMode::Jwt && hs256.is_none() && jwks.is_none() {
            tracing::warn!(
                "no token key configured (SECKILL_JWT_HS256_KEY_FILE or SECKILL_JWT_JWKS): \
                 every call that needs a caller is refused with 401"
            );
        }
        let validations = ACCEPTED
            .iter()
            .map(|&alg| validation_for(&config, alg))
            .collect();
        Ok(Identity {
            config,
            hs256,
            jwks,
            validations,
        })
    }

    /// What `/readyz` says about how callers are identified.
    pub(crate) fn describe(&self) -> &'static str {
        match self.config.mode {
            AuthMode::Header => "header (insecure: X-User-Id is trusted as sent)",
            AuthMode::Jwt if self.hs256.is_none() && self.jwks.is_none() => {
                "jwt (no key configured: every caller is refused)"
            }
            AuthMode::Jwt => "jwt",
        }
    }

    /// The authenticated caller of a request.
    pub(crate) async fn caller(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        match self.config.mode {
            AuthMode::Header => self.header_caller(headers),
            AuthMode::Jwt => self.token_caller(bearer(headers)?).await,
        }
    }

    /// The caller, who must hold `role`; the static admin token also passes
    /// as admin.
    pub(crate) async fn with_role(
        &self,
        headers: &HeaderMap,
        role: Role,
    ) -> Result<Caller, Problem> {
        if role == Role::Admin && self.config.mode == AuthMode::Jwt {
            if let (Some(expected), Ok(given)) = (&self.config.admin_token, bearer(headers)) {
                if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                    return Ok(Caller {
                        user: "admin-token".into(),
                        roles: vec![Role::Admin.as_str().into()],
                        attributes: None,
                    });
                }
            }
            if self.hs256.is_none() && self.jwks.is_none() && self.config.admin_token.is_none() {
                return Err(unauthorized(
                    "the admin API is closed: nothing is configured to let an admin in. Set \
                     SECKILL_ADMIN_TOKEN (a static bearer token), or a token key \
                     (SECKILL_JWT_HS256_KEY_FILE or SECKILL_JWT_JWKS) and send a token with the \
                     role admin (`seckill token --sub ops --role admin`)",
                ));
            }
        }
        let caller = self.caller(headers).await?;
        if caller.has(role) {
            Ok(caller)
        } else {
            Err(forbidden(format!(
                "this needs the role {:?} (claim {:?} of the token); the caller {:?} has {:?}",
                role.as_str(),
                self.config.roles_claim,
                caller.user,
                caller.roles
            )))
        }
    }

    fn header_caller(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        let text = |name: &str| -> Result<Option<&str>, Problem> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str().map_err(|_| {
                        Problem::bad_request(format!("{name} must be printable ASCII"))
                    })
                })
                .transpose()
        };
        let user = text("x-user-id")?.ok_or_else(|| {
            unauthorized("missing user: SECKILL_AUTH=header expects the X-User-Id header")
        })?;
        validate_user_id(user)
            .map_err(|e| Problem::bad_request(format!("X-User-Id: {}", e.problem)))?;
        let roles = text("x-user-roles")?
            .map(|r| {
                r.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let attributes = match text("x-user-attributes")? {
            None => None,
            Some(raw) => Some(serde_json::from_str::<Attributes>(raw).map_err(|e| {
                Problem::bad_request(format!("X-User-Attributes must be a JSON object: {e}"))
            })?),
        };
        Ok(Caller {
            user: user.to_owned(),
            roles,
            attributes,
        })
    }

    /// The checks a token signed with `alg` (HS256, RS256 or ES256) goes
    /// through; built once at start, they differ only in the algorithm.
    fn validation(&self, alg: Algorithm) -> &Validation {
        self.validations
            .iter()
            .find(|v| v.algorithms == [alg])
            .unwrap_or(&self.validations[0])
    }

    async fn token_caller(&self, token: &str) -> Result<Caller, Problem> {
        let head = jsonwebtoken::decode_header(token).map_err(|e| {
            unauthorized(format!(
                "the bearer token is not a JWT ({e}); send 'Authorization: Bearer <JWT>'"
            ))
        })?;
        let claims = match head.alg {
            Algorithm::HS256 => {
                let key = self.hs256.as_ref().ok_or_else(|| {
                    unauthorized(
                        "HS256 tokens are not accepted here (no SECKILL_JWT_HS256_KEY_FILE)",
                    )
                })?;
                self.check(token, key, Algorithm::HS256)?
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let jwks = self.jwks.as_ref().ok_or_else(|| {
                    unauthorized(format!(
                        "{:?} tokens are not accepted here (no SECKILL_JWT_JWKS)",
                        head.alg
                    ))
                })?;
                let mut keys = jwks.current();
                let known = |keys: &[PublicKey]| match &head.kid {
                    Some(kid) => keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
                    None => !keys.is_empty(),
                };
                if !known(&keys) {
                    // A rotated-in key: fetch the set again (rate-limited).
                    jwks.refresh().await;
                    keys = jwks.current();
                }
                let candidates: Vec<&PublicKey> = keys
                    .iter()
                    .filter(|k| k.alg == head.alg)
                    .filter(|k| head.kid.is_none() || k.kid == head.kid)
                    .collect();
                if candidates.is_empty() {
                    return Err(unauthorized(format!(
                        "no {:?} key with kid {:?} in the JWKS",
                        head.alg,
                        head.kid.as_deref().unwrap_or("(none)")
                    )));
                }
                let mut last = None;
                let mut found = None;
                for k in candidates {
                    match self.check(token, &k.key, k.alg) {
                        Ok(c) => {
                            found = Some(c);
                            break;
                        }
                        Err(p) => last = Some(p),
                    }
                }
                match (found, last) {
                    (Some(c), _) => c,
                    (None, Some(p)) => return Err(p),
                    (None, None) => return Err(unauthorized("no key verified the token")),
                }
            }
            other => {
                return Err(unauthorized(format!(
                    "tokens signed with {other:?} are not accepted (HS256, RS256 or ES256)"
                )))
            }
        };
        self.caller_of(claims)
    }

    fn check(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> Result<Map<String, Value>, Problem> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Map<String, Value>>(token, key, self.validation(alg))
            .map(|d| d.claims)
            .map_err(|e| {
                unauthorized(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
                    ErrorKind::InvalidSignature => {
                        "the token's signature does not verify: it was signed with another key"
                            .to_owned()
                    }
                    ErrorKind::InvalidIssuer => format!(
                        "the token's iss is not {:?}",
                        self.config.issuer.as_deref().unwrap_or("")
                    ),
                    ErrorKind::InvalidAudience => format!(
                        "the token's aud is not {:?}",
                        self.config.audience.as_deref().unwrap_or("")
                    ),
                    ErrorKind::MissingRequiredClaim(c) => {
                        format!("the token has no {c:?} claim")
                    }
                    _ => format!("the token is not valid: {e}"),
                })
            })
    }

    fn caller_of(&self, mut claims: Map<String, Value>) -> Result<Caller, Problem> {
        let user = match claims.get("sub") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(unauthorized("the token's sub claim must be a string")),
        };
        validate_user_id(&user)
            .map_err(|e| unauthorized(format!("the token's sub: {}", e.problem)))?;
        let roles = match claims.get(&self.config.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect(),
            Some(_) => {
                return Err(unauthorized(format!(
                    "the token's {:?} claim must be a list of roles",
                    self.config.roles_claim
                )))
            }
        };
        let attributes = match claims.remove(&self.config.attributes_claim) {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => {
                return Err(unauthorized(format!(
                    "the token's {:?} claim must be an object",
                    self.config.attributes_claim
                )))
            }
        };
        Ok(Caller {
            user,
            roles,
            attributes,
        })
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    let raw = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        unauthorized(
            "missing credentials: send 'Authorization: Bearer <JWT>' (for the local stack, \
             `seckill token --sub <user>` prints one)",
        )
    })?;
    let v = raw
        .to_str()
        .map_err(|_| unauthorized("the Authorization header must be printable ASCII"))?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(unauthorized(
            "the Authorization header must be 'Bearer <JWT>'",
        )),
    }
}

/// What a token says, for [`mint`].
#[derive(Debug, Clone, Default)]
pub struct TokenClaims {
    pub sub: String,
    pub roles: Vec<String>,
    pub attributes: Option<Attributes>,
    pub ttl: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// An HS256 token signed with `key` (for `seckill token`, the bench and
/// tests; production tokens come from the shop's identity provider).
pub fn mint(key: &[u8], claims: &TokenClaims) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut body = Map::new();
    body.insert("sub".into(), Value::from(claims.sub.clone()));
    body.insert("iat".into(), Value::from(now));
    body.insert("nbf".into(), Value::from(now));
    body.insert(
        "exp".into(),
        Value::from(now.saturating_add(claims.ttl.as_secs() as i64)),
    );
    if !claims.roles.is_empty() {
        body.insert("roles".into(), Value::from(claims.roles.clone()));
    }
    if let Some(a) = &claims.attributes {
        body.insert("attributes".into(), Value::Object(a.clone()));
    }
    if let Some(iss) = &claims.issuer {
        body.insert("iss".into(), Value::from(iss.clone()));
    }
    if let Some(aud) = &claims.audience {
        body.insert("aud".into(), Value::from(aud.clone()));
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &body,
        &EncodingKey::from_secret(key),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"unit-test-key-0123456789abcdef";

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().expect("header"));
        h
    }

    async fn identity(config: IdentityConfig) -> Identity {
        Identity::start(config, CancellationToken::new())
            .await
            .expect("start")
    }

    fn token(sub: &str, roles: &[&str], ttl: u64) -> String {
        mint(
            KEY,
            &TokenClaims {
                sub: sub.into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                attributes: Some(serde_json::from_str(r#"{"age": 20}"#).expect("json")),
                ttl: Duration::from_secs(ttl),
                ..Default::default()
            },
        )
    }

    #[tokio::test]
    async fn a_minted_token_names_its_user_roles_and_attributes() {
        let id = identity(IdentityConfig::hs256(KEY.to_vec())).await;
        let c = id
            .caller(&headers(&format!(
                "Bearer {}",
                token("alice", &["payments"], 60)
            )))
            .await
            .expect("caller");
        assert_eq!(c.user, "alice");
        assert!(c.has(Role::Payments) && !c.has(Role::Admin));
        assert_eq!(
            c.attributes.and_then(|a| a.get("age").cloned()),
            Some(20.into())
        );
    }

    #[tokio::test]
    async fn roles_are_enforced_and_the_static_admin_token_passes() {
        let mut config = IdentityConfig::hs256(KEY.to_vec());
        config.admin_token = Some("static-admin-token-0123456789".into());
        let id = identity(config).await;
        let buyer = headers(&format!("Bearer {}", token("bob", &[], 60)));
        let e = id.with_role(&buyer, Role::Admin).await.expect_err("buyer");
        assert_eq!(e.status_code(), StatusCode::FORBIDDEN);
        let ops = headers(&format!("Bearer {}", token("ops", &["admin"], 60)));
        assert!(id.with_role(&ops, Role::Admin).await.is_ok());
        let st = headers("Bearer static-admin-token-0123456789");
        assert!(id.with_role(&st, Role::Admin).await.is_ok());
        // The static token is no payments caller.
        assert!(id.with_role(&st, Role::Payments).await.is_err());
        let wrong = headers("Bearer static-admin-token-012345678X");
        assert_eq!(
            id.with_role(&wrong, Role::Admin)
                .await
                .expect_err("wrong")
                .status_code(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn header_mode_trusts_the_headers_and_jwt_mode_does_not() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "carol".parse().expect("h"));
        h.insert("x-user-roles", "admin, payments".parse().expect("h"));
        let jwt = identity(IdentityConfig::hs256(KEY.to_vec())).await;
        assert_eq!(
            jwt.caller(&h).await.expect_err("jwt").status_code(),
            StatusCode::UNAUTHORIZED
        );
        let mut config = IdentityConfig::hs256(KEY.to_vec());
        config.mode = AuthMode::Header;
        let hdr = identity(config).await;
        let c = hdr.caller(&h).await.expect("header");
        assert_eq!(c.user, "carol");
        assert!(c.has(Role::Admin) && c.has(Role::Payments));
        assert!(hdr.describe().contains("insecure"));
    }

    #[test]
    fn jwks_keys_are_pinned_and_unusable_ones_refused() {
        let hmac = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256","kid":"h"}]}"#;
        assert!(
            parse_jwks(hmac.as_bytes()).is_err(),
            "an HMAC key in a JWKS"
        );
        assert!(parse_jwks(b"not json").is_err());
    }
}
