//! The contract between seckill's roles and the services that feed it.
//!
//! Everything that crosses a process boundary is defined here: the events on
//! the request and order topics, the HTTP bodies, the topic names, the Redis
//! key layout and the id derivations. Upstream services that produce requests
//! straight to Kafka depend on this crate (or on the JSON Schemas generated
//! from it under `schemas/json/`).
//!
//! Versioning rule: between schema versions only additive, optional fields may
//! appear. Consumers therefore accept unknown fields on events; HTTP bodies,
//! which a person types, reject them so typos are caught.

mod api;
mod auth;
pub mod buckets;
mod campaign;
mod draw;
mod events;
mod ids;
mod reason;
mod rules;
pub mod state;
mod topics;
mod validate;

pub mod json_schema;

pub use api::{
    AddStockBody, Decision, DecisionStatus, OrderCommandResult, OrderStatus, OrderView, PayBody,
    PurchaseBody, QueuePlace, RequestAccepted, UnknownStatus, UserParticipation,
};
pub use auth::{AuthError, MIN_KEY_BYTES};
pub use buckets::{bucket_key, bucket_of, split_key, BucketPlan, MAX_BUCKETS};
pub use campaign::{
    AwardType, CampaignKind, CampaignSpec, CampaignState, CampaignView, DrawStrategy, PrizeSpec,
    PrizeStock, StockView,
};
pub use draw::{
    commitment as draw_commitment, draw_key_from_command_key, draw_point, DrawSecret,
    DRAW_KEY_DOMAIN, DRAW_SECRET_DOMAIN, MIN_DRAW_KEY_BYTES,
};
pub use events::{
    CampaignAction, CampaignApplied, CampaignCommand, CampaignOutcome, ExpireDue,
    FulfilmentRequested, OrderAction, OrderChanged, OrderCommand, OrderCommandRejected, OrderEvent,
    OrderRow, PurchaseRequested, Rejected, RequestEvent, Reserved, UpsertCampaign,
};
pub use ids::{order_id_for, request_id_for_key};
pub use reason::{RefusalReason, UnknownReason};
pub use rules::{Attributes, CompareOp, Rule};
pub use state::{CampaignKeys, KeyLayout};
pub use topics::Topics;
pub use validate::{
    validate_campaign_id, validate_payment_ref, validate_user_id, ValidationError, MAX_PAYMENT_REF,
    MAX_QUANTITY,
};

/// The schema version this build writes. Readers accept any version up to it
/// and, because changes are additive, newer ones too.
pub const SCHEMA_VERSION: u32 = 1;

/// Current wall-clock time in unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
