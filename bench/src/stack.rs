//! Starts a private stack for one benchmark run — a fresh database, a fresh
//! namespace, the release API and N worker processes — and tears it down after.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use studentsync::queue::Topology;
use uuid::Uuid;

/// A running stack and how to reach it.
pub struct Stack {
    pub base_url: String,
    pub api_key: String,
    pub school_id: Uuid,
    pub database_url: String,
    pub api: Child,
    pub workers: Vec<Child>,
    namespace: String,
    admin_database_url: String,
    database_name: String,
    amqp_url: String,
    redis_url: String,
}

/// Where the services are (the same variables as the binaries).
pub struct Services {
    pub postgres: String,
    pub amqp_url: String,
    pub redis_url: String,
}

impl Services {
    pub fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Self {
            postgres: var("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
            amqp_url: var("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Stack {
    pub async fn start(
        bin_dir: &Path,
        services: &Services,
        workers: usize,
        worker_env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let id = Uuid::new_v4().simple().to_string();
        let database_name = format!("ss_bench_{id}");
        let database_url = format!("{}/{database_name}", services.postgres);
        let namespace = format!("bench{}", &id[..12]);
        let admin_token = Uuid::new_v4().to_string();
        let port = free_port()?;
        let env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database_url.clone()),
            ("AMQP_URL".into(), services.amqp_url.clone()),
            ("REDIS_URL".into(), services.redis_url.clone()),
            ("STUDENTSYNC_NAMESPACE".into(), namespace.clone()),
            ("ADMIN_TOKEN".into(), admin_token.clone()),
            ("BIND_ADDR".into(), format!("127.0.0.1:{port}")),
            ("RATE_LIMIT_PER_MINUTE".into(), "10000000".into()),
            ("RATE_LIMIT_BURST".into(), "1000000".into()),
            // The bench measures throughput, not the per-school budget.
            ("SCHOOL_STUDENTS_PER_MINUTE".into(), "1000000000".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        let binary = |name: &str| -> PathBuf { bin_dir.join(name) };
        let status = Command::new(binary("studentsync-api"))
            .arg("migrate")
            .envs(env.iter().cloned())
            .status()
            .with_context(|| {
                format!(
                    "run {} (build with `cargo build --release --workspace --bins`)",
                    binary("studentsync-api").display()
                )
            })?;
        anyhow::ensure!(status.success(), "migrate failed");
        let spawn = |name: &str, extra: &[(String, String)]| -> anyhow::Result<Child> {
            Command::new(binary(name))
                .envs(env.iter().cloned())
                .envs(extra.iter().cloned())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("spawn {name}"))
        };
        let api = spawn("studentsync-api", &[])?;
        let workers = (0..workers)
            .map(|_| spawn("studentsync-worker", worker_env))
            .collect::<anyhow::Result<Vec<_>>>()?;

        let base_url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client.get(format!("{base_url}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "API not ready after 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let school: Value = client
            .post(format!("{base_url}/v3/admin/schools"))
            .bearer_auth(&admin_token)
            .json(&serde_json::json!({"name": "Benchmark School"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(Self {
            base_url,
            api_key: school["apiKey"].as_str().context("apiKey")?.to_string(),
            school_id: school["schoolId"].as_str().context("schoolId")?.parse()?,
            database_url,
            api,
            workers,
            namespace,
            admin_database_url: format!("{}/postgres", services.postgres),
            database_name,
            amqp_url: services.amqp_url.clone(),
            redis_url: services.redis_url.clone(),
        })
    }

    /// Process ids: the API first, then the workers.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut pids = vec![("api".to_string(), self.api.id())];
        for (index, worker) in self.workers.iter().enumerate() {
            pids.push((format!("worker-{}", index + 1), worker.id()));
        }
        pids
    }

    /// Deletes the cached job bodies of this run's namespace from Redis.
    pub async fn clear_cached_jobs(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:job:*", self.namespace))
            .query_async(&mut redis)
            .await?;
        for chunk in keys.chunks(1000) {
            let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut redis).await?;
        }
        Ok(())
    }

    /// Stops the processes and removes the database, queues and Redis keys.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for child in std::iter::once(&mut self.api).chain(self.workers.iter_mut()) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in std::iter::once(&mut self.api).chain(self.workers.iter_mut()) {
            let _ = child.wait();
        }
        let mut admin = sqlx::PgPool::connect(&self.admin_database_url).await?;
        let statement = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database_name
        );
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await?;
        admin.close().await;
        admin = sqlx::PgPool::connect_lazy(&self.admin_database_url)?;
        drop(admin);

        let connection = studentsync::queue::connect(&self.amqp_url, "bench-cleanup").await?;
        let channel = connection.create_channel().await?;
        Topology::new(&self.namespace, 0, 0)
            .delete(&channel)
            .await?;
        let _ = connection.close(200, "bye".into()).await;

        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.namespace))
            .query_async(&mut redis)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut redis).await?;
        }
        Ok(())
    }
}
