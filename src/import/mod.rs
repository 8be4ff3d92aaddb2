//! `studentsync import FILE`: one command from a SIS export to synced students,
//! through the HTTP API only (it never touches the database).
//!
//! The file is read in passes, so memory is bounded by the window of batches in
//! flight plus the duplicate check, never by the file:
//! 1. the header is checked, then the URL and key (`GET /v3/jobs?limit=1`);
//! 2. [`duplicates::scan`] counts the records and finds the ids on several rows;
//! 3. a reader thread streams records into [`batch::Unit`]s (rows failed locally
//!    ride along with the batch being filled); up to `--concurrency` batches are
//!    sent at once by [`client::Api`], at most [`WINDOW`] × concurrency units are
//!    unsettled, and outcomes are reported in file order ([`report`]) while
//!    [`progress`] shows the counts.
//!
//! stdout's last line is the summary `{"total","created","updated","unchanged",
//! "failed"}`; the exit code is 0 (nothing failed), 1 (some rows failed) or 2
//! (usage or fatal error: unreadable file, bad header, bad key, server
//! unreachable after retries).

mod batch;
mod client;
mod duplicates;
mod lines;
mod outcome;
mod progress;
mod read_csv;
mod read_jsonl;
mod report;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use studentsync::job::{BatchOptions, JobSummary, OnStudentCreated};
use tokio::sync::{Semaphore, mpsc};

use batch::{Batcher, Unit};
use client::Api;
use outcome::Outcome;
use progress::Progress;
use report::Report;
use source::{Failure, Format, Record, RowError, Source};

/// Units that may be unsettled at once, per unit of `--concurrency` (bounds the
/// reorder buffer that keeps the report in file order).
const WINDOW: usize = 4;

/// `studentsync import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// The file: CSV with a header row of API field names, or JSON lines.
    pub file: PathBuf,
    /// Base URL of the Student Sync API, e.g. https://sync.example.edu
    #[arg(long, env = "STUDENTSYNC_URL")]
    pub url: String,
    /// API key of the school (prefer the environment variable: arguments are
    /// visible to other users of the machine).
    #[arg(long, env = "STUDENTSYNC_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Write the failed rows to this CSV file (line, externalReferenceId, status, errors).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Input format [default: jsonl for .jsonl/.ndjson files, else csv].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Students per request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// Requests in flight at once (enough to keep the workers busy while
    /// answers travel back).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Unarchive (and update) archived students the file names; without it they fail (`archived`).
    #[arg(long)]
    pub allow_unarchive: bool,
    /// Email each created student that has an address their credentials.
    #[arg(long)]
    pub send_credentials: bool,
    /// Created students must choose a new password at first login.
    #[arg(long)]
    pub new_password_needed: bool,
    /// Predict the outcome without writing anything or sending any email.
    #[arg(long)]
    pub dry_run: bool,
    /// Mixed into every batch's Idempotency-Key. Without it the key depends on the
    /// batch's content only, so rerunning the same file within 24 h replays the
    /// earlier results instead of applying them again; give a new value to apply
    /// the file again anyway.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Seconds the API may hold each batch request waiting for its job
    /// (`Prefer: wait`); a job still running after that is polled.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=60))]
    pub wait: u64,
    /// Retries of a request that met a network error or a 5xx before giving up.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_retries: u32,
    /// Seconds between progress lines when stderr is not a terminal.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub progress_every: f64,
}

