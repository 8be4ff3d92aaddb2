//! Progress on stderr: rows done of total, rate, ETA and failures so far — an
//! indicatif bar on a terminal, plain periodic lines otherwise (logs, CI, pipes).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    failed: AtomicU64,
}

enum Display {
    Bar(ProgressBar),
    Lines(JoinHandle<()>),
}

/// The progress of one import. Must be created inside the tokio runtime.
pub struct Progress {
    display: Display,
    counts: Arc<Counts>,
    total: u64,
    started: Instant,
}

impl Progress {
    /// A bar when stderr is a terminal, else a line every `every`.
    pub fn start(total: u64, every: Duration) -> Self {
        let counts = Arc::new(Counts::default());
        let started = Instant::now();
        let display = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} rows · {rate} · ETA {eta} · {msg}",
            )
            .expect("a valid template")
            .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0} rows/s", state.per_sec());
            })
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message("0 failed");
            bar.enable_steady_tick(Duration::from_millis(200));
            Display::Bar(bar)
        } else {
            let counts = counts.clone();
            let every = every.max(Duration::from_millis(100));
            Display::Lines(tokio::spawn(async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    ticks.tick().await;
                    eprintln!("{}", line(total, &counts, started.elapsed()));
                }
            }))
        };
        Self {
            display,
            counts,
            total,
            started,
        }
    }

    /// `rows` more rows are done, `failed` of them failed.
    pub fn advance(&self, rows: u64, failed: u64) {
        self.counts.done.fetch_add(rows, Ordering::Relaxed);
        let failed = self.counts.failed.fetch_add(failed, Ordering::Relaxed) + failed;
        if let Display::Bar(bar) = &self.display {
            bar.inc(rows);
            bar.set_message(format!("{failed} failed"));
        }
    }

    /// Stops the display, leaving a last line with the final figures.
    pub fn finish(self) {
        match self.display {
            Display::Bar(bar) => bar.finish_and_clear(),
            Display::Lines(ticker) => ticker.abort(),
        }
        eprintln!("{}", line(self.total, &self.counts, self.started.elapsed()));
    }
}

/// `import: 1200/5000 rows (24%), 800 rows/s, ETA 5s, 3 failed`.
fn line(total: u64, counts: &Counts, elapsed: Duration) -> String {
    let done = counts.done.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    let percent = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let eta = if done >= total {
        "0s".to_string()
    } else if rate > 0.0 {
        human_duration(Duration::from_secs_f64((total - done) as f64 / rate))
    } else {
        "unknown".to_string()
    };
    format!(
        "import: {done}/{total} rows ({percent:.0}%), {rate:.0} rows/s, ETA {eta}, {failed} failed"
    )
}

/// `1h02m`, `3m25s`, `7s`.
fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_has_counts_rate_eta_and_failures() {
        let counts = Counts::default();
        counts.done.store(1200, Ordering::Relaxed);
        counts.failed.store(3, Ordering::Relaxed);
        assert_eq!(
            line(5000, &counts, Duration::from_secs(2)),
            "import: 1200/5000 rows (24%), 600 rows/s, ETA 6s, 3 failed"
        );
        counts.done.store(5000, Ordering::Relaxed);
        assert!(line(5000, &counts, Duration::from_secs(2)).contains("ETA 0s"));
        assert!(line(0, &Counts::default(), Duration::ZERO).contains("0/0 rows (100%)"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(7)), "7s");
        assert_eq!(human_duration(Duration::from_secs(205)), "3m25s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
    }
}
