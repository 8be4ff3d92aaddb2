//! `studentsync import FILE`: the real binary against a spawned app, with real
//! files (BOM, `;` and tab delimiters, multi-line cells, `#N/A`, duplicates,
//! broken rows, JSON lines), its report, summary line and exit codes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// A directory for one test's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("ss-import-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How one run of the command ended.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The last line of stdout, as JSON.
    #[track_caller]
    fn summary(&self) -> Value {
        let line = self
            .stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no stdout: {self:?}"));
        serde_json::from_str(line).unwrap_or_else(|error| panic!("last line {line:?}: {error}"))
    }
}

/// `studentsync import FILE ARGS…` with the app's URL and key in the environment.
fn command(app: &TestApp, file: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_studentsync"));
    command
        .arg("import")
        .arg(file)
        .args(args)
        .env("STUDENTSYNC_URL", &app.address)
        .env("STUDENTSYNC_API_KEY", &app.api_key)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn finish(command: &mut tokio::process::Command) -> Run {
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .expect("the import finished within 180 s")
        .expect("run studentsync");
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

async fn import(app: &TestApp, file: &Path, args: &[&str]) -> Run {
    finish(&mut command(app, file, args)).await
}

/// The report's rows as (line, externalReferenceId, status, errors).
fn report_rows(path: &Path) -> Vec<(u64, String, String, String)> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    assert_eq!(
        reader.headers().unwrap(),
        vec!["line", "externalReferenceId", "status", "errors"]
    );
    reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            (
                record[0].parse().unwrap(),
                record[1].to_string(),
                record[2].to_string(),
                record[3].to_string(),
            )
        })
        .collect()
}

