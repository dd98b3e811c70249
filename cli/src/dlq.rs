//! `seckill dlq ...`: what ops do with dead letters. List them by error
//! class and age, show one, replay them to where they came from (once the
//! cause is fixed), purge them, export them as CSV.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use seckill_kafka::KafkaConsumer;
use serde_json::json;

use seckill_kafka::{forward, header_i64, header_str, headers, KafkaSettings};
use seckill_schemas::now_ms;

use crate::args::KafkaArgs;
use seckill_cli::topic::{read_all, read_range, watermarks};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    /// The sinks' DLQ (order events the store refused).
    Orders,
    /// The processors' DLQ (requests that could not be read or validated).
    Requests,
}

#[derive(Debug, Args)]
pub(crate) struct DlqCmd {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Which dead-letter topic.
    #[arg(long, value_enum, default_value = "orders", global = true)]
    source: Source,
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// Counts by error class and age.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One message: headers and payload.
    Show {
        #[arg(long, default_value_t = 0)]
        partition: i32,
        #[arg(long)]
        offset: i64,
    },
    /// Publish messages back to their original topic, after the cause is
    /// fixed. Resumes where the last replay stopped.
    Replay(ReplayArgs),
    /// Delete every message in the DLQ.
    Purge {
        /// Confirm without the prompt.
        #[arg(long)]
        yes: bool,
    },
    /// Write every message as CSV.
    Export {
        /// CSV is the export format; the flag makes that explicit.
        #[arg(long, required = true)]
        csv: bool,
        /// File to write (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Say what would be replayed; publish and commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay at most this many messages.
    #[arg(long)]
    limit: Option<usize>,
    /// Messages per second at most.
    #[arg(long)]
    rate: Option<u32>,
    /// Only messages of this error class (transient, permanent, unparseable).
    #[arg(long)]
    error_class: Option<String>,
    /// Only messages that last failed at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only messages that last failed before this time (RFC 3339).
    #[arg(long)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// A message replayed this often already is quarantined instead.
    #[arg(long, default_value_t = 3)]
    max_replays: i64,
    /// Start from the first message, not where the last replay stopped.
    #[arg(long)]
    from_beginning: bool,
}

impl DlqCmd {
    fn topics(&self) -> (String, String, String) {
        let t = self.kafka.topics();
        match self.source {
            Source::Orders => (t.orders_dlq, t.orders, t.orders_quarantine),
            Source::Requests => (t.requests_dlq, t.requests, t.requests_quarantine),
        }
    }

    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let settings = self.kafka.settings();
        let (dlq, origin, quarantine) = self.topics();
        match &self.action {
            DlqAction::List { json } => list(&settings, &dlq, *json).await,
            DlqAction::Show { partition, offset } => {
                show(&settings, &dlq, *partition, *offset).await
            }
            DlqAction::Replay(args) => {
                let group = crate::args::replay_group_of(&dlq);
                replay(&settings, &dlq, &origin, &quarantine, &group, args).await
            }
            DlqAction::Purge { yes } => purge(&settings, &dlq, *yes).await,
            DlqAction::Export { out, .. } => export(&settings, &dlq, out.as_deref()).await,
        }
    }
}

fn age_bucket(ms: i64) -> &'static str {
    match ms / 1000 {
        s if s < 60 => "<1m",
        s if s < 600 => "<10m",
        s if s < 3600 => "<1h",
        s if s < 86_400 => "<1d",
        _ => ">=1d",
    }
}

fn failed_at(m: &OwnedMessage) -> i64 {
    header_i64(m, headers::LAST_FAILURE_AT)
        .or_else(|| m.timestamp().to_millis())
        .unwrap_or(0)
}

async fn list(settings: &KafkaSettings, dlq: &str, as_json: bool) -> anyhow::Result<()> {
    let all = read_all(settings, dlq).await?;
    let now = now_ms();
    let mut by: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for m in &all {
        let class = header_str(m, headers::ERROR_CLASS)
            .unwrap_or("unknown")
            .to_owned();
        *by.entry(class)
            .or_default()
            .entry(age_bucket(now - failed_at(m)))
            .or_default() += 1;
    }
    if as_json {
        println!(
            "{}",
            json!({ "topic": dlq, "messages": all.len(), "by_error_class": by })
        );
        return Ok(());
    }
    println!("{dlq}: {} message(s)", all.len());
    for (class, ages) in &by {
        let total: usize = ages.values().sum();
        let ages: Vec<String> = ages.iter().map(|(a, n)| format!("{a}: {n}")).collect();
        println!(
            "  {class:<12} {total:>7}   by age of last failure: {}",
            ages.join(", ")
        );
    }
    Ok(())
}

