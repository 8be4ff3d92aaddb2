//! Runs every measurement in order and presents them: a table on stdout and a
//! JSON file, with the ratios the targets are stated in.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::{self, Client};
use crate::rss::Samples;
use crate::stack::Stack;
use crate::{Args, ceiling};

#[derive(Debug, Serialize)]
pub struct Results {
    pub ceiling_create_per_s: f64,
    pub ceiling_update_per_s: f64,
    pub ceiling_connections: usize,
    pub async_create_per_s: f64,
    pub async_update_per_s: f64,
    pub sync_p50_ms: f64,
    pub sync_p95_ms: f64,
    pub sync_p99_ms: f64,
    pub one_by_one_ms: f64,
    pub preloaded: usize,
    pub preloaded_create_per_s: Option<f64>,
    pub preloaded_update_per_s: Option<f64>,
    /// Peak and last RSS in MiB per process.
    pub rss_mib: Vec<(String, f64, f64)>,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub async fn run_all(args: &Args, stack: &Stack, samples: Samples) -> anyhow::Result<Results> {
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let client = Client::new(&stack.base_url, &stack.api_key);
    let n = args.students;

    eprintln!(
        "ceiling: Postgres alone, {n} rows, connections {:?}",
        args.ceiling_connections
    );
    let (ceiling_create, conns_create) =
        ceiling::measure(&pool, stack.school_id, n, 0, &args.ceiling_connections).await?;
    let (ceiling_update, conns_update) =
        ceiling::measure(&pool, stack.school_id, n, 1, &args.ceiling_connections).await?;

    eprintln!("end to end: {n} students, {} clients", args.clients);
    let async_create = load::async_throughput(&client, "e2e", n, 0, args.clients).await?;
    let async_update = load::async_throughput(&client, "e2e", n, 1, args.clients).await?;

    eprintln!("sync latency: {} batches of 1000", args.sync_batches);
    let mut latencies = load::sync_latencies(&client, "sync", args.sync_batches).await?;
    latencies.sort();

    eprintln!("one by one: {} requests", args.singles);
    let one_by_one = load::one_by_one(&client, "single", args.singles).await?;

    let (mut preloaded_create, mut preloaded_update) = (None, None);
    if args.preload > 0 {
        eprintln!("preloading {} students", args.preload);
        preload(&pool, stack.school_id, args.preload).await?;
        preloaded_create =
            Some(load::async_throughput(&client, "after-preload", n, 0, args.clients).await?);
        preloaded_update =
            Some(load::async_throughput(&client, "after-preload", n, 1, args.clients).await?);
    }

    if args.soak_seconds > 0 {
        eprintln!("soak: {} s of update passes", args.soak_seconds);
        let until = Instant::now() + Duration::from_secs(args.soak_seconds);
        let mut generation = 2;
        while Instant::now() < until {
            load::async_throughput(&client, "e2e", n, generation, args.clients).await?;
            generation += 1;
        }
    }
    pool.close().await;

    let rss_mib = samples
        .lock()
        .expect("samples lock")
        .iter()
        .map(|(name, (peak, last))| (name.clone(), *peak, *last))
        .collect();
    Ok(Results {
        ceiling_create_per_s: ceiling_create,
        ceiling_update_per_s: ceiling_update,
        ceiling_connections: conns_update.max(conns_create),
        async_create_per_s: async_create,
        async_update_per_s: async_update,
        sync_p50_ms: ms(load::percentile(&latencies, 50.0)),
        sync_p95_ms: ms(load::percentile(&latencies, 95.0)),
        sync_p99_ms: ms(load::percentile(&latencies, 99.0)),
        one_by_one_ms: ms(one_by_one),
        preloaded: args.preload,
        preloaded_create_per_s: preloaded_create,
        preloaded_update_per_s: preloaded_update,
        rss_mib,
    })
}

/// Inserts `count` students straight into the school (not through the API).
async fn preload(pool: &sqlx::PgPool, school_id: uuid::Uuid, count: usize) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO students (id, school_id, external_reference_id, first_name, last_name, email, tags)
         SELECT gen_random_uuid(), $1, 'preload-' || g, 'First' || g, 'Last' || g,
                'p' || g || '@example.edu', ARRAY['preloaded']
         FROM generate_series(1, $2) AS g",
    )
    .bind(school_id)
    .bind(count as i64)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE students").execute(pool).await?;
    Ok(())
}

pub fn print(args: &Args, r: &Results) {
    let ratio = |value: f64, of: f64| if of > 0.0 { value / of * 100.0 } else { 0.0 };
    println!();
    println!("| measure | value | ratio | target |");
    println!("|---|---|---|---|");
    println!(
        "| ceiling: Postgres alone, create ({} conns best) | {:.0} students/s | 100% | |",
        r.ceiling_connections, r.ceiling_create_per_s
    );
    println!(
        "| ceiling: Postgres alone, update | {:.0} students/s | 100% | |",
        r.ceiling_update_per_s
    );
    println!(
        "| end to end async, create ({} clients) | {:.0} students/s | {:.0}% of ceiling | |",
        args.clients,
        r.async_create_per_s,
        ratio(r.async_create_per_s, r.ceiling_create_per_s)
    );
    println!(
        "| end to end async, update | {:.0} students/s | {:.0}% of ceiling | ≥ 40% |",
        r.async_update_per_s,
        ratio(r.async_update_per_s, r.ceiling_update_per_s)
    );
    println!(
        "| sync 1000-student batch p50 / p95 / p99 | {:.0} / {:.0} / {:.0} ms | | p50 ≤ 150 ms |",
        r.sync_p50_ms, r.sync_p95_ms, r.sync_p99_ms
    );
    let speedup = if r.sync_p50_ms > 0.0 {
        r.one_by_one_ms * (1000.0 / args.singles as f64) / r.sync_p50_ms
    } else {
        0.0
    };
    println!(
        "| {} one-student requests | {:.0} ms | batch {:.0}× faster | ≥ 50× |",
        args.singles, r.one_by_one_ms, speedup
    );
    if let (Some(create), Some(update)) = (r.preloaded_create_per_s, r.preloaded_update_per_s) {
        println!(
            "| with {} students preloaded: create / update | {:.0} / {:.0} students/s | {:.0}% / {:.0}% of empty | ≥ 80% |",
            r.preloaded,
            create,
            update,
            ratio(create, r.async_create_per_s),
            ratio(update, r.async_update_per_s)
        );
    }
    for (name, peak, last) in &r.rss_mib {
        println!("| RSS {name}: peak / last | {peak:.0} / {last:.0} MiB | | ≤ 150 MiB |");
    }
}

pub fn write_json(path: &Path, args: &Args, r: &Results) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let body = serde_json::json!({
        "args": format!("{args:?}"),
        "results": r,
    });
    std::fs::write(path, serde_json::to_string_pretty(&body)?)?;
    Ok(())
}
