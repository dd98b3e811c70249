//! The production store: ScyllaDB (or Cassandra). Orders live in one table
//! keyed by order id, with two index tables for listing by campaign and by
//! user. The monotonic status rule is enforced by the database itself with
//! lightweight transactions, so concurrent sinks (main loop and retry tiers)
//! can never take an order back.
//!
//! URL: `scylla://host:9042[,host:9042]/keyspace[?rf=3]`.

use std::sync::Arc;

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, MaybeUnset, Row};
use seckill_schemas::{OrderEvent, OrderView};

use crate::{OrderFilter, OrderStore, StoreError};

const COLUMNS: &str = "order_id, request_id, campaign_id, user_id, quantity, price, status, \
                       created_at_ms, updated_at_ms, expires_at_ms, prize_id, item_name, award_type, \
                       payment_ref";

/// Columns added to `orders` after the first release, for tables created
/// before them.
const ADDED_COLUMNS: [(&str, &str); 1] = [("payment_ref", "text")];

type OrderRowTuple = (
    String,
    String,
    String,
    String,
    i32,
    i64,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub struct ScyllaStore {
    session: Arc<Session>,
    insert: PreparedStatement,
    advance: PreparedStatement,
    by_campaign: PreparedStatement,
    by_user: PreparedStatement,
    get: PreparedStatement,
    list_campaign: PreparedStatement,
    list_user: PreparedStatement,
    delete: PreparedStatement,
    delete_campaign: PreparedStatement,
    delete_user: PreparedStatement,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn view(r: OrderRowTuple) -> Result<OrderView, StoreError> {
    let status =
        r.6.parse()
            .map_err(|e| StoreError::Invalid(format!("order {} in the store: {e}", r.0)))?;
    Ok(OrderView {
        order_id: r.0,
        request_id: r.1,
        campaign_id: r.2,
        user_id: r.3,
        quantity: r.4.max(0) as u32,
        price: r.5.max(0) as u64,
        status,
        created_at_ms: r.7,
        updated_at_ms: r.8,
        expires_at_ms: r.9,
        prize_id: r.10,
        item_name: r.11.unwrap_or_default(),
        award_type: r
            .12
            .and_then(|a| serde_json::from_value(serde_json::Value::String(a)).ok())
            .unwrap_or_default(),
        payment_ref: r.13,
    })
}

/// Whether a lightweight transaction took effect (its `[applied]` column).
fn applied(rows: &scylla::response::query_result::QueryRowsResult) -> bool {
    rows.maybe_first_row::<Row>()
        .ok()
        .flatten()
        .and_then(|r| r.columns.into_iter().next().flatten())
        .is_some_and(|c| matches!(c, CqlValue::Boolean(true)))
}

/// The columns of `keyspace.table`.
async fn columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<Vec<String>, StoreError> {
    let res = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await
        .map_err(unavailable)?
        .into_rows_result()
        .map_err(unavailable)?;
    let names = res
        .rows::<(String,)>()
        .map_err(unavailable)?
        .map(|r| r.map(|(c,)| c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    Ok(names)
}

/// Adds the columns a table created by an earlier release lacks.
async fn migrate(session: &Session, keyspace: &str) -> Result<(), StoreError> {
    let have = columns(session, keyspace, "orders").await?;
    for (name, kind) in ADDED_COLUMNS {
        if have.iter().any(|h| h == name) {
            continue;
        }
        let added = session
            .query_unpaged(
                format!("ALTER TABLE {keyspace}.orders ADD {name} {kind}"),
                &[],
            )
            .await;
        // Another sink starting at the same time may have added it first.
        if let Err(e) = added {
            if !columns(session, keyspace, "orders")
                .await?
                .iter()
                .any(|h| h == name)
            {
                return Err(unavailable(e));
            }
        }
    }
    Ok(())
}

impl ScyllaStore {
    /// Connects and creates the keyspace and tables if they are missing.
    pub async fn open(rest: &str) -> Result<Self, StoreError> {
        let (hosts, tail) = rest
            .split_once('/')
            .ok_or_else(|| StoreError::Url(format!("scylla://{rest}")))?;
        let (keyspace, query) = tail.split_once('?').unwrap_or((tail, ""));
        if keyspace.is_empty()
            || !keyspace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StoreError::Url(format!(
                "scylla://{rest} (the keyspace must be letters, digits and '_')"
            )));
        }
        let rf: u32 = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("rf="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let session = SessionBuilder::new()
            .known_nodes(hosts.split(','))
            .build()
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot reach ScyllaDB at {hosts}: {e}"))
            })?;
        let ks = keyspace;
        for ddl in [
            format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"),
            format!("CREATE TABLE IF NOT EXISTS {ks}.orders (order_id text PRIMARY KEY, request_id text, campaign_id text, user_id text, quantity int, price bigint, status text, status_rank int, created_at_ms bigint, updated_at_ms bigint, expires_at_ms bigint, prize_id text, item_name text, award_type text, payment_ref text)"),
            format!("CREATE TABLE IF NOT EXISTS {ks}.orders_by_campaign (campaign_id text, order_id text, PRIMARY KEY (campaign_id, order_id))"),
            format!("CREATE TABLE IF NOT EXISTS {ks}.orders_by_user (user_id text, order_id text, PRIMARY KEY (user_id, order_id))"),
        ] {
            session.query_unpaged(ddl, &[]).await.map_err(unavailable)?;
        }
        migrate(&session, ks).await?;
        let prep = |cql: String| {
            let session = &session;
            async move { session.prepare(cql).await.map_err(unavailable) }
        };
        Ok(Self {
            insert: prep(format!("INSERT INTO {ks}.orders (order_id, request_id, campaign_id, user_id, quantity, price, status, status_rank, created_at_ms, updated_at_ms, expires_at_ms, prize_id, item_name, award_type, payment_ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")).await?,
            advance: prep(format!("UPDATE {ks}.orders SET status = ?, status_rank = ?, updated_at_ms = ?, payment_ref = ? WHERE order_id = ? IF status_rank < ?")).await?,
            by_campaign: prep(format!("INSERT INTO {ks}.orders_by_campaign (campaign_id, order_id) VALUES (?, ?)")).await?,
            by_user: prep(format!("INSERT INTO {ks}.orders_by_user (user_id, order_id) VALUES (?, ?)")).await?,
            get: prep(format!("SELECT {COLUMNS} FROM {ks}.orders WHERE order_id = ?")).await?,
            list_campaign: prep(format!("SELECT order_id FROM {ks}.orders_by_campaign WHERE campaign_id = ? AND order_id > ? LIMIT ?")).await?,
            list_user: prep(format!("SELECT order_id FROM {ks}.orders_by_user WHERE user_id = ? AND order_id > ? LIMIT ?")).await?,
            delete: prep(format!("DELETE FROM {ks}.orders WHERE order_id = ?")).await?,
            delete_campaign: prep(format!("DELETE FROM {ks}.orders_by_campaign WHERE campaign_id = ?")).await?,
            delete_user: prep(format!("DELETE FROM {ks}.orders_by_user WHERE user_id = ? AND order_id = ?")).await?,
            session: Arc::new(session),
        })
    }

    async fn ids(
        &self,
        stmt: &PreparedStatement,
        key: &str,
        after: &str,
        limit: i32,
    ) -> Result<Vec<String>, StoreError> {
        let res = self
            .session
            .execute_unpaged(stmt, (key, after, limit))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        let ids = res
            .rows::<(String,)>()
            .map_err(unavailable)?
            .map(|r| r.map(|(id,)| id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)?;
        Ok(ids)
    }

    async fn reset(&self, campaign_id: &str) -> Result<(), StoreError> {
        loop {
            let ids = self.ids(&self.list_campaign, campaign_id, "", 1000).await?;
            if ids.is_empty() {
                break;
            }
            for id in &ids {
                if let Some(o) = self.get_order(id).await? {
                    self.session
                        .execute_unpaged(&self.delete_user, (&o.user_id, id))
                        .await
                        .map_err(unavailable)?;
                }
                self.session
                    .execute_unpaged(&self.delete, (id,))
                    .await
                    .map_err(unavailable)?;
            }
            self.session
                .execute_unpaged(&self.delete_campaign, (campaign_id,))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

#[async_trait]
impl OrderStore for ScyllaStore {
    async fn apply(&self, events: &[OrderEvent]) -> Result<(), StoreError> {
        for e in events {
            if let Some(campaign_id) = e.reset_campaign() {
                self.reset(campaign_id).await?;
                continue;
            }
            let Some((status, r)) = e.order_state() else {
                continue;
            };
            let inserted = self
                .session
                .execute_unpaged(
                    &self.insert,
                    (
                        r.order_id,
                        r.purchase_request_id,
                        r.campaign_id,
                        r.user_id,
                        r.quantity as i32,
                        r.price as i64,
                        status.as_str(),
                        status.rank() as i32,
                        r.created_at_ms,
                        r.changed_at_ms,
                        r.expires_at_ms,
                        r.prize_id,
                        r.item_name,
                        r.award_type.as_str(),
                        r.payment_ref,
                    ),
                )
                .await
                .map_err(unavailable)?
                .into_rows_result()
                .map_err(unavailable)?;
            if !applied(&inserted) {
                // Known order: move it forward only (the condition makes a
                // replayed or late event a no-op). A move without a payment
                // reference leaves the column alone.
                let rank = status.rank() as i32;
                let payment_ref = match r.payment_ref {
                    Some(p) => MaybeUnset::Set(p),
                    None => MaybeUnset::Unset,
                };
                self.session
                    .execute_unpaged(
                        &self.advance,
                        (
                            status.as_str(),
                            rank,
                            r.changed_at_ms,
                            payment_ref,
                            r.order_id,
                            rank,
                        ),
                    )
                    .await
                    .map_err(unavailable)?;
            }
            self.session
                .execute_unpaged(&self.by_campaign, (r.campaign_id, r.order_id))
                .await
                .map_err(unavailable)?;
            self.session
                .execute_unpaged(&self.by_user, (r.user_id, r.order_id))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn get_order(&self, order_id: &str) -> Result<Option<OrderView>, StoreError> {
        let res = self
            .session
            .execute_unpaged(&self.get, (order_id,))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        let row = res
            .maybe_first_row::<OrderRowTuple>()
            .map_err(unavailable)?;
        row.map(view).transpose()
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderView>, StoreError> {
        let after = filter.after.clone().unwrap_or_default();
        let limit = filter.limit.min(10_000) as i32;
        let (ids, other) = match (&filter.campaign_id, &filter.user_id) {
            (Some(c), user) => (
                self.ids(&self.list_campaign, c, &after, limit).await?,
                user.clone().map(|u| (false, u)),
            ),
            (None, Some(u)) => (self.ids(&self.list_user, u, &after, limit).await?, None),
            (None, None) => {
                return Err(StoreError::Invalid(
                    "the ScyllaDB store lists orders by campaign_id or user_id; give one".into(),
                ))
            }
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(o) = self.get_order(&id).await? {
                if other.as_ref().is_none_or(|(_, u)| &o.user_id == u) {
                    out.push(o);
                }
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged("SELECT now() FROM system.local", &[])
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
