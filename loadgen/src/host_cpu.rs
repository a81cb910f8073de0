//! How busy this machine's CPUs were over a stretch of a run, from `/proc/stat` (Linux): where
//! the stack runs on the same machine as the load (`make demo`, `make bench-time-to-play`),
//! it tells a latency bounded by the CPU from one spent waiting. It counts every process on
//! the machine, the load generator's own clients included.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The machine's CPU time so far, in clock ticks summed over its CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks {
    pub total: u64,
    /// Idle and waiting for I/O.
    pub idle: u64,
    /// CPUs listed (`cpuN` lines).
    pub cpus: usize,
}

impl Ticks {
    /// Now, where `/proc/stat` can be read.
    pub fn now() -> Option<Ticks> {
        Ticks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From `/proc/stat`'s text: its `cpu` line (user nice system idle iowait irq softirq
    /// steal; guest time is counted in user already) and its `cpuN` lines.
    pub fn parse(stat: &str) -> Option<Ticks> {
        let line = stat.lines().find_map(|l| l.strip_prefix("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        if fields.len() < 5 {
            return None;
        }
        let cpus = stat
            .lines()
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count();
        Some(Ticks {
            total: fields.iter().sum(),
            idle: fields[3] + fields[4],
            cpus: cpus.max(1),
        })
    }
}

/// How busy the CPUs were over a stretch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Busy {
    /// CPUs on the machine.
    pub cpus: usize,
    /// The stretch measured.
    pub seconds: f64,
    /// The share of all the CPUs' time in it not idle, from 0 to 1 (time the hypervisor gave
    /// to others counts as busy: this machine could not use it).
    pub busy: f64,
}

impl Busy {
    /// Between two readings `seconds` apart; `None` when no tick passed between them.
    pub fn between(from: Ticks, to: Ticks, seconds: f64) -> Option<Busy> {
        let total = to.total.checked_sub(from.total).filter(|t| *t > 0)?;
        let idle = to.idle.saturating_sub(from.idle).min(total);
        Some(Busy {
            cpus: to.cpus,
            seconds,
            busy: (total - idle) as f64 / total as f64,
        })
    }

    /// As said in a summary: "97% busy over 0.43 s, 2 CPUs".
    pub fn describe(&self) -> String {
        format!(
            "{:.0}% busy over {:.2} s, {} CPU{}",
            self.busy * 100.0,
            self.seconds,
            self.cpus,
            if self.cpus == 1 { "" } else { "s" }
        )
    }
}

/// Readings taken every few milliseconds on a thread of their own (so a busy async runtime
/// does not delay them), until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, Ticks)>>,
}

impl Sampler {
    /// Starts reading now; `None` where `/proc/stat` cannot be read.
    pub fn start(every: Duration) -> Option<Sampler> {
        let first = Ticks::now()?;
        let began = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut samples = vec![(began, first)];
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    if let Some(ticks) = Ticks::now() {
                        samples.push((Instant::now(), ticks));
                    }
                }
                samples
            }
        });
        Some(Sampler { stop, thread })
    }

    /// Stops reading and returns the readings, oldest first.
    pub fn stop(self) -> Vec<(Instant, Ticks)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// How busy the CPUs were from the first reading to the first one taken at or after `until`
/// (the last, if none was).
pub fn busy_until(samples: &[(Instant, Ticks)], until: Instant) -> Option<Busy> {
    let (start, from) = *samples.first()?;
    let (end, to) = *samples.iter().find(|(at, _)| *at >= until).or(samples.last())?;
    Busy::between(from, to, end.duration_since(start).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 20 0 10 15 0 0\ncpu0 50 2 25 400 10 0 5 8 0 0\ncpu1 50 3 25 400 10 0 5 7 0 0\nintr 1 2 3\nctxt 99\ncpu_extra 1\n";

    #[test]
    fn the_cpu_line_gives_total_idle_and_the_cpus_are_counted() {
        let t = Ticks::parse(STAT).unwrap();
        assert_eq!(t.total, 100 + 5 + 50 + 800 + 20 + 10 + 15);
        assert_eq!(t.idle, 820);
        assert_eq!(t.cpus, 2);
        assert_eq!(Ticks::parse("intr 1 2\n"), None);
        assert_eq!(Ticks::parse("cpu  1 2 x 4 5\n"), None);
        assert_eq!(Ticks::parse("cpu  1 2 3\n"), None);
    }

    #[test]
    fn busy_is_the_share_not_idle_up_to_the_reading_after_until() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ticks = |total, idle| Ticks { total, idle, cpus: 2 };
        let samples = [
            (at(0), ticks(1_000, 500)),
            (at(10), ticks(1_002, 500)),
            (at(20), ticks(1_004, 500)),
            (at(30), ticks(1_006, 501)),
            (at(40), ticks(1_008, 503)),
        ];
        // Until 15 ms: the reading at 20 ms closes the stretch, every tick busy.
        let b = busy_until(&samples, at(15)).unwrap();
        assert_eq!((b.busy, b.cpus), (1.0, 2));
        assert!((b.seconds - 0.020).abs() < 1e-9, "{b:?}");
        // Until 40 ms: 8 ticks, 3 idle.
        assert_eq!(busy_until(&samples, at(40)).unwrap().busy, 5.0 / 8.0);
        // Past the last reading: the last one.
        assert_eq!(busy_until(&samples, at(90)).unwrap().busy, 5.0 / 8.0);
        // No tick in between: nothing to say.
        assert_eq!(busy_until(&samples[..1], at(5)), None);
        assert_eq!(busy_until(&[], at(5)), None);
        assert_eq!(
            Busy {
                cpus: 2,
                seconds: 0.431,
                busy: 0.974
            }
            .describe(),
            "97% busy over 0.43 s, 2 CPUs"
        );
    }

    #[test]
    fn a_sampler_reads_this_machine_until_stopped() {
        let sampler = Sampler::start(Duration::from_millis(5)).expect("/proc/stat is readable on Linux");
        // Spin, so ticks pass and some are busy.
        let began = Instant::now();
        let mut x = 0u64;
        while began.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let samples = sampler.stop();
        assert!(x > 0 && samples.len() >= 3, "{} readings", samples.len());
        assert!(
            samples
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1.total <= w[1].1.total)
        );
        let busy = busy_until(&samples, Instant::now()).expect("ticks passed");
        assert!(busy.busy > 0.0 && busy.busy <= 1.0, "{busy:?}");
        assert_eq!(busy.cpus, Ticks::now().unwrap().cpus);
    }
}
