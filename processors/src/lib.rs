//! The processors: a consumer group on the requests topic that decides every
//! request with one atomic Lua call per campaign per batch and emits the
//! decisions to the orders topic.

mod batch;
mod config;
mod decide;
mod error;
mod internal_events;
mod restore;
mod run;
mod sweep;
mod translate;
mod worker;

pub use config::ProcessorConfig;
pub use decide::Decider;
pub use error::ProcessorError;
pub use restore::{meta_fields, restore, CampaignImage};
pub use run::run;

/// Connects to Redis with a connection that reconnects by itself.
pub async fn connect_redis(url: &str) -> Result<redis::aio::ConnectionManager, ProcessorError> {
    let client = redis::Client::open(url).map_err(|source| ProcessorError::RedisUrl {
        url: url.to_owned(),
        source,
    })?;
    client
        .get_connection_manager()
        .await
        .map_err(|source| ProcessorError::RedisConnect {
            url: url.to_owned(),
            source,
        })
}
