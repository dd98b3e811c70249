//! `seckill`: one binary, one subcommand per role (like one image with
//! several entrypoints), plus the ops and benchmark tools.

mod args;
mod bench;
mod dlq;
mod reconcile;
mod roles;
mod token;
mod verify;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: every message is parsed into
/// and encoded from many small strings, and glibc's malloc and free took
/// about a quarter of a loaded processor's CPU (perf, `seckill bench --via
/// kafka`).
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "seckill",
    version,
    about = "Flash-sale and limited-stock lottery engine on Kafka"
)]
struct Cli {
    /// Log filter, e.g. `info` or `seckill_processors=debug,info`.
    #[arg(long, env = "SECKILL_LOG", default_value = "info", global = true)]
    log: String,
    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "SECKILL_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every role in one process (single machine, embedded store).
    All(roles::AllCmd),
    /// The HTTP gateway.
    Ingest(roles::IngestCmd),
    /// A processor (consumer group on the requests topic).
    Process(roles::ProcessCmd),
    /// A sink (consumer group on the orders topic).
    Sink(roles::SinkCmd),
    /// Topic administration.
    Topics(roles::TopicsCmd),
    /// Load a running stack and print throughput, latency and invariants.
    Bench(bench::BenchCmd),
    /// Inspect, replay, purge or export a dead-letter topic.
    Dlq(dlq::DlqCmd),
    /// Compare a campaign's Redis counters with the store and the order log;
    /// `--repair` rebuilds them.
    Reconcile(reconcile::ReconcileCmd),
    /// Check a closed lottery's draws against its revealed draw secret, the
    /// orders log and the store.
    VerifyDraws(verify::VerifyDrawsCmd),
    /// Print a token signed with the local JWT key (data/jwt.key).
    Token(token::TokenCmd),
}

fn init_logging(filter: &str, format: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("SECKILL_LOG {filter:?} is not a valid log filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("SECKILL_LOG_FORMAT must be `text` or `json`, not {other:?}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log, &cli.log_format)?;
    match cli.command {
        Command::All(c) => c.run().await,
        Command::Ingest(c) => c.run().await,
        Command::Process(c) => c.run().await,
        Command::Sink(c) => c.run().await,
        Command::Topics(c) => c.run().await,
        Command::Bench(c) => c.run().await,
        Command::Dlq(c) => c.run().await,
        Command::Reconcile(c) => c.run().await,
        Command::VerifyDraws(c) => c.run().await,
        Command::Token(c) => c.run().await,
    }
}
