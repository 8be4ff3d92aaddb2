//! Test harness: every test gets its own API server, workers, database and
//! namespace, so tests are independent and can run in parallel against one
//! Postgres, one RabbitMQ and one Redis.
//!
//! [`spawn_app`] creates a randomly named database (`ss_test_<uuid>`) and namespace
//! (`t<uuid>`), applies the migrations, binds the API on `127.0.0.1:0`, runs the
//! API and N workers in-process on the test's runtime, and creates a school through
//! the admin API. [`TestApp::cleanup`] (or, failing that, `Drop`) stops them, drops
//! the database and deletes the namespace's queues, exchanges and Redis keys.
//! [`TestApp::spawn_worker_process`] runs the real `studentsync-worker` binary
//! against the same database and namespace.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::PgPool;
use studentsync::config::Config;
use studentsync::queue::Topology;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The seed example of the changelog / README.
pub fn example_payload() -> Value {
    json!({
        "students": [
            {"externalReferenceId": "SIS-1001", "externalReferenceType": "sis", "firstName": "Ada",
             "lastName": "Lovelace", "email": "ada@example.edu", "tags": ["grade-10", "robotics"]},
            {"externalReferenceId": "SIS-1002", "firstName": "Alan", "lastName": "Turing",
             "email": "alan@example.edu", "phone": "+44 20 7946 0000"}
        ],
        "options": {
            "allowUnarchive": false,
            "onStudentCreated": {"sendCredentials": true, "newPasswordNeeded": true},
            "dryRun": false
        }
    })
}

/// A minimal valid new student.
pub fn student(external_reference_id: &str) -> Value {
    json!({
        "externalReferenceId": external_reference_id,
        "firstName": "First",
        "lastName": "Last",
    })
}

/// `{"students": [...]}`.
pub fn batch(students: Vec<Value>) -> Value {
    json!({ "students": students })
}

/// `{"students": [...], "options": {...}}`.
pub fn batch_with(students: Vec<Value>, options: Value) -> Value {
    json!({ "students": students, "options": options })
}

/// How [`spawn_app_with`] sets up an app.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// In-process workers started with the API.
    pub workers: usize,
    /// Whether `ADMIN_TOKEN` is set (a random one) for the API.
    pub admin_enabled: bool,
    /// Create a school (and its API key) through the admin API.
    pub create_school: bool,
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    /// Extra or overriding configuration variables.
    pub env: Vec<(String, String)>,
    /// The Postgres server the test database is created on (any database
    /// name in it is replaced); default `$DATABASE_URL` or the local server.
    pub database_server_url: Option<String>,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            admin_enabled: true,
            create_school: true,
            rate_limit_per_minute: 100_000,
            rate_limit_burst: 100_000,
            env: Vec::new(),
            database_server_url: None,
        }
    }
}

impl TestOptions {
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Creates the test database on the Postgres server at `url`.
    #[allow(dead_code)] // used by tests/faults
    pub fn database_server(mut self, url: impl ToString) -> Self {
        self.database_server_url = Some(url.to_string());
        self
    }

    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// One running deployment under test.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub client: reqwest::Client,
    pub admin_token: String,
    /// A pool on the test's own database.
    pub pool: PgPool,
    /// The API key of the school created at start (empty without a school).
    pub api_key: String,
    pub school_id: String,
    pub namespace: String,
    pub db_name: String,
    pub config: Config,
    /// The configuration variables the app was built from (also given to worker
    /// processes).
    pub env: BTreeMap<String, String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
    admin_database_url: String,
    cleaned_up: bool,
}

static TRACING: Once = Once::new();

/// Logs of the app under test go to the test output when `TEST_LOG` is set.
fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            studentsync::telemetry::init();
        }
    });
}

