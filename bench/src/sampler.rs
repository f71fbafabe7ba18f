//! Once-a-second samples of a process under load: its resident memory (`VmRSS`, `VmHWM`),
//! its CPU time, the machine's CPU use, and the Kafka consumer lag of its group (high
//! watermarks minus committed offsets, summed over the topic's partitions).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub at_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// CPU seconds (user and system) the process has used since it started.
    pub process_cpu_s: f64,
    /// Share of the machine's CPU time that was busy since the previous sample, 0..=1.
    pub machine_busy: f64,
    /// Records not yet committed by the group; `None` when Kafka timed out.
    pub lag: Option<i64>,
}

/// A running sampler; [`Sampler::stop`] returns the samples.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

/// Process, topic and consumer group to sample.
pub struct Target {
    pub pid: u32,
    pub brokers: String,
    pub topic: String,
    pub partitions: i32,
    pub group: String,
}

impl Sampler {
    pub fn start(target: Target, interval: Duration) -> anyhow::Result<Sampler> {
        // A consumer that never subscribes does not join the group; it only reads the
        // group's committed offsets.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &target.brokers)
            .set("group.id", &target.group)
            .set("enable.auto.commit", "false")
            .create()?;
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let samples = samples.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut machine_before = machine_ticks();
                while !stop.load(Ordering::Relaxed) {
                    let machine_now = machine_ticks();
                    let busy = busy_share(machine_before, machine_now);
                    machine_before = machine_now;
                    let (rss_kib, hwm_kib) = memory_kib(target.pid);
                    let sample = Sample {
                        at_s: started.elapsed().as_secs_f64(),
                        rss_kib,
                        hwm_kib,
                        process_cpu_s: process_cpu_s(target.pid),
                        machine_busy: busy,
                        lag: lag(&consumer, &target),
                    };
                    samples.lock().expect("sampler lock").push(sample);
                    let next = started + interval.mul_f64(samples_len(&samples) as f64);
                    while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        };
        Ok(Sampler {
            stop,
            samples,
            thread: Some(thread),
        })
    }

    /// Returns the samples taken so far.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().expect("sampler lock").clone()
    }

    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.snapshot()
    }
}

fn samples_len(samples: &Mutex<Vec<Sample>>) -> usize {
    samples.lock().expect("sampler lock").len()
}

/// Reads `VmRSS` and `VmHWM` of a process, in KiB; zeros once the process is gone.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Returns the user plus system CPU seconds of a process; 0 once it is gone.
pub fn process_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name in brackets may contain spaces, so fields are counted after it.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), the 12th and 13th after the name.
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / clock_ticks_per_s()
}

/// Returns the kernel's clock ticks per second (`getconf CLK_TCK`), 100 when unknown.
fn clock_ticks_per_s() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Returns the machine's (busy, total) CPU ticks from the first line of /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn busy_share(before: (u64, u64), now: (u64, u64)) -> f64 {
    let total = now.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    now.0.saturating_sub(before.0) as f64 / total as f64
}

fn lag(consumer: &BaseConsumer, target: &Target) -> Option<i64> {
    let timeout = Duration::from_millis(500);
    let mut partitions = TopicPartitionList::new();
    for partition in 0..target.partitions {
        partitions.add_partition(&target.topic, partition);
    }
    let committed = consumer.committed_offsets(partitions, timeout).ok()?;
    let mut total = 0;
    for partition in 0..target.partitions {
        let (low, high) = consumer
            .fetch_watermarks(&target.topic, partition, timeout)
            .ok()?;
        let done = match committed
            .find_partition(&target.topic, partition)
            .map(|element| element.offset())
        {
            Some(Offset::Offset(offset)) => offset,
            _ => low,
        };
        total += (high - done).max(0);
    }
    Some(total)
}
