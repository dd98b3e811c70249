//! Fault injection for drills and tests: while a marker file exists, every
//! write fails — as "store unavailable" (a transient failure), or as a
//! refused write when the file says `permanent`. Reads are not affected.
//! Enabled only by `SECKILL_STORE_FAULT_FILE`; without it the store is
//! used directly.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use seckill_schemas::{OrderEvent, OrderView};

use crate::{OrderFilter, OrderStore, StoreError};

pub struct FaultInjection {
    inner: Arc<dyn OrderStore>,
    marker: PathBuf,
}

impl FaultInjection {
    pub fn wrap(inner: Arc<dyn OrderStore>, marker: PathBuf) -> Arc<dyn OrderStore> {
        Arc::new(Self { inner, marker })
    }

    fn injected(&self) -> Option<StoreError> {
        let text = std::fs::read_to_string(&self.marker).ok()?;
        Some(if text.trim() == "permanent" {
            StoreError::Invalid(format!(
                "injected permanent fault ({})",
                self.marker.display()
            ))
        } else {
            StoreError::Unavailable(format!("injected outage ({})", self.marker.display()))
        })
    }
}

#[async_trait]
impl OrderStore for FaultInjection {
    async fn apply(&self, events: &[OrderEvent]) -> Result<(), StoreError> {
        match self.injected() {
            Some(e) => Err(e),
            None => self.inner.apply(events).await,
        }
    }

    async fn get_order(&self, order_id: &str) -> Result<Option<OrderView>, StoreError> {
        self.inner.get_order(order_id).await
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderView>, StoreError> {
        self.inner.list_orders(filter).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