fn base_url(name: &str, default: &str) -> String {
    std::env::var(format!("STUDENTSYNC_TEST_{name}"))
        .or_else(|_| std::env::var(name))
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("DATABASE_URL is a URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

pub async fn spawn_app_with(options: TestOptions) -> TestApp {
    init_tracing();
    let id = Uuid::new_v4().simple().to_string();
    let db_name = format!("ss_test_{id}");
    let namespace = format!("t{id}");
    let admin_token = format!("admin-{}", Uuid::new_v4().simple());

    let base_database_url = options
        .database_server_url
        .clone()
        .unwrap_or_else(|| base_url("DATABASE_URL", DEFAULT_DATABASE_URL));
    let database_url = with_database(&base_database_url, &db_name);
    let admin_database_url = with_database(&base_database_url, "postgres");

    let mut env = BTreeMap::new();
    env.insert("DATABASE_URL".to_string(), database_url.clone());
    env.insert(
        "AMQP_URL".to_string(),
        base_url("AMQP_URL", DEFAULT_AMQP_URL),
    );
    env.insert(
        "REDIS_URL".to_string(),
        base_url("REDIS_URL", DEFAULT_REDIS_URL),
    );
    env.insert("STUDENTSYNC_NAMESPACE".to_string(), namespace.clone());
    env.insert("BIND_ADDR".to_string(), "127.0.0.1:0".to_string());
    env.insert(
        "RATE_LIMIT_PER_MINUTE".to_string(),
        options.rate_limit_per_minute.to_string(),
    );
    env.insert(
        "RATE_LIMIT_BURST".to_string(),
        options.rate_limit_burst.to_string(),
    );
    // Postgres allows 100 connections and tests run in parallel: keep pools small.
    env.insert("DATABASE_MAX_CONNECTIONS".to_string(), "4".to_string());
    if options.admin_enabled {
        env.insert("ADMIN_TOKEN".to_string(), admin_token.clone());
    }
    for (name, value) in &options.env {
        env.insert(name.clone(), value.clone());
    }

    let pool = studentsync::db::prepare(&database_url, 3)
        .await
        .expect("create and migrate the test database");

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a random port");
    let port = listener.local_addr().unwrap().port();
    env.insert("BIND_ADDR".to_string(), format!("127.0.0.1:{port}"));
    let config = config_from(&env);

    let (shutdown, _) = watch::channel(false);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    let mut app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client,
        admin_token,
        pool,
        api_key: String::new(),
        school_id: String::new(),
        namespace,
        db_name,
        config: config.clone(),
        env,
        shutdown,
        tasks: Vec::new(),
        admin_database_url,
        cleaned_up: false,
    };

    let api = tokio::spawn(studentsync_api::run(
        config,
        listener,
        app.shutdown_signal(),
    ));
    app.tasks.push(("api".to_string(), api));
    for _ in 0..options.workers {
        app.start_worker();
    }

    if options.create_school {
        let (school_id, api_key) = app.create_school("Test School").await;
        app.school_id = school_id;
        app.api_key = api_key;
    }
    app
}

fn config_from(env: &BTreeMap<String, String>) -> Config {
    Config::from_lookup(|name: &str| env.get(name).cloned()).expect("valid test configuration")
}

impl TestApp {
    /// A future that resolves when the app is told to stop.
    fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.shutdown.subscribe();
        async move {
            // Resolves on `true` or when the sender is gone.
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }

    /// Starts one more in-process worker (e.g. after a test has queued work
    /// while no worker ran).
    pub fn start_worker(&mut self) {
        let worker = tokio::spawn(studentsync_worker::run(
            self.config.clone(),
            self.shutdown_signal(),
        ));
        let name = format!("worker-{}", self.tasks.len());
        self.tasks.push((name, worker));
    }

    /// Runs a second API server on the same database, broker, Redis and
    /// namespace; returns its address. It stops with the app.
    pub async fn spawn_extra_api(&mut self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut config = self.config.clone();
        config.bind_addr = format!("127.0.0.1:{port}");
        let api = tokio::spawn(studentsync_api::run(
            config,
            listener,
            self.shutdown_signal(),
        ));
        self.tasks.push(("extra-api".to_string(), api));
        format!("http://127.0.0.1:{port}")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    // ---- admin ------------------------------------------------------------

    /// Creates a school through the admin API; returns (schoolId, apiKey).
    pub async fn create_school(&self, name: &str) -> (String, String) {
        let response = self
            .client
            .post(self.url("/v3/admin/schools"))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("POST /v3/admin/schools");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "create school: {body}");
        assert_eq!(body["name"], name, "{body}");
        let school_id = body["schoolId"].as_str().expect("schoolId").to_string();
        let api_key = body["apiKey"].as_str().expect("apiKey").to_string();
        assert!(
            Uuid::parse_str(&school_id).is_ok(),
            "schoolId is a UUID: {body}"
        );
        (school_id, api_key)
    }

    /// Creates another API key for a school; returns (apiKeyId, apiKey).
    pub async fn create_api_key(&self, school_id: &str) -> (String, String) {
        let response = self
            .client
            .post(self.url(&format!("/v3/admin/schools/{school_id}/api-keys")))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "create api key: {body}");
        (
            body["apiKeyId"].as_str().expect("apiKeyId").to_string(),
            body["apiKey"].as_str().expect("apiKey").to_string(),
        )
    }

    // ---- requests ---------------------------------------------------------

    /// An authenticated request with the app's key.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.api_key)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    /// `POST /v3/students/batch-upsert` with a JSON body.
    pub fn batch_request(&self, body: &Value) -> reqwest::RequestBuilder {
        self.post("/v3/students/batch-upsert")
            .header("Content-Type", "application/json")
            .body(body.to_string())
    }

    /// Posts a batch with the app's key and returns (status, headers, body).
    pub async fn upsert(&self, body: &Value) -> Reply {
        send(self.batch_request(body)).await
    }

    /// Posts a batch with another key.
    pub async fn upsert_as(&self, api_key: &str, body: &Value) -> Reply {
        send(
            self.client
                .post(self.url("/v3/students/batch-upsert"))
                .bearer_auth(api_key)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// Posts a batch that must be fully processed: answers 200/207 (asserted) and
    /// returns the job body.
    pub async fn upsert_ok(&self, body: &Value) -> Value {
        let reply = send(self.batch_request(body).header("Prefer", "wait=60")).await;
        assert!(
            reply.status == StatusCode::OK || reply.status == StatusCode::MULTI_STATUS,
            "expected 200/207, got {}: {}",
            reply.status,
            reply.body
        );
        assert_eq!(reply.body["status"], "completed", "{}", reply.body);
        reply.body
    }

    /// Posts a batch with `Prefer: respond-async` and returns the 202's job id.
    pub async fn upsert_async(&self, body: &Value) -> String {
        let reply = send(self.batch_request(body).header("Prefer", "respond-async")).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        reply.body["jobId"].as_str().expect("jobId").to_string()
    }

    /// GET with the app's key; returns (status, headers, body).
    pub async fn get_json(&self, path: &str) -> Reply {
        send(self.get(path)).await
    }

    /// Polls `GET /v3/jobs/{id}` until the job is completed or failed.
    pub async fn wait_for_job(&self, job_id: &str) -> Value {
        self.wait_for_job_within(job_id, Duration::from_secs(90))
            .await
    }

    pub async fn wait_for_job_within(&self, job_id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let reply = self.get_json(&format!("/v3/jobs/{job_id}")).await;
            assert_eq!(reply.status, StatusCode::OK, "GET job: {}", reply.body);
            let status = reply.body["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if status == "completed" || status == "failed" {
                return reply.body;
            }
            assert!(
                status == "queued" || status == "processing",
                "unexpected job status: {}",
                reply.body
            );
            assert!(
                Instant::now() < deadline,
                "job {job_id} still {status} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The student with this external reference id, through the API.
    pub async fn student_by_ref(&self, external_reference_id: &str) -> Option<Value> {
        let path = format!(
            "/v3/students?externalReferenceId={}",
            encode(external_reference_id)
        );
        let reply = self.get_json(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let students = reply.body["students"].as_array().expect("students array");
        assert!(students.len() <= 1, "{}", reply.body);
        students.first().cloned()
    }

    // ---- direct database reads ---------------------------------------------

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn students_count(&self) -> i64 {
        self.count("students").await
    }

    pub async fn jobs_count(&self) -> i64 {
        self.count("jobs").await
    }

    /// `updated_at` of a student, straight from the table.
    pub async fn db_updated_at(&self, external_reference_id: &str) -> String {
        sqlx::query_scalar("SELECT updated_at::text FROM students WHERE external_reference_id = $1")
            .bind(external_reference_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    // ---- RabbitMQ ----------------------------------------------------------

    pub fn topology(&self) -> Topology {
        Topology::new(
            &self.namespace,
            self.config.queue_max_length,
            self.config.queue_delivery_limit,
        )
    }

    /// (messages, consumers) of the batch queue, or None while it does not exist.
    pub async fn queue_counts(&self) -> Option<(u32, u32)> {
        self.queue_counts_of(&self.topology().queue).await
    }

    /// (messages, consumers) of the named queue, or None while it does not exist.
    pub async fn queue_counts_of(&self, queue: &str) -> Option<(u32, u32)> {
        let connection = lapin::Connection::connect(
            &self.config.amqp_url,
            lapin::ConnectionProperties::default(),
        )
        .await
        .ok()?;
        let channel = connection.create_channel().await.ok()?;
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare(queue.into(), options, Default::default())
            .await
            .ok();
        let _ = connection.close(0, "".into()).await;
        queue.map(|queue| (queue.message_count(), queue.consumer_count()))
    }

    /// Waits until the batch queue has exactly `wanted` consumers.
    pub async fn wait_for_consumer_count(&self, wanted: u32) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let count = self.queue_counts().await.map(|(_, consumers)| consumers);
            if count == Some(wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the batch queue has {count:?} consumers, wanted {wanted}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // ---- worker processes ---------------------------------------------------

    /// Runs the real `studentsync-worker` binary against this app's database and
    /// namespace. Killed when the returned value is dropped.
    pub fn spawn_worker_process(&self) -> WorkerProcess {
        let binary = worker_binary();
        let mut command = tokio::process::Command::new(&binary);
        command
            .envs(&self.env)
            .env_remove("ADMIN_TOKEN")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {}: {error}", binary.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let echo = std::env::var_os("TEST_LOG").is_some();
        let pid = child.id().unwrap_or_default();
        if let Some(stdout) = child.stdout.take() {
            collect_lines(stdout, log.clone(), echo, pid);
        }
        if let Some(stderr) = child.stderr.take() {
            collect_lines(stderr, log.clone(), echo, pid);
        }
        WorkerProcess { child, log }
    }

    // ---- shutdown ---------------------------------------------------------

    /// Stops the API and workers gracefully and returns how each task ended
    /// (name, result), or an error text for a task that did not stop in time.
    pub async fn stop(&mut self) -> Vec<(String, Result<(), String>)> {
        let _ = self.shutdown.send(true);
        let mut outcomes = Vec::new();
        for (name, task) in self.tasks.drain(..) {
            let outcome = match tokio::time::timeout(Duration::from_secs(20), task).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(error))) => Err(format!("returned an error: {error:#}")),
                Ok(Err(join_error)) => Err(format!("panicked or was cancelled: {join_error}")),
                Err(_) => Err("did not stop within 20 s of the shutdown signal".to_string()),
            };
            outcomes.push((name, outcome));
        }
        outcomes
    }

    /// Stops everything and removes the database, queues, exchanges and Redis keys.
    pub async fn cleanup(mut self) {
        let _ = self.stop().await;
        self.pool.close().await;
        remove_external_state(
            self.admin_database_url.clone(),
            self.db_name.clone(),
            self.config.amqp_url.clone(),
            self.config.redis_url.clone(),
            self.topology(),
            self.namespace.clone(),
        )
        .await;
        self.cleaned_up = true;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if self.cleaned_up {
            return;
        }
        // A test that failed (or forgot `cleanup`): stop everything and remove
        // the external state from a separate thread, since Drop cannot await.
        let _ = self.shutdown.send(true);
        for (_, task) in &self.tasks {
            task.abort();
        }
        let args = (
            self.admin_database_url.clone(),
            self.db_name.clone(),
            self.config.amqp_url.clone(),
            self.config.redis_url.clone(),
            self.topology(),
            self.namespace.clone(),
        );
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(remove_external_state(
                args.0, args.1, args.2, args.3, args.4, args.5,
            ));
        });
        let _ = cleaner.join();
    }
}

async fn remove_external_state(
    admin_database_url: String,
    db_name: String,
    amqp_url: String,
    redis_url: String,
    topology: Topology,
    namespace: String,
) {
    let limit = Duration::from_secs(20);
    let database = async {
        let Ok(admin) = PgPool::connect(&admin_database_url).await else {
            return;
        };
        let statement = format!("DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)");
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
        {
            eprintln!("cleanup: drop database {db_name}: {error}");
        }
        admin.close().await;
    };
    let broker = async {
        let Ok(connection) =
            lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default()).await
        else {
            return;
        };
        if let Ok(channel) = connection.create_channel().await
            && let Err(error) = topology.delete(&channel).await
        {
            eprintln!("cleanup: delete topology of {namespace}: {error}");
        }
        let _ = connection.close(0, "".into()).await;
    };
    let redis_keys = async {
        if let Err(error) = delete_redis_keys(&redis_url, &namespace).await {
            eprintln!("cleanup: redis keys of {namespace}: {error}");
        }
    };
    let _ = tokio::time::timeout(limit, async {
        tokio::join!(database, broker, redis_keys);
    })
    .await;
}

async fn delete_redis_keys(redis_url: &str, namespace: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{namespace}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The worker binary: `$STUDENTSYNC_WORKER_BIN`, else `target/debug` of this
/// workspace (or of `$CARGO_TARGET_DIR`).
pub fn worker_binary() -> std::path::PathBuf {
    workspace_binary("STUDENTSYNC_WORKER_BIN", "studentsync-worker")
}

/// `$variable`, else the debug build of `name` in this workspace's target
/// directory (or `$CARGO_TARGET_DIR`); asserted to exist.
pub fn workspace_binary(variable: &str, name: &str) -> std::path::PathBuf {
    let path = std::env::var_os(variable)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
            target.join("debug").join(name)
        });
    assert!(
        path.exists(),
        "{name} binary {} not found: run `cargo build --bins` first or set {variable}",
        path.display()
    );
    path
}

fn collect_lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<String>>,
    echo: bool,
    pid: u32,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("[worker {pid}] {line}");
            }
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// A `studentsync-worker` process (killed on drop).
pub struct WorkerProcess {
    pub child: tokio::process::Child,
    log: Arc<Mutex<String>>,
}

