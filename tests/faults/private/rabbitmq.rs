//! A private RabbitMQ node (own node name, AMQP and distribution ports, config,
//! data and log directories) that a test can stop and start again with its data,
//! or put under a memory alarm. Needs the server scripts of the Debian package
//! (`/usr/lib/rabbitmq/bin`, or `$RABBITMQ_BIN_DIR`); the node shares the
//! machine's epmd.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{find_program, free_port, remove_dir, run, scratch_dir, wait_for_port};

pub struct PrivateRabbitMq {
    dir: PathBuf,
    bin_dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    server: Option<Child>,
}

impl PrivateRabbitMq {
    /// Boots a fresh node and waits until it accepts AMQP connections.
    pub fn start() -> Self {
        let mut candidates = Vec::new();
        if let Some(dir) = std::env::var_os("RABBITMQ_BIN_DIR") {
            candidates.push(PathBuf::from(dir));
        }
        candidates.push(PathBuf::from("/usr/lib/rabbitmq/bin"));
        let server = find_program("rabbitmq-server", &candidates);
        let bin_dir = server.parent().expect("a directory").to_path_buf();
        let dir = scratch_dir("studentsync-rabbitmq");
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        let mut node = Self {
            node: format!("ss{}@localhost", uuid::Uuid::new_v4().simple()),
            dir,
            bin_dir,
            port,
            dist_port,
            server: None,
        };
        node.boot();
        node
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// A command of the server's scripts, set up for this node.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        let dir = &self.dir;
        command
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null());
        command
    }

    /// Starts the node on its data directory (what it had before a stop is kept).
    pub fn boot(&mut self) {
        assert!(self.server.is_none(), "the node already runs");
        let log = std::fs::File::create(self.dir.join("server.out")).unwrap();
        let child = self
            .command("rabbitmq-server")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn rabbitmq-server");
        self.server = Some(child);
        wait_for_port(
            self.port,
            Duration::from_secs(90),
            "the private RabbitMQ node",
        );
    }

    /// Stops the node (as `rabbitmqctl stop` does: the broker and its VM).
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let stopped = self
            .command("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output()
            .is_ok_and(|output| output.status.success());
        if !stopped {
            let _ = server.kill();
        }
        let _ = server.wait();
    }

    /// Raises (or clears) a memory alarm: while it holds, the broker blocks
    /// every publishing connection.
    pub fn memory_alarm(&self, raised: bool) {
        let watermark: &[&str] = if raised { &["absolute", "1"] } else { &["0.4"] };
        run(self
            .command("rabbitmqctl")
            .args(["-n", &self.node, "set_vm_memory_high_watermark"])
            .args(watermark));
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        self.stop();
        remove_dir(&self.dir);
    }
}
