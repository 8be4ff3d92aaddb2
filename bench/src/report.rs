//! Runs every measurement in order and presents them: a table on stdout and a
//! JSON file, with the ratios the targets are stated in.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::{self, Client};
use crate::rss::{self, Samples};
use crate::stack::Stack;
use crate::{Args, ceiling};

/// The throughput figures of one round: the ceiling and the end-to-end passes
/// measured back to back, so a ratio compares figures taken under the same load.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub ceiling_create_per_s: f64,
    pub ceiling_update_per_s: f64,
    pub async_create_per_s: f64,
    pub async_update_per_s: f64,
    /// CPU milliseconds per 1000 students during each pass.
    pub cpu_ceiling_create: Cpu,
    pub cpu_ceiling_update: Cpu,
    pub cpu_create: Cpu,
    pub cpu_update: Cpu,
}

/// CPU time of the processes a pass keeps busy, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    pub api: f64,
    /// All workers together.
    pub workers: f64,
    /// The Postgres backends connected to the run's database.
    pub postgres: f64,
    /// RabbitMQ and Redis (shared with anything else using them).
    pub broker_cache: f64,
}

impl Cpu {
    fn per_1000(self, before: Cpu, students: usize) -> Cpu {
        let scale = 1000.0 * 1000.0 / students as f64;
        Cpu {
            api: (self.api - before.api) * scale,
            workers: (self.workers - before.workers) * scale,
            postgres: (self.postgres - before.postgres) * scale,
            broker_cache: (self.broker_cache - before.broker_cache) * scale,
        }
    }
}

/// Where CPU time is read from.
struct Meter<'a> {
    stack: &'a Stack,
    pool: &'a sqlx::PgPool,
    broker_cache: Vec<u32>,
}

impl Meter<'_> {
    async fn read(&self) -> anyhow::Result<Cpu> {
        let mut cpu = Cpu::default();
        for (name, pid) in self.stack.pids() {
            let seconds = rss::cpu_seconds(pid).unwrap_or(0.0);
            if name == "api" {
                cpu.api += seconds;
            } else {
                cpu.workers += seconds;
            }
        }
        let backends: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_all(self.pool)
        .await?;
        cpu.postgres = backends
            .iter()
            .filter_map(|pid| rss::cpu_seconds(*pid as u32))
            .sum();
        cpu.broker_cache = self
            .broker_cache
            .iter()
            .filter_map(|pid| rss::cpu_seconds(*pid))
            .sum();
        Ok(cpu)
    }

    /// Runs `pass`; returns its rate and CPU ms per 1000 students. A backend
    /// that closed during the pass is missed, so Postgres CPU is a lower bound.
    async fn measure(
        &self,
        students: usize,
        pass: impl std::future::Future<Output = anyhow::Result<f64>>,
    ) -> anyhow::Result<(f64, Cpu)> {
        let before = self.read().await?;
        let rate = pass.await?;
        let after = self.read().await?;
        Ok((rate, after.per_1000(before, students)))
    }
}

/// RSS of one process over the run, and over the soak's first and last minute.
#[derive(Debug, Serialize)]
pub struct Memory {
    pub name: String,
    pub peak_mib: f64,
    pub last_mib: f64,
    pub soak_first_minute_peak_mib: Option<f64>,
    pub soak_last_minute_peak_mib: Option<f64>,
    /// One point every 10 s: `(seconds since start, MiB)`.
    pub series: Vec<(f64, f64)>,
}

impl Memory {
    /// Last-minute peak minus first-minute peak of the soak.
    pub fn soak_growth_mib(&self) -> Option<f64> {
        Some(self.soak_last_minute_peak_mib? - self.soak_first_minute_peak_mib?)
    }

    /// Flat: the soak's last minute peaked at most 5 MiB (or 10 %, if more)
    /// above its first minute.
    pub fn soak_flat(&self) -> Option<bool> {
        let first = self.soak_first_minute_peak_mib?;
        Some(self.soak_growth_mib()? <= (first * 0.10).max(5.0))
    }
}

