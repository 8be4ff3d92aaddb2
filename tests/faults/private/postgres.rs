//! A private Postgres cluster (initdb into a scratch directory, its own port
//! and socket directory) that a test can stop in immediate mode — a crash, as
//! far as the clients can tell — and start again (crash recovery on the same
//! data). Runs the server binaries of the machine's Postgres (`$PG_BIN_DIR`, else
//! the newest `/usr/lib/postgresql/*/bin`), as the `postgres` user when the tests
//! run as root (Postgres refuses to run as root).

use std::path::PathBuf;
use std::process::Command;

use super::{find_program, free_port, remove_dir, run, scratch_dir};

pub struct PrivatePostgres {
    dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
    running: bool,
}

impl PrivatePostgres {
    /// Creates the cluster and starts it.
    pub fn start() -> Self {
        let bin_dir = find_program("pg_ctl", &candidate_bin_dirs())
            .parent()
            .expect("a directory")
            .to_path_buf();
        let as_postgres_user = run(Command::new("id").arg("-u")).trim() == "0";
        let dir = scratch_dir("studentsync-postgres");
        if as_postgres_user {
            run(Command::new("chown").arg("postgres:").arg(&dir));
        }
        let mut cluster = Self {
            dir,
            bin_dir,
            port: free_port(),
            as_postgres_user,
            running: false,
        };
        let data = cluster.data_dir();
        run(cluster
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data));
        cluster.boot();
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let binary = self.bin_dir.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(binary);
            command
        } else {
            Command::new(binary)
        }
    }

    /// Starts the server and waits until it accepts connections.
    pub fn boot(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            self.port,
            self.dir.display()
        );
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]));
        self.running = true;
    }

    /// Stops the server in immediate mode: every backend is killed at once,
    /// nothing is shut down cleanly, the next start runs crash recovery.
    pub fn stop_immediately(&mut self) {
        run(self.command("pg_ctl").arg("-D").arg(self.data_dir()).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
        self.running = false;
    }
}

fn candidate_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    dirs
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        remove_dir(&self.dir);
    }
}
