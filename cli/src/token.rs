//! `seckill token`: a token signed with the local HS256 key, for trying the
//! API and for scripts. Production tokens come from the shop's identity
//! provider; this signs with the same key file ingest checks
//! (`SECKILL_JWT_HS256_KEY_FILE`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value};

use crate::args::read_secret;

#[derive(Debug, Args)]
pub(crate) struct TokenCmd {
    /// The user (the `sub` claim).
    #[arg(long)]
    sub: String,
    /// A role: `admin` (campaign and ops endpoints) or `payments` (payment
    /// confirmations); repeatable.
    #[arg(long = "role", value_parser = ["admin", "payments"])]
    roles: Vec<String>,
    /// An eligibility attribute, NAME=VALUE; repeatable. A VALUE that reads
    /// as JSON (19, true, "x", [1,2]) is that value, otherwise a string.
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = attribute)]
    attrs: Vec<(String, Value)>,
    /// How long the token is valid: 90s, 30m, 1h, 2d (a bare number is
    /// seconds).
    #[arg(long, default_value = "1h", value_parser = ttl)]
    ttl: Duration,
    /// The key file.
    #[arg(
        long,
        env = "SECKILL_JWT_HS256_KEY_FILE",
        default_value = "data/jwt.key"
    )]
    key_file: PathBuf,
    /// `iss` of the token (ingest checks it when SECKILL_JWT_ISSUER is set).
    #[arg(long, env = "SECKILL_JWT_ISSUER")]
    issuer: Option<String>,
    /// `aud` of the token (ingest checks it when SECKILL_JWT_AUDIENCE is set).
    #[arg(long, env = "SECKILL_JWT_AUDIENCE")]
    audience: Option<String>,
}

fn attribute(s: &str) -> Result<(String, Value), String> {
    let (name, raw) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write an attribute as NAME=VALUE, e.g. age=19"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: the attribute needs a name"));
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::from(raw));
    Ok((name.to_owned(), value))
}

pub(crate) fn ttl(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: write a duration as 90s, 30m, 1h or 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the ttl must be more than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

impl TokenCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        seckill_schemas::validate_user_id(&self.sub)
            .map_err(|e| anyhow::anyhow!("--sub: {}", e.problem))?;
        let key = read_secret(&self.key_file, "the JWT key")?;
        let attributes =
            (!self.attrs.is_empty()).then(|| self.attrs.into_iter().collect::<Map<_, _>>());
        let token = seckill_ingest::mint(
            &key,
            &seckill_ingest::TokenClaims {
                sub: self.sub,
                roles: self.roles,
                attributes,
                ttl: self.ttl,
                issuer: self.issuer,
                audience: self.audience,
            },
        );
        println!("{token}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_attributes_parse_as_written() {
        assert_eq!(ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(ttl("45"), Ok(Duration::from_secs(45)));
        assert!(ttl("1w").is_err());
        assert!(ttl("h").is_err());
        assert!(ttl("0s").is_err());
        assert_eq!(attribute("age=19"), Ok(("age".into(), Value::from(19))));
        assert_eq!(attribute("vip=true"), Ok(("vip".into(), Value::from(true))));
        assert_eq!(
            attribute("tier=gold"),
            Ok(("tier".into(), Value::from("gold")))
        );
        assert!(attribute("noequals").is_err());
        assert!(attribute("=1").is_err());
    }
}