fn headers_of(m: &OwnedMessage) -> BTreeMap<String, String> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let v = h
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    (h.key.to_owned(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn show(
    settings: &KafkaSettings,
    dlq: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<()> {
    let consumer = settings.plain_consumer(&format!("{dlq}.show-{}", uuid::Uuid::new_v4()))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(dlq, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let m = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .with_context(|| {
            format!("no message at {dlq} partition {partition} offset {offset} (see `dlq list`)")
        })??
        .detach();
    if m.offset() != offset {
        bail!(
            "no message at offset {offset} of {dlq}/{partition}; the next one is at {}",
            m.offset()
        );
    }
    let payload = m.payload().map(|p| String::from_utf8_lossy(p).into_owned());
    let out = json!({
        "topic": dlq,
        "partition": partition,
        "offset": offset,
        "timestamp_ms": m.timestamp().to_millis(),
        "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": headers_of(&m),
        "payload": payload,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn matches(m: &OwnedMessage, args: &ReplayArgs) -> bool {
    if let Some(class) = &args.error_class {
        if header_str(m, headers::ERROR_CLASS) != Some(class.as_str()) {
            return false;
        }
    }
    let at = failed_at(m);
    args.since.is_none_or(|s| at >= s.timestamp_millis())
        && args.until.is_none_or(|u| at < u.timestamp_millis())
}

/// Headers of a replayed message: its foreign headers (trace context) and a
/// replay count one higher; the failure headers stay behind in the DLQ, so
/// a new failure starts a fresh history.
fn replay_headers(m: &OwnedMessage, count: i64) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter().filter(|h| !h.key.starts_with("seckill-")) {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    out.insert(Header {
        key: headers::REPLAY_COUNT,
        value: Some(&count.to_string()),
    })
}

async fn replay(
    settings: &KafkaSettings,
    dlq: &str,
    origin: &str,
    quarantine: &str,
    group: &str,
    args: &ReplayArgs,
) -> anyhow::Result<()> {
    let consumer = settings.reader(group)?;
    // Where the last replay stopped, per partition.
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    if !args.from_beginning {
        let mut tpl = TopicPartitionList::new();
        for (p, _, _) in watermarks(&consumer, dlq)? {
            tpl.add_partition(dlq, p);
        }
        for e in consumer
            .committed_offsets(tpl, Duration::from_secs(10))?
            .elements()
        {
            if let Offset::Offset(o) = e.offset() {
                committed.insert(e.partition(), o);
            }
        }
    }
    let mut messages = Vec::new();
    read_range(
        &consumer,
        dlq,
        |p, low| committed.get(&p).copied().unwrap_or(low),
        |m| {
            messages.push(m);
            Ok(true)
        },
    )
    .await?;

    let producer = settings.producer(30_000)?;
    let pace = args
        .rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
    let (mut replayed, mut quarantined, mut skipped) = (0usize, 0usize, 0usize);
    for m in &messages {
        if args.limit.is_some_and(|l| replayed + quarantined >= l) {
            break;
        }
        let count = header_i64(m, headers::REPLAY_COUNT).unwrap_or(0);
        let action = if !matches(m, args) {
            None
        } else if count >= args.max_replays {
            // Replayed this often and failed again: looping it once more
            // will not help; keep it aside for a person to look at.
            let hs = m
                .headers()
                .map(|h| h.as_borrowed().detach())
                .unwrap_or_else(OwnedHeaders::new);
            Some(("quarantine", quarantine.to_owned(), hs))
        } else {
            // Home only: a DLQ's messages go back to the topic it serves,
            // whatever their headers say. Anyone who can produce to the
            // requests DLQ can write those headers; letting them choose the
            // destination would let a forged message reach the orders log.
            if let Some(named) = header_str(m, headers::ORIGINAL_TOPIC) {
                if named != origin && !named.starts_with(&format!("{origin}.retry.")) {
                    eprintln!(
                        "{dlq}/{}@{}: its {} header names {named:?}; replayed to {origin}, the \
                         only topic this DLQ's messages go back to",
                        m.partition(),
                        m.offset(),
                        headers::ORIGINAL_TOPIC
                    );
                }
            }
            Some(("replay", origin.to_owned(), replay_headers(m, count + 1)))
        };
        let Some((verb, topic, hs)) = action else {
            skipped += 1;
            if !args.dry_run {
                store(&consumer, dlq, m)?;
            }
            continue;
        };
        if verb == "replay" {
            replayed += 1;
        } else {
            quarantined += 1;
        }
        if args.dry_run {
            println!(
                "would {verb} {dlq}/{}@{} to {topic}: {} ({})",
                m.partition(),
                m.offset(),
                header_str(m, headers::ERROR).unwrap_or("-"),
                header_str(m, headers::ERROR_CLASS).unwrap_or("-"),
            );
            continue;
        }
        forward(&producer, &topic, m, hs).await.with_context(|| {
            format!(
                "republishing {dlq}/{}@{} to {topic}",
                m.partition(),
                m.offset()
            )
        })?;
        // Acknowledged: only now does the replay position move past it.
        store(&consumer, dlq, m)?;
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
    }
    if !args.dry_run && !messages.is_empty() {
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .context("committing the replay position")?;
    }
    println!(
        "{}",
        json!({"dry_run": args.dry_run, "replayed": replayed, "quarantined": quarantined, "skipped": skipped})
    );
    Ok(())
}

fn store(consumer: &KafkaConsumer, topic: &str, m: &OwnedMessage) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, m.partition(), Offset::Offset(m.offset() + 1))?;
    consumer.store_offsets(&tpl)?;
    Ok(())
}

async fn purge(settings: &KafkaSettings, dlq: &str, yes: bool) -> anyhow::Result<()> {
    let consumer = settings.plain_consumer(&format!("{dlq}.purge-{}", uuid::Uuid::new_v4()))?;
    let marks = watermarks(&consumer, dlq)?;
    let count: i64 = marks.iter().map(|(_, l, h)| h - l).sum();
    if !yes {
        eprint!("delete {count} message(s) from {dlq}? type `purge` to confirm: ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.trim() != "purge" {
            bail!("not confirmed; nothing deleted (use --yes to skip the prompt)");
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, _, high) in &marks {
        tpl.add_partition_offset(dlq, *p, Offset::Offset(*high))?;
    }
    let admin = settings.admin()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let result = admin.delete_records(&tpl, &opts).await;
    let after: i64 = watermarks(&consumer, dlq)?
        .iter()
        .map(|(_, l, h)| h - l)
        .sum();
    if result.is_ok() && after < count {
        println!("{}", json!({"topic": dlq, "purged": count - after}));
        return Ok(());
    }
    // The broker kept the records (not every Kafka-compatible broker
    // implements DeleteRecords): move the replay position past them, so
    // they are never replayed, and say so.
    let group = crate::args::replay_group_of(dlq);
    let replayer = settings.group_consumer(&group)?;
    replayer.assign(&tpl)?;
    replayer
        .commit(&tpl, CommitMode::Sync)
        .with_context(|| format!("moving the replay position of {dlq} to its end"))?;
    println!(
        "{}",
        json!({"topic": dlq, "purged": 0, "skipped_for_replay": count,
               "note": format!("the broker did not delete the records ({}); replay will skip them",
                   result.err().map_or("DeleteRecords had no effect".to_owned(), |e| e.to_string()))})
    );
    Ok(())
}

async fn export(
    settings: &KafkaSettings,
    dlq: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let all = read_all(settings, dlq).await?;
    let sink: Box<dyn Write> = match out {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut w = csv::Writer::from_writer(sink);
    w.write_record([
        "partition",
        "offset",
        "timestamp_ms",
        "error_class",
        "error",
        "attempt",
        "original_topic",
        "original_partition",
        "original_offset",
        "first_failure_at",
        "last_failure_at",
        "replay_count",
        "key",
        "payload",
    ])?;
    for m in &all {
        let h = |name| header_str(m, name).unwrap_or("").to_owned();
        w.write_record([
            m.partition().to_string(),
            m.offset().to_string(),
            m.timestamp().to_millis().unwrap_or(0).to_string(),
            h(headers::ERROR_CLASS),
            h(headers::ERROR),
            h(headers::ATTEMPT),
            h(headers::ORIGINAL_TOPIC),
            h(headers::ORIGINAL_PARTITION),
            h(headers::ORIGINAL_OFFSET),
            h(headers::FIRST_FAILURE_AT),
            h(headers::LAST_FAILURE_AT),
            h(headers::REPLAY_COUNT),
            m.key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            m.payload()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
        ])?;
    }
    w.flush()?;
    Ok(())
}
