//! Request bodies: size-limited, parsed strictly. Unknown fields are refused
//! by name (the types themselves accept them, because the same types read
//! Kafka events, where newer producers may add optional fields).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

pub(crate) fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, Problem> {
    parse_hinted(body, limit, &[])
}

/// [`parse`], with what to say about fields that are refused for a reason:
/// (field, why).
pub(crate) fn parse_hinted<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    hints: &[(&str, &str)],
) -> Result<T, Problem> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
                format!("the body must be at most {limit} bytes"),
            )
        } else {
            Problem::bad_request(format!("could not read the body: {r}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(Problem::bad_request(
            "the body is empty; send a JSON object",
        ));
    }
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value: T = serde_ignored::deserialize(&mut de, |path| unknown.push(path.to_string()))
        .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))?;
    de.end()
        .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))?;
    if let Some((field, why)) = hints.iter().find(|(f, _)| unknown.iter().any(|u| u == f)) {
        return Err(Problem::bad_request(format!(
            "field {field:?} is not accepted: {why}"
        )));
    }
    if !unknown.is_empty() {
        return Err(Problem::bad_request(format!(
            "unknown field(s) {}: remove them (see the JSON Schemas in schemas/json)",
            unknown.join(", ")
        )));
    }
    Ok(value)
}