#[derive(Debug, Serialize)]
pub struct Soak {
    pub seconds: f64,
    /// Update passes of `--students` completed (each also followed by sync batches).
    pub passes: usize,
    pub students_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    /// Connections of the ceiling (the best of `--ceiling-connections`).
    pub ceiling_connections: usize,
    pub rounds: Vec<Round>,
    /// Medians over the rounds.
    pub ceiling_create_per_s: f64,
    pub ceiling_update_per_s: f64,
    pub async_create_per_s: f64,
    pub async_update_per_s: f64,
    /// Medians of the per-round ratios (end to end / ceiling of the same round).
    pub async_create_ratio: f64,
    pub async_update_ratio: f64,
    pub sync_p50_ms: f64,
    pub sync_p95_ms: f64,
    pub sync_p99_ms: f64,
    pub one_by_one_ms: f64,
    pub preloaded: usize,
    /// The rounds on the preloaded table (the ceiling's own table stays small:
    /// it measures how fast Postgres is at that moment).
    pub preloaded_rounds: Vec<Round>,
    pub preloaded_create_per_s: Option<f64>,
    pub preloaded_update_per_s: Option<f64>,
    /// Medians of the per-round ratios (end to end / ceiling) on the preloaded
    /// table: divided by the empty table's, they compare the two under the
    /// same load, whatever else the machine did in between.
    pub preloaded_create_ratio: Option<f64>,
    pub preloaded_update_ratio: Option<f64>,
    pub soak: Option<Soak>,
    pub memory: Vec<Memory>,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The median (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

pub async fn run_all(args: &Args, stack: &Stack, samples: Samples) -> anyhow::Result<Results> {
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let client = Client::new(&stack.base_url, &stack.api_key);
    let n = args.students;

    let meter = Meter {
        stack,
        pool: &pool,
        broker_cache: rss::pids_named(&["beam.smp", "redis-server"]),
    };
    ceiling::prepare(&pool).await?;
    let mut ceiling_connections = args.ceiling_connections[0];
    if args.ceiling_connections.len() > 1 && !args.no_ceiling {
        let mut best = 0.0;
        for &connections in &args.ceiling_connections {
            let rate = ceiling::create_pass(&pool, stack.school_id, n, connections).await?;
            eprintln!("ceiling create with {connections} connections: {rate:.0}/s");
            if rate > best {
                (best, ceiling_connections) = (rate, connections);
            }
        }
    }
    let ceiling_at = Ceiling {
        pool: &pool,
        school_id: stack.school_id,
        connections: ceiling_connections,
        skip: args.no_ceiling,
    };
    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        eprintln!(
            "round {}/{}: {n} students, ceiling ({ceiling_connections} connections) and end to end ({} clients) interleaved",
            round + 1,
            args.rounds,
            args.clients
        );
        let this = run_round(&meter, &ceiling_at, &client, &format!("e2e-r{round}"), args).await?;
        eprintln!("  {}", round_line(&this));
        rounds.push(this);
    }

    eprintln!("sync latency: {} batches of 1000", args.sync_batches);
    let mut latencies = load::sync_latencies(&client, "sync", args.sync_batches, 0).await?;
    latencies.sort();

    eprintln!("one by one: {} requests", args.singles);
    let one_by_one = load::one_by_one(&client, "single", args.singles).await?;

    let mut preloaded_rounds = Vec::new();
    if args.preload > 0 {
        eprintln!("preloading {} students", args.preload);
        preload(&pool, stack.school_id, args.preload).await?;
        for round in 0..args.rounds {
            let space = format!("after-preload-r{round}");
            let this = run_round(&meter, &ceiling_at, &client, &space, args).await?;
            eprintln!("  preloaded round {}: {}", round + 1, round_line(&this));
            preloaded_rounds.push(this);
        }
    }
    ceiling::drop(&pool).await?;

    let mut soak = None;
    let mut soak_window = None;
    if args.soak_seconds > 0 {
        eprintln!(
            "soak: {} s of update passes ({n} students, {} clients) each followed by 5 sync batches",
            args.soak_seconds, args.clients
        );
        let from = samples.now();
        let started = Instant::now();
        let until = started + Duration::from_secs(args.soak_seconds);
        let (mut generation, mut passes) = (2, 0);
        while Instant::now() < until {
            load::async_throughput(&client, "e2e-r0", n, generation, args.clients).await?;
            load::sync_latencies(&client, "sync", args.sync_batches.min(5), generation).await?;
            // The result cache keeps every job body for an hour (hundreds of
            // kB per 1000-student job): drop this run's entries as it goes, so
            // a long soak does not fill the shared Redis.
            stack.clear_cached_jobs().await?;
            generation += 1;
            passes += 1;
            if passes % 10 == 0 {
                eprintln!(
                    "  soak: {passes} passes, {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        soak = Some(Soak {
            seconds,
            passes,
            students_per_s: (passes * (n + 1000 * args.sync_batches.min(5))) as f64 / seconds,
        });
        soak_window = Some((from, samples.now()));
    }
    pool.close().await;

    let memory = samples
        .snapshot()
        .into_iter()
        .map(|(name, points)| {
            let window = |first: bool| {
                soak_window.and_then(|(from, to)| {
                    if first {
                        rss::peak_between(&points, from, from + 60.0)
                    } else {
                        rss::peak_between(&points, to - 60.0, to + 1.0)
                    }
                })
            };
            let mut series = Vec::new();
            for point in &points {
                if series
                    .last()
                    .is_none_or(|(at, _): &(f64, f64)| point.0 >= at + 10.0)
                {
                    series.push((point.0.round(), (point.1 * 10.0).round() / 10.0));
                }
            }
            Memory {
                peak_mib: points.iter().map(|p| p.1).fold(0.0, f64::max),
                last_mib: points.last().map_or(0.0, |p| p.1),
                soak_first_minute_peak_mib: window(true),
                soak_last_minute_peak_mib: window(false),
                series,
                name,
            }
        })
        .collect();
    let ratio = |value: f64, of: f64| if of > 0.0 { value / of } else { 0.0 };
    Ok(Results {
        ceiling_connections,
        ceiling_create_per_s: median(rounds.iter().map(|r| r.ceiling_create_per_s)),
        ceiling_update_per_s: median(rounds.iter().map(|r| r.ceiling_update_per_s)),
        async_create_per_s: median(rounds.iter().map(|r| r.async_create_per_s)),
        async_update_per_s: median(rounds.iter().map(|r| r.async_update_per_s)),
        async_create_ratio: median(
            rounds
                .iter()
                .map(|r| ratio(r.async_create_per_s, r.ceiling_create_per_s)),
        ),
        async_update_ratio: median(
            rounds
                .iter()
                .map(|r| ratio(r.async_update_per_s, r.ceiling_update_per_s)),
        ),
        rounds,
        sync_p50_ms: ms(load::percentile(&latencies, 50.0)),
        sync_p95_ms: ms(load::percentile(&latencies, 95.0)),
        sync_p99_ms: ms(load::percentile(&latencies, 99.0)),
        one_by_one_ms: ms(one_by_one),
        preloaded: args.preload,
        preloaded_create_per_s: (!preloaded_rounds.is_empty())
            .then(|| median(preloaded_rounds.iter().map(|r| r.async_create_per_s))),
        preloaded_update_per_s: (!preloaded_rounds.is_empty())
            .then(|| median(preloaded_rounds.iter().map(|r| r.async_update_per_s))),
        preloaded_create_ratio: (!preloaded_rounds.is_empty()).then(|| {
            median(
                preloaded_rounds
                    .iter()
                    .map(|r| ratio(r.async_create_per_s, r.ceiling_create_per_s)),
            )
        }),
        preloaded_update_ratio: (!preloaded_rounds.is_empty()).then(|| {
            median(
                preloaded_rounds
                    .iter()
                    .map(|r| ratio(r.async_update_per_s, r.ceiling_update_per_s)),
            )
        }),
        preloaded_rounds,
        soak,
        memory,
    })
}

/// Where and how the ceiling runs.
struct Ceiling<'a> {
    pool: &'a sqlx::PgPool,
    school_id: uuid::Uuid,
    connections: usize,
    skip: bool,
}

/// One round: ceiling create, end-to-end create (new keys in `space`), ceiling
/// update, end-to-end update, back to back.
async fn run_round(
    meter: &Meter<'_>,
    ceiling_at: &Ceiling<'_>,
    client: &Client,
    space: &str,
    args: &Args,
) -> anyhow::Result<Round> {
    let n = args.students;
    let (pool, school_id, connections) = (
        ceiling_at.pool,
        ceiling_at.school_id,
        ceiling_at.connections,
    );
    let (ceiling_create, cpu_ceiling_create) = if ceiling_at.skip {
        (0.0, Cpu::default())
    } else {
        let pass = ceiling::create_pass(pool, school_id, n, connections);
        meter.measure(n, pass).await?
    };
    let pass = load::async_throughput(client, space, n, 0, args.clients);
    let (async_create, cpu_create) = meter.measure(n, pass).await?;
    let (ceiling_update, cpu_ceiling_update) = if ceiling_at.skip {
        (0.0, Cpu::default())
    } else {
        let pass = ceiling::update_pass(pool, school_id, n, connections);
        meter.measure(n, pass).await?
    };
    let pass = load::async_throughput(client, space, n, 1, args.clients);
    let (async_update, cpu_update) = meter.measure(n, pass).await?;
    Ok(Round {
        ceiling_create_per_s: ceiling_create,
        ceiling_update_per_s: ceiling_update,
        async_create_per_s: async_create,
        async_update_per_s: async_update,
        cpu_ceiling_create,
        cpu_ceiling_update,
        cpu_create,
        cpu_update,
    })
}

fn round_line(r: &Round) -> String {
    format!(
        "ceiling create {:.0}/s, update {:.0}/s; end to end create {:.0}/s ({:.0}%), update {:.0}/s ({:.0}%)",
        r.ceiling_create_per_s,
        r.ceiling_update_per_s,
        r.async_create_per_s,
        r.async_create_per_s / r.ceiling_create_per_s * 100.0,
        r.async_update_per_s,
        r.async_update_per_s / r.ceiling_update_per_s * 100.0,
    )
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
    // A school's students were not all inserted a second ago: settle the table
    // (visibility map, statistics) and flush the load's WAL before measuring, so
    // the passes after it do not pay for the preload's autovacuum and checkpoint.
    sqlx::query("VACUUM (ANALYZE) students")
        .execute(pool)
        .await?;
    sqlx::query("CHECKPOINT").execute(pool).await?;
    Ok(())
}

pub fn print(args: &Args, r: &Results) {
    let ratio = |value: f64, of: f64| if of > 0.0 { value / of * 100.0 } else { 0.0 };
    println!();
    println!(
        "Throughput: median of {} rounds of {} students ({} clients, {} workers); each ratio is the median of the per-round ratios.",
        r.rounds.len(),
        args.students,
        args.clients,
        args.workers
    );
    println!();
    println!("| measure | value | ratio | target |");
    println!("|---|---|---|---|");
    println!(
        "| ceiling: Postgres alone, create ({} conns, best of {:?}) | {:.0} students/s | 100% | |",
        r.ceiling_connections, args.ceiling_connections, r.ceiling_create_per_s
    );
    println!(
        "| ceiling: Postgres alone, update | {:.0} students/s | 100% | |",
        r.ceiling_update_per_s
    );
    println!(
        "| end to end async, create | {:.0} students/s | {:.0}% of ceiling | |",
        r.async_create_per_s,
        r.async_create_ratio * 100.0
    );
    println!(
        "| end to end async, update | {:.0} students/s | {:.0}% of ceiling | ≥ 40% |",
        r.async_update_per_s,
        r.async_update_ratio * 100.0
    );
    type Getter = fn(&Round) -> Cpu;
    let getters: [(&str, Getter); 4] = [
        ("ceiling create", |x| x.cpu_ceiling_create),
        ("ceiling update", |x| x.cpu_ceiling_update),
        ("end to end create", |x| x.cpu_create),
        ("end to end update", |x| x.cpu_update),
    ];
    for (rounds, table) in [(&r.rounds, ""), (&r.preloaded_rounds, " (preloaded)")] {
        for (label, get) in getters {
            if rounds.is_empty() {
                continue;
            }
            let part = |field: fn(&Cpu) -> f64| median(rounds.iter().map(|x| field(&get(x))));
            println!(
                "| CPU per 1000 students, {label}{table}: api / workers / postgres / rabbitmq+redis | {:.1} / {:.1} / {:.1} / {:.1} ms | | |",
                part(|c| c.api),
                part(|c| c.workers),
                part(|c| c.postgres),
                part(|c| c.broker_cache)
            );
        }
    }
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
    if let (Some(create), Some(update)) = (r.preloaded_create_ratio, r.preloaded_update_ratio) {
        println!(
            "| the same, load-normalised (e2e/ceiling ratio, preloaded vs empty) | {:.0}% / {:.0}% of ceiling | {:.0}% / {:.0}% of empty | ≥ 80% |",
            create * 100.0,
            update * 100.0,
            ratio(create, r.async_create_ratio),
            ratio(update, r.async_update_ratio)
        );
    }
    for memory in &r.memory {
        println!(
            "| RSS {}: peak / last | {:.0} / {:.0} MiB | | ≤ 150 MiB |",
            memory.name, memory.peak_mib, memory.last_mib
        );
    }
    if let Some(soak) = &r.soak {
        println!(
            "| soak: {:.0} s, {} passes | {:.0} students/s | | |",
            soak.seconds, soak.passes, soak.students_per_s
        );
        for memory in &r.memory {
            if let (Some(first), Some(last), Some(flat)) = (
                memory.soak_first_minute_peak_mib,
                memory.soak_last_minute_peak_mib,
                memory.soak_flat(),
            ) {
                println!(
                    "| soak RSS {}: first-minute / last-minute peak | {first:.1} / {last:.1} MiB | {:+.1} MiB: {} | flat, ≤ 150 MiB |",
                    memory.name,
                    last - first,
                    if flat { "flat" } else { "GROWS" }
                );
            }
        }
    }
    println!();
    println!("| round | ceiling create | ceiling update | e2e create | e2e update |");
    println!("|---|---|---|---|---|");
    for (index, round) in r.rounds.iter().enumerate() {
        println!(
            "| {} | {:.0}/s | {:.0}/s | {:.0}/s ({:.0}%) | {:.0}/s ({:.0}%) |",
            index + 1,
            round.ceiling_create_per_s,
            round.ceiling_update_per_s,
            round.async_create_per_s,
            ratio(round.async_create_per_s, round.ceiling_create_per_s),
            round.async_update_per_s,
            ratio(round.async_update_per_s, round.ceiling_update_per_s),
        );
    }
    for (index, round) in r.preloaded_rounds.iter().enumerate() {
        println!(
            "| preloaded {} | {:.0}/s | {:.0}/s | {:.0}/s ({:.0}%) | {:.0}/s ({:.0}%) |",
            index + 1,
            round.ceiling_create_per_s,
            round.ceiling_update_per_s,
            round.async_create_per_s,
            ratio(round.async_create_per_s, round.ceiling_create_per_s),
            round.async_update_per_s,
            ratio(round.async_update_per_s, round.ceiling_update_per_s),
        );
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

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median([]), 0.0);
    }
}
