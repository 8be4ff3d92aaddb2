//! `bench`: measures Student Sync end to end on this machine, in one run, and
//! prints a table (and writes JSON) of ratios against the Postgres-alone ceiling.
//!
//! Build first: `cargo build --release --workspace --bins`, then `cargo run --release --bin
//! bench -- --help`. It starts its own stack (fresh database and namespace, the
//! release API and worker binaries) on the local Postgres, RabbitMQ and Redis.

mod ceiling;
mod load;
mod report;
mod rss;
mod stack;
mod students;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Student Sync benchmark")]
pub struct Args {
    /// Students per throughput pass (create, then update of every value).
    #[arg(long, default_value_t = 100_000)]
    students: usize,
    /// Rounds of the throughput figures (ceiling and end-to-end passes
    /// interleaved: create, create, update, update); the table shows medians.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Concurrent clients in the throughput passes.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Sequential synchronous 1000-student batches for the latency figures.
    #[arg(long, default_value_t = 20)]
    sync_batches: usize,
    /// Students sent one per request.
    #[arg(long, default_value_t = 1000)]
    singles: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Connection counts tried for the Postgres-alone ceiling (on one create
    /// pass; the best is used in every round).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    ceiling_connections: Vec<usize>,
    /// Skip the Postgres-alone ceiling (to profile the product path alone;
    /// the ratios then show as 0%).
    #[arg(long)]
    no_ceiling: bool,
    /// Students preloaded into the school (directly, then VACUUM and
    /// CHECKPOINT) before as many rounds again on the large table (0: skip).
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// Seconds of sustained load after the measurements (update passes, each
    /// followed by 5 sync batches); RSS of its first vs last minute is reported.
    #[arg(long, default_value_t = 0)]
    soak_seconds: u64,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results/latest.json")]
    out: PathBuf,
    /// Environment for the workers, e.g. WORKER_CONCURRENCY=4 (repeatable).
    #[arg(long = "worker-env", value_parser = parse_env)]
    worker_env: Vec<(String, String)>,
}

fn parse_env(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {raw:?}"))
}

/// The same allocator as the API and workers, so the client's own CPU stays small.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let services = stack::Services::from_env();
    let stack =
        stack::Stack::start(&args.bin_dir, &services, args.workers, &args.worker_env).await?;
    let (samples, sampler) = rss::sample(stack.pids(), Duration::from_millis(250));
    let outcome = report::run_all(&args, &stack, samples).await;
    sampler.abort();
    let stopped = stack.stop().await;
    let results = outcome?;
    stopped?;
    report::print(&args, &results);
    report::write_json(&args.out, &args, &results)?;
    eprintln!("results written to {}", args.out.display());
    Ok(())
}