/// Runs the import; the exit code follows the module documentation.
pub async fn run(args: ImportArgs) -> ExitCode {
    match import(args).await {
        Ok(summary) => {
            println!(
                "{}",
                serde_json::to_string(&summary).expect("the summary serialises")
            );
            if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("studentsync import: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Counts over the whole file.
#[derive(Default)]
struct Tally {
    summary: JobSummary,
    batches: usize,
    replayed: usize,
}

impl Tally {
    fn add(&mut self, outcome: &Outcome, sent: bool) {
        let (total, part) = (&mut self.summary, &outcome.summary);
        total.total += part.total;
        total.created += part.created;
        total.updated += part.updated;
        total.unchanged += part.unchanged;
        total.failed += part.failed;
        self.batches += usize::from(sent);
        self.replayed += usize::from(outcome.replayed);
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<JobSummary> {
    let format = args.format.unwrap_or_else(|| Format::of_path(&args.file));
    let source = Source {
        path: args.file.clone(),
        format,
    };
    // A bad header or an unreadable file is reported before any request.
    drop(source.open(false)?);
    if let Some(report) = &args.report
        && let (Ok(report), Ok(file)) = (report.canonicalize(), args.file.canonicalize())
        && report == file
    {
        anyhow::bail!("--report names the input file; it would be overwritten");
    }
    let mut report = Report::create(args.report.as_deref())?;
    let concurrency = usize::from(args.concurrency);
    let api = Api::new(
        &args.url,
        &args.api_key,
        args.max_retries,
        concurrency,
        Duration::from_secs(args.wait),
    )?;
    api.check().await?;

    let scan = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || duplicates::scan(&source))
            .await
            .context("the first pass stopped")??
    };
    eprintln!(
        "studentsync import: {}: {}, {} rows ({} on more than one row); batches of {} to {}{}",
        args.file.display(),
        describe_format(&source)?,
        scan.records,
        match scan.duplicates.len() {
            0 => "no id".to_string(),
            1 => "1 id".to_string(),
            n => format!("{n} ids"),
        },
        args.batch_size,
        args.url,
        if args.dry_run { " (dry run)" } else { "" },
    );

    let progress = Progress::start(
        scan.records,
        Duration::try_from_secs_f64(args.progress_every).unwrap_or(Duration::from_secs(5)),
    );
    let options = BatchOptions {
        allow_unarchive: args.allow_unarchive,
        on_student_created: OnStudentCreated {
            send_credentials: args.send_credentials,
            new_password_needed: args.new_password_needed,
        },
        dry_run: args.dry_run,
    };
    let batcher = Batcher::new(&options, usize::from(args.batch_size));
    let sent = pipeline(
        source,
        scan.duplicates,
        batcher,
        api,
        args.run_id.clone(),
        concurrency,
        &progress,
        &mut report,
    )
    .await;
    progress.finish();
    let first_failures = report.finish()?;
    let tally = sent.map_err(|error| {
        error.context(
            "the import stopped; rows already sent are applied, and rerunning the same command replays them (same Idempotency-Keys) before going on",
        )
    })?;

    if tally.replayed > 0 {
        eprintln!(
            "studentsync import: {} of {} batches were answered from an earlier run with the same content (Idempotency-Key, kept 24 h): nothing was applied twice; pass a new --run-id to apply them again",
            tally.replayed, tally.batches
        );
    }
    if tally.summary.failed > 0 && args.report.is_none() {
        for failure in &first_failures {
            eprintln!("  {}", report::describe(failure));
        }
        eprintln!(
            "studentsync import: {} rows failed; pass --report PATH for the full list",
            tally.summary.failed
        );
    }
    Ok(tally.summary)
}

/// Reads units on a blocking thread, sends them concurrently, settles them in
/// file order. `Err` is fatal.
#[allow(clippy::too_many_arguments)]
async fn pipeline(
    source: Source,
    duplicates: HashMap<String, Vec<u64>>,
    batcher: Batcher,
    api: Api,
    run_id: Option<String>,
    concurrency: usize,
    progress: &Progress,
    report: &mut Report,
) -> anyhow::Result<Tally> {
    let (units_tx, mut units_rx) = mpsc::channel::<Unit>(concurrency);
    let reader =
        tokio::task::spawn_blocking(move || read_units(&source, &duplicates, batcher, units_tx));

    type Settled = anyhow::Result<(Outcome, bool, tokio::sync::OwnedSemaphorePermit)>;
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<Settled>();
    let window = Arc::new(Semaphore::new(WINDOW * concurrency));
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let run_id: Arc<Option<String>> = Arc::new(run_id);
    let dispatcher = tokio::spawn(async move {
        while let Some(unit) = units_rx.recv().await {
            let (Ok(slot), Ok(flight)) = (
                window.clone().acquire_owned().await,
                in_flight.clone().acquire_owned().await,
            ) else {
                break;
            };
            let (api, settled_tx, run_id) = (api.clone(), settled_tx.clone(), run_id.clone());
            tokio::spawn(async move {
                let sent = !unit.rows.is_empty();
                let answer = if sent {
                    let key = batch::idempotency_key(run_id.as_deref(), &unit.body);
                    api.upsert(&unit.body, &key).await.map(Some)
                } else {
                    Ok(None)
                };
                drop(flight);
                let settled = answer.map(|answer| (outcome::settle(unit, answer), sent, slot));
                let _ = settled_tx.send(settled);
            });
        }
    });

    let mut tally = Tally::default();
    let collected = async {
        // Settled units waiting for an earlier one, each holding its window
        // slot until it is reported: slots bound how far sending may run ahead of
        // the slowest batch. Units are dispatched in order, so the next one to
        // report always holds a slot already and cannot be starved.
        let mut pending = BTreeMap::new();
        let mut next = 0;
        while let Some(settled) = settled_rx.recv().await {
            let (outcome, sent, slot) = settled?;
            progress.advance(outcome.summary.total as u64, outcome.summary.failed as u64);
            tally.add(&outcome, sent);
            pending.insert(outcome.seq, (outcome, slot));
            while let Some((outcome, _slot)) = pending.remove(&next) {
                report.write(&outcome.failures)?;
                next += 1;
            }
        }
        reader.await.context("the reader stopped")??;
        anyhow::ensure!(pending.is_empty(), "some batches were never settled");
        anyhow::Ok(())
    }
    .await;
    if collected.is_err() {
        dispatcher.abort();
    }
    collected.map(|()| tally)
}

/// Turns the file's records into units, failing duplicates. Stops quietly when
/// the receiver is gone (the import stopped).
fn read_units(
    source: &Source,
    duplicates: &HashMap<String, Vec<u64>>,
    mut batcher: Batcher,
    units: mpsc::Sender<Unit>,
) -> anyhow::Result<()> {
    for record in source.open(true)? {
        let full = match record? {
            Record::Failed(failure) => batcher.push_failed(failure),
            Record::Row(row) => match row.id.as_deref().and_then(|id| duplicates.get(id)) {
                Some(lines) => {
                    let id = row.id.as_deref().unwrap_or_default();
                    let detail = duplicates::detail(id, lines, row.line);
                    batcher.push_failed(Failure {
                        line: row.line,
                        errors: vec![RowError::new(
                            "duplicate_in_file",
                            "/externalReferenceId",
                            detail,
                        )],
                        id: row.id,
                    })
                }
                None => batcher.push_row(row),
            },
        };
        if let Some(unit) = full
            && units.blocking_send(unit).is_err()
        {
            return Ok(());
        }
    }
    if let Some(unit) = batcher.finish() {
        let _ = units.blocking_send(unit);
    }
    Ok(())
}

/// `CSV, ';'-separated`, `CSV, tab-separated` or `JSON lines`.
fn describe_format(source: &Source) -> anyhow::Result<String> {
    Ok(match source.delimiter()? {
        None => "JSON lines".to_string(),
        Some(b'\t') => "CSV, tab-separated".to_string(),
        Some(delimiter) => format!("CSV, {:?}-separated", delimiter as char),
    })
}