impl WorkerProcess {
    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

// ---- replies and assertions ---------------------------------------------------

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The JSON body, or `Value::String(text)` when it is not JSON.
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    }

    pub fn content_type(&self) -> String {
        self.header("content-type").unwrap_or_default()
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("request sent");
    read(response).await
}

pub async fn read(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("response body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        headers,
        body,
    }
}

/// Asserts an RFC 9457 problem with this status and code; returns the body.
#[track_caller]
pub fn assert_problem(reply: &Reply, status: StatusCode, code: &str) -> Value {
    assert_eq!(
        reply.status, status,
        "expected {status} {code}, got {}: {}",
        reply.status, reply.body
    );
    assert!(
        reply.content_type().starts_with("application/problem+json"),
        "content type of a problem: {:?} ({})",
        reply.content_type(),
        reply.body
    );
    let body = &reply.body;
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["type"].is_string(), "problem has a type: {body}");
    assert!(body["title"].is_string(), "problem has a title: {body}");
    assert!(body["detail"].is_string(), "problem has a detail: {body}");
    if let Some(errors) = body.get("errors") {
        for error in errors.as_array().expect("errors is an array") {
            assert!(error["code"].is_string(), "{body}");
            assert!(error["pointer"].is_string(), "{body}");
            assert!(error["detail"].is_string(), "{body}");
        }
    }
    body.clone()
}

