//! JSON Schema files generated from the Rust types. The committed copies live
//! in `schemas/json/`; a test fails when they drift from the types.
//! Regenerate with `SECKILL_WRITE_SCHEMAS=1 cargo test -p seckill-schemas`.

use schemars::{schema_for, JsonSchema};

use crate::{
    AddStockBody, CampaignSpec, CampaignView, Decision, FulfilmentRequested, OrderCommandResult,
    OrderEvent, OrderView, PurchaseBody, RequestAccepted, RequestEvent, UserParticipation,
};

fn render<T: JsonSchema>() -> String {
    let schema = schema_for!(T);
    // Serialising a schemars schema cannot fail: it is a JSON value already.
    let mut text = serde_json::to_string_pretty(&schema).expect("schema is JSON");
    text.push('\n');
    text
}

/// Every public schema as (file name, contents).
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        ("request_event.schema.json", render::<RequestEvent>()),
        ("order_event.schema.json", render::<OrderEvent>()),
        ("campaign_spec.schema.json", render::<CampaignSpec>()),
        ("campaign_view.schema.json", render::<CampaignView>()),
        ("purchase_body.schema.json", render::<PurchaseBody>()),
        ("request_accepted.schema.json", render::<RequestAccepted>()),
        ("decision.schema.json", render::<Decision>()),
        ("order_view.schema.json", render::<OrderView>()),
        (
            "fulfilment_event.schema.json",
            render::<FulfilmentRequested>(),
        ),
        (
            "order_command_result.schema.json",
            render::<OrderCommandResult>(),
        ),
        ("add_stock_body.schema.json", render::<AddStockBody>()),
        (
            "user_participation.schema.json",
            render::<UserParticipation>(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn committed_schema_files_match_the_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
        let write = std::env::var_os("SECKILL_WRITE_SCHEMAS").is_some();
        let mut drifted = Vec::new();
        for (name, text) in super::all() {
            let path = dir.join(name);
            if write {
                std::fs::create_dir_all(&dir).expect("create schemas/json");
                std::fs::write(&path, &text).expect("write schema");
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(committed) if committed == text => {}
                _ => drifted.push(name),
            }
        }
        assert!(
            drifted.is_empty(),
            "schema files out of date: {drifted:?}; run SECKILL_WRITE_SCHEMAS=1 cargo test -p seckill-schemas and commit schemas/json"
        );
    }

    #[test]
    fn request_event_schema_names_every_type() {
        let text = super::all()
            .into_iter()
            .find(|(n, _)| *n == "request_event.schema.json")
            .map(|(_, t)| t)
            .expect("request schema");
        assert!(text.contains("purchase_requested"));
        assert!(text.contains("upsert_campaign"));
        assert!(text.contains("schema_version"));
    }
}