/// `code pointer` of each `; `-separated error of a report cell.
fn codes(errors: &str) -> Vec<String> {
    errors
        .split("; ")
        .map(|error| {
            let mut words = error.split(' ');
            let code = words.next().unwrap_or_default();
            match words.next() {
                Some(pointer) if pointer.starts_with('/') => format!("{code} {pointer}"),
                _ => code.to_string(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excel_csv_with_bom_semicolons_quotes_and_multiline_cells_syncs() {
    let app = spawn_app().await;
    let dir = TempDir::new();
    let file = dir.write(
        "excel.csv",
        "\u{feff}externalReferenceId;firstName;lastName;email;tags;curriculumName\r\n\
         imp-1;Ada;Lovelace;ada@example.edu;grade-10|robotics;\"Computing\r\nand Poetry\"\r\n\
         imp-2;\"Alan; M.\";\"Turing \"\"the enigma\"\"\";;;\r\n\
         \r\n\
         imp-3;Grace;Hopper;;navy;\r\n\
         ;;;;;\r\n",
    );
    let report = dir.path("report.csv");
    let run = import(&app, &file, &["--report", report.to_str().unwrap()]).await;

    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.summary(),
        json!({"total": 3, "created": 3, "updated": 0, "unchanged": 0, "failed": 0})
    );
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "only the summary on stdout: {run:?}"
    );
    assert!(run.stderr.contains("CSV, ';'-separated"), "{}", run.stderr);
    assert!(
        run.stderr.contains("import: 3/3 rows (100%)"),
        "{}",
        run.stderr
    );
    assert!(report_rows(&report).is_empty());

    let ada = app.student_by_ref("imp-1").await.unwrap();
    assert_eq!(ada["firstName"], "Ada");
    assert_eq!(ada["email"], "ada@example.edu");
    assert_eq!(ada["tags"], json!(["grade-10", "robotics"]));
    assert_eq!(ada["curriculumName"], "Computing\r\nand Poetry");
    let alan = app.student_by_ref("imp-2").await.unwrap();
    assert_eq!(alan["firstName"], "Alan; M.");
    assert_eq!(alan["lastName"], "Turing \"the enigma\"");
    assert_eq!(alan["email"], Value::Null);
    assert_eq!(alan["tags"], Value::Null);
    let grace = app.student_by_ref("imp-3").await.unwrap();
    assert_eq!(grace["tags"], json!(["navy"]));
    assert_eq!(app.students_count().await, 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_cells_leave_fields_alone_and_na_clears_them_tab_separated() {
    let app = spawn_app().await;
    app.upsert_ok(&batch(vec![
        json!({"externalReferenceId": "imp-a", "firstName": "Ann", "lastName": "Old",
               "email": "ann@example.edu", "phone": "+1 555 0100", "tags": ["a", "b"],
               "company": "North"}),
        json!({"externalReferenceId": "imp-b", "firstName": "Bea", "lastName": "Same"}),
    ]))
    .await;
    let dir = TempDir::new();
    let file = dir.write(
        "export.tsv",
        "externalReferenceId\tfirstName\tlastName\temail\tphone\ttags\tcompany\n\
         imp-a\t\tNew\t\t#N/A\t#N/A\t\n\
         imp-b\tBea\t\t\t\t\t\n",
    );
    let run = import(&app, &file, &[]).await;

    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.summary(),
        json!({"total": 2, "created": 0, "updated": 1, "unchanged": 1, "failed": 0})
    );
    assert!(run.stderr.contains("CSV, tab-separated"), "{}", run.stderr);
    let ann = app.student_by_ref("imp-a").await.unwrap();
    assert_eq!(ann["firstName"], "Ann", "empty cell: unchanged");
    assert_eq!(ann["lastName"], "New");
    assert_eq!(ann["email"], "ann@example.edu", "empty cell: unchanged");
    assert_eq!(ann["company"], "North", "empty cell: unchanged");
    assert_eq!(ann["phone"], Value::Null, "#N/A clears");
    assert_eq!(ann["tags"], Value::Null, "#N/A clears");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_broken_rows_fail_in_the_report_and_are_not_sent() {
    let app = spawn_app().await;
    let dir = TempDir::new();
    let file = dir.write(
        "sis.csv",
        // CRLF line ends (as Excel writes them), a blank line, a cell with a line
        // break: the report's lines are where each record starts.
        "externalReferenceId,firstName,lastName,email\r\n\
         dup-1,A,One,\r\n\
         ok-1,B,Two,\r\n\
         \"ok-2\",\"Multi\n\
         line\",Three,\r\n\
         \r\n\
         bad-1,C,Four,not-an-email\r\n\
         broken,only,three\r\n\
         dup-1,D,Five,\r\n\
         ok-3,E,Six,\r\n\
         new-1,,,\r\n",
    );
    let report = dir.path("failed.csv");
    let run = import(
        &app,
        &file,
        &["--batch-size", "2", "--report", report.to_str().unwrap()],
    )
    .await;

    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.summary(),
        json!({"total": 8, "created": 3, "updated": 0, "unchanged": 0, "failed": 5})
    );
    let rows = report_rows(&report);
    let actual: Vec<(u64, &str, &str, Vec<String>)> = rows
        .iter()
        .map(|(line, id, status, errors)| (*line, id.as_str(), status.as_str(), codes(errors)))
        .collect();
    let duplicate = ["duplicate_in_file /externalReferenceId"];
    let expected: Vec<(u64, &str, &[&str])> = vec![
        (2, "dup-1", &duplicate),
        (7, "bad-1", &["invalid_format /email"]),
        (8, "broken", &["malformed_row"]),
        (9, "dup-1", &duplicate),
        (
            11,
            "new-1",
            &[
                "required_on_create /firstName",
                "required_on_create /lastName",
            ],
        ),
    ];
    let expected: Vec<(u64, &str, &str, Vec<String>)> = expected
        .into_iter()
        .map(|(line, id, codes)| {
            let codes = codes.iter().map(|code| code.to_string()).collect();
            (line, id, "failed", codes)
        })
        .collect();
    assert_eq!(actual, expected, "{rows:?}");
    assert!(rows[0].3.contains("also on line 9"), "{}", rows[0].3);
    assert!(rows[2].3.contains("expected 4 cells"), "{}", rows[2].3);

    assert!(
        app.student_by_ref("dup-1").await.is_none(),
        "duplicates are not sent"
    );
    assert!(app.student_by_ref("broken").await.is_none());
    assert_eq!(
        app.student_by_ref("ok-2").await.unwrap()["firstName"],
        "Multi\nline"
    );
    assert_eq!(app.students_count().await, 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_sent_as_they_are_and_broken_lines_fail_alone() {
    let app = spawn_app().await;
    let dir = TempDir::new();
    let file = dir.write(
        "students.jsonl",
        "\u{feff}{\"externalReferenceId\":\"j-1\",\"firstName\":\"Ada\",\"lastName\":\"L\"}\n\
         \n\
         {\"externalReferenceId\":\"j-2\",\"firstName\":\"Bob\"\r\n\
         [1,2]\n\
         {\"externalReferenceId\":\"j-3\",\"firstName\":\"C\",\"lastName\":\"D\",\"email\":null,\"tags\":[\"x\",\"x\",\"y\"]}\n\
         {\"externalReferenceId\":\"j-1\",\"firstName\":\"again\"}\n\
         {\"externalReferenceId\":\"j-4\",\"firstName\":\"E\",\"lastName\":\"F\",\"firstName\":\"G\"}\n",
    );
    let run = import(&app, &file, &[]).await;

    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.summary(),
        json!({"total": 6, "created": 1, "updated": 0, "unchanged": 0, "failed": 5})
    );
    assert!(run.stderr.contains("JSON lines"), "{}", run.stderr);
    // Without --report the first failures are listed on stderr.
    for expected in [
        "line 1 (j-1): duplicate_in_file /externalReferenceId",
        "line 3: malformed_row not valid JSON",
        "line 4: invalid_type",
        "line 6 (j-1): duplicate_in_file",
        "line 7: malformed_row not valid JSON",
        "pass --report PATH",
    ] {
        assert!(
            run.stderr.contains(expected),
            "{expected:?} in {}",
            run.stderr
        );
    }
    assert_eq!(
        app.student_by_ref("j-3").await.unwrap()["tags"],
        json!(["x", "y"])
    );
    assert_eq!(app.students_count().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_replays_and_a_new_run_id_applies_again() {
    let app = spawn_app().await;
    let dir = TempDir::new();
    let mut content = String::from("externalReferenceId,firstName,lastName\n");
    for index in 0..5 {
        content.push_str(&format!("re-{index},First{index},Last\n"));
    }
    content.push_str("re-bad,,\n");
    let file = dir.write("rerun.csv", content);

    let first = import(&app, &file, &["--batch-size", "2"]).await;
    assert_eq!(first.code, 1, "{first:?}");
    let expected = json!({"total": 6, "created": 5, "updated": 0, "unchanged": 0, "failed": 1});
    assert_eq!(first.summary(), expected);
    let jobs = app.jobs_count().await;
    assert_eq!(jobs, 3);

    // The same file again: every batch is answered from its Idempotency-Key.
    let second = import(&app, &file, &["--batch-size", "2"]).await;
    assert_eq!(second.code, 1, "{second:?}");
    assert_eq!(second.summary(), expected);
    assert!(
        second
            .stderr
            .contains("3 of 3 batches were answered from an earlier run"),
        "{}",
        second.stderr
    );
    assert_eq!(app.jobs_count().await, jobs, "nothing was processed twice");

    // A new run id applies the file again: everything is unchanged now.
    let third = import(&app, &file, &["--batch-size", "2", "--run-id", "second"]).await;
    assert_eq!(
        third.summary(),
        json!({"total": 6, "created": 0, "updated": 0, "unchanged": 5, "failed": 1})
    );
    assert_eq!(app.jobs_count().await, jobs * 2);
    assert_eq!(app.students_count().await, 5);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_predicts_and_writes_nothing() {
    let app = spawn_app().await;
    let dir = TempDir::new();
    let file = dir.write(
        "dry.csv",
        "externalReferenceId,firstName,lastName\ndry-1,A,B\ndry-2,C,D\n",
    );
    let run = import(&app, &file, &["--dry-run", "--send-credentials"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.summary(),
        json!({"total": 2, "created": 2, "updated": 0, "unchanged": 0, "failed": 0})
    );
    assert!(run.stderr.contains("(dry run)"), "{}", run.stderr);
    assert_eq!(app.students_count().await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_fatal_errors_exit_2() {
    let app = spawn_app().await;
    let dir = TempDir::new();
    let file = dir.write(
        "ok.csv",
        "externalReferenceId,firstName,lastName\nx-1,A,B\n",
    );

    let bad_key = finish(command(&app, &file, &[]).env("STUDENTSYNC_API_KEY", "sk_wrong")).await;
    assert_eq!(bad_key.code, 2, "{bad_key:?}");
    assert!(bad_key.stdout.is_empty(), "{bad_key:?}");
    assert!(
        bad_key.stderr.contains("API key was refused"),
        "{bad_key:?}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = import(&app, &file, &["--url", &closed_url, "--max-retries", "1"]).await;
    assert_eq!(unreachable.code, 2, "{unreachable:?}");
    assert!(
        unreachable
            .stderr
            .contains("did not answer after 2 attempts"),
        "{unreachable:?}"
    );

    let header = dir.write("header.csv", "id,name\n1,2\n");
    let bad_header = import(&app, &header, &[]).await;
    assert_eq!(bad_header.code, 2, "{bad_header:?}");
    assert!(
        bad_header.stderr.contains("unknown column \"id\""),
        "{bad_header:?}"
    );

    let missing = import(&app, &dir.path("missing.csv"), &[]).await;
    assert_eq!(missing.code, 2, "{missing:?}");

    let no_url = finish(command(&app, &file, &[]).env_remove("STUDENTSYNC_URL")).await;
    assert_eq!(no_url.code, 2, "{no_url:?}");
    assert!(no_url.stderr.contains("--url"), "{no_url:?}");

    let too_big = import(&app, &file, &["--batch-size", "1001"]).await;
    assert_eq!(too_big.code, 2, "{too_big:?}");

    assert_eq!(app.students_count().await, 0, "nothing was sent");
    // The key and URL from flags work like the environment.
    let flags = finish(
        command(
            &app,
            &file,
            &["--url", &app.address, "--api-key", &app.api_key],
        )
        .env_remove("STUDENTSYNC_URL")
        .env_remove("STUDENTSYNC_API_KEY"),
    )
    .await;
    assert_eq!(flags.code, 0, "{flags:?}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_outlive_the_wait_are_polled() {
    // No worker yet: every batch is accepted but not processed within
    // `--wait 1`, so the API answers 202 and the import polls the jobs.
    let mut app = spawn_app_with(TestOptions::default().workers(0)).await;
    let dir = TempDir::new();
    let file = dir.write(
        "slow.csv",
        "externalReferenceId,firstName,lastName\nq-1,A,B\nq-2,C,D\nq-3,E,F\n",
    );
    let mut running = command(
        &app,
        &file,
        &["--batch-size", "1", "--wait", "1", "--progress-every", "1"],
    );
    let run = tokio::spawn(async move { finish(&mut running).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.start_worker();
    let run = run.await.unwrap();

    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.summary(),
        json!({"total": 3, "created": 3, "updated": 0, "unchanged": 0, "failed": 0})
    );
    assert!(
        run.stderr.contains("import: 0/3 rows"),
        "periodic lines: {}",
        run.stderr
    );
    assert_eq!(app.students_count().await, 3);
    assert_eq!(app.jobs_count().await, 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_503_by_a_full_queue_is_retried() {
    // Room for one batch in the queue and no worker: batches queued beforehand
    // fill it, so the import's batch is refused (503, Retry-After) until a
    // worker drains the queue.
    let mut app =
        spawn_app_with(TestOptions::default().workers(0).env("QUEUE_MAX_LENGTH", 1)).await;
    // Quorum queues refuse once the backlog is *over* the bound: fill the queue
    // until the API refuses, as ops.rs does.
    let mut queued = 0;
    loop {
        let reply = send(
            app.batch_request(&batch(vec![student(&format!("queued-{queued}"))]))
                .header("Prefer", "respond-async"),
        )
        .await;
        if reply.status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert_eq!(
            reply.status,
            reqwest::StatusCode::ACCEPTED,
            "{}",
            reply.body
        );
        queued += 1;
        assert!(queued < 5, "the queue never filled up");
    }
    let dir = TempDir::new();
    let file = dir.write(
        "full.csv",
        "externalReferenceId,firstName,lastName\nf-1,A,B\n",
    );
    let mut running = command(&app, &file, &[]);
    let run = tokio::spawn(async move { finish(&mut running).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Still retrying, and its batch was never recorded: it was refused.
    assert!(!run.is_finished());
    assert_eq!(app.jobs_count().await, queued);
    app.start_worker();
    let run = run.await.unwrap();

    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.summary(),
        json!({"total": 1, "created": 1, "updated": 0, "unchanged": 0, "failed": 0})
    );
    assert_eq!(app.jobs_count().await, queued + 1);
    assert!(app.student_by_ref("f-1").await.is_some());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_batches_wait_for_retry_after() {
    let app = spawn_app_with(TestOptions {
        rate_limit_per_minute: 60,
        rate_limit_burst: 2,
        ..TestOptions::default()
    })
    .await;
    let dir = TempDir::new();
    let file = dir.write(
        "limited.csv",
        "externalReferenceId,firstName,lastName\nr-1,A,B\nr-2,C,D\nr-3,E,F\nr-4,G,H\n",
    );
    let run = import(&app, &file, &["--batch-size", "1", "--concurrency", "2"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.summary(),
        json!({"total": 4, "created": 4, "updated": 0, "unchanged": 0, "failed": 0})
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_batches_in_flight_keep_the_report_in_file_order() {
    let app = spawn_app_with(TestOptions::default().workers(2)).await;
    let dir = TempDir::new();
    let mut content = String::from("externalReferenceId,firstName,lastName,email\n");
    let mut expected_lines = Vec::new();
    for index in 0..3000u64 {
        let email = if index % 97 == 0 {
            expected_lines.push(index + 2);
            "broken".to_string()
        } else {
            format!("s{index}@example.edu")
        };
        content.push_str(&format!("bulk-{index},First,Last,{email}\n"));
    }
    let file = dir.write("bulk.csv", content);
    let report = dir.path("report.csv");
    let run = import(
        &app,
        &file,
        &[
            "--batch-size",
            "100",
            "--concurrency",
            "4",
            "--report",
            report.to_str().unwrap(),
        ],
    )
    .await;

    assert_eq!(run.code, 1, "{run:?}");
    let failed = expected_lines.len();
    assert_eq!(
        run.summary(),
        json!({"total": 3000, "created": 3000 - failed, "updated": 0, "unchanged": 0, "failed": failed})
    );
    let lines: Vec<u64> = report_rows(&report).iter().map(|row| row.0).collect();
    assert_eq!(lines, expected_lines);
    assert_eq!(app.students_count().await, (3000 - failed) as i64);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_school_budget_paces_the_import_instead_of_failing_it() {
    // 1200 students a minute (20 a second), 1200 at once: the last 100 rows
    // wait for the budget; every batch gets through in the end.
    let app = spawn_app_with(TestOptions::default().env("SCHOOL_STUDENTS_PER_MINUTE", 1200)).await;
    let dir = TempDir::new();
    let mut content = String::from("externalReferenceId,firstName,lastName\n");
    for index in 0..1300 {
        content.push_str(&format!("budget-{index},First,Last\n"));
    }
    let file = dir.write("budget.csv", content);
    let started = std::time::Instant::now();
    let run = import(&app, &file, &["--batch-size", "100"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.summary(),
        json!({"total": 1300, "created": 1300, "updated": 0, "unchanged": 0, "failed": 0})
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.students_count().await, 1300);
    app.cleanup().await;
}