/// (code, pointer) of every error of a problem or an item result.
pub fn error_pairs(value: &Value) -> Vec<(String, String)> {
    value["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    assert!(
                        error["detail"].as_str().is_some_and(|d| !d.is_empty()),
                        "every error has a detail: {error}"
                    );
                    (
                        error["code"].as_str().unwrap_or_default().to_string(),
                        error["pointer"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that a job body has one result per input, sorted by `inputIndex`,
/// and a summary that matches them; returns the results.
#[track_caller]
pub fn results_of(job: &Value) -> Vec<Value> {
    let results = job["results"].as_array().expect("results").clone();
    let summary = &job["summary"];
    assert_eq!(summary["total"], results.len(), "{summary}");
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["inputIndex"], index, "results sorted by inputIndex");
    }
    let count = |status: &str| results.iter().filter(|r| r["status"] == status).count();
    for status in ["created", "updated", "unchanged", "failed"] {
        assert_eq!(
            summary[status],
            count(status),
            "summary.{status}: {summary}"
        );
    }
    results
}

/// Asserts that result `index` failed with exactly these (code, pointer) errors
/// (in any order).
#[track_caller]
pub fn assert_item_errors(job: &Value, index: usize, expected: &[(&str, &str)]) {
    let result = &job["results"][index];
    assert_eq!(result["status"], "failed", "item {index}: {result}");
    let mut actual = error_pairs(result);
    actual.sort();
    let mut wanted: Vec<(String, String)> = expected
        .iter()
        .map(|(code, pointer)| (code.to_string(), pointer.to_string()))
        .collect();
    wanted.sort();
    assert_eq!(actual, wanted, "errors of item {index}: {result}");
}

/// `changedFields` of a result as a sorted list.
pub fn changed_fields(result: &Value) -> Vec<String> {
    let mut fields: Vec<String> = result["changedFields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .map(|field| field.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    fields.sort();
    fields
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Asserts the list has no duplicates.
#[track_caller]
pub fn assert_distinct(values: &[String]) {
    let set: HashSet<&String> = values.iter().collect();
    assert_eq!(set.len(), values.len(), "duplicates in {values:?}");
}
