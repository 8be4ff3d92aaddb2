//! Resident memory of the stack's processes, sampled from /proc while the
//! benchmark runs: the whole series is kept (a few thousand points), so the
//! report can compare windows of it (is RSS flat over a soak?). Also the CPU
//! time each process spent, for CPU cost per student.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `(seconds since sampling started, RSS in MiB)` per process name.
pub type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// The series being filled, and the instant they count from.
#[derive(Clone)]
pub struct Samples {
    series: Arc<Mutex<Series>>,
    pub started: Instant,
}

impl Samples {
    /// A copy of the series so far.
    pub fn snapshot(&self) -> Series {
        self.series.lock().expect("samples lock").clone()
    }

    /// Seconds since sampling started.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Current resident set size of `pid` in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system) `pid` has used so far, in seconds (USER_HZ = 100,
/// as on every Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Processes whose command name is one of `names`.
pub fn pids_named(names: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| names.contains(&comm.trim()))
        })
        .collect()
}

/// Samples every `period` until the returned handle is aborted.
pub fn sample(
    pids: Vec<(String, u32)>,
    period: Duration,
) -> (Samples, tokio::task::JoinHandle<()>) {
    let samples = Samples {
        series: Arc::default(),
        started: Instant::now(),
    };
    let writer = samples.clone();
    let handle = tokio::spawn(async move {
        loop {
            let at = writer.now();
            for (name, pid) in &pids {
                if let Some(now) = rss_mib(*pid) {
                    let mut map = writer.series.lock().expect("samples lock");
                    map.entry(name.clone()).or_default().push((at, now));
                }
            }
            tokio::time::sleep(period).await;
        }
    });
    (samples, handle)
}

/// Peak of the samples taken in `[from, to)` seconds (`None`: no sample there).
pub fn peak_between(points: &[(f64, f64)], from: f64, to: f64) -> Option<f64> {
    points
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, mib)| *mib)
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_reads() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn peaks_of_windows() {
        let points = [(0.0, 10.0), (30.0, 12.0), (70.0, 11.0), (100.0, 15.0)];
        assert_eq!(peak_between(&points, 0.0, 60.0), Some(12.0));
        assert_eq!(peak_between(&points, 60.0, 200.0), Some(15.0));
        assert_eq!(peak_between(&points, 200.0, 300.0), None);
    }
}
