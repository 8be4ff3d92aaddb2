//! Resident memory of the stack's processes, sampled from /proc while the
//! benchmark runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Peak and last RSS (MiB) per process name.
pub type Samples = Arc<Mutex<BTreeMap<String, (f64, f64)>>>;

/// Current resident set size of `pid` in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Samples every `period` until the returned handle is aborted.
pub fn sample(
    pids: Vec<(String, u32)>,
    period: Duration,
) -> (Samples, tokio::task::JoinHandle<()>) {
    let samples: Samples = Arc::default();
    let writer = samples.clone();
    let handle = tokio::spawn(async move {
        loop {
            for (name, pid) in &pids {
                if let Some(now) = rss_mib(*pid) {
                    let mut map = writer.lock().expect("samples lock");
                    let entry = map.entry(name.clone()).or_insert((0.0, 0.0));
                    entry.0 = entry.0.max(now);
                    entry.1 = now;
                }
            }
            tokio::time::sleep(period).await;
        }
    });
    (samples, handle)
}
