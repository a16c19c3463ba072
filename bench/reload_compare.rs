//! Reloads any server under load and counts exactly what its clients saw.
//!
//! `reload-compare --port P --reload 'COMMAND' [--reloads N] [--keep-alive K] [--one-shot C]
//! [--settle SECS]` puts 127.0.0.1:P under load (tests/common/load.rs: no retries; refused,
//! reset, short, non-200 and timed-out requests are failures), runs COMMAND with `sh -c` N
//! times, each to its end, and prints one line of `key=value` figures: requests, failures,
//! reload seconds (median and max), latency p50/p99 over the whole run, p99 and max of the
//! requests in flight during the reloads, and requests per second before, during and after
//! the reloads. bench/run calls it for each peer.

#[path = "../tests/common/load.rs"]
mod load;

use std::process::Command;
use std::time::{Duration, Instant};

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn num(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = arg(&args, "--port")
        .and_then(|p| p.parse().ok())
        .expect("--port");
    let reload = arg(&args, "--reload").expect("--reload").to_owned();
    let reloads = num(&args, "--reloads", 10);
    let keep_alive = num(&args, "--keep-alive", 4);
    let one_shot = num(&args, "--one-shot", 4);
    let settle = Duration::from_secs(num(&args, "--settle", 2) as u64);

    let count = |load: &load::Load| load.completed();
    let load = load::Load::start(port, keep_alive, one_shot, "/");
    std::thread::sleep(settle);
    let before_start = count(&load);
    std::thread::sleep(settle);
    let before = (count(&load) - before_start) as f64 / settle.as_secs_f64();

    // Sample the answered count every 10 ms: the longest stretch without one answer is how
    // long the service was down.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = std::sync::Arc::clone(&sampling);
        let done = load.counter();
        std::thread::spawn(move || {
            let mut last = done.load(std::sync::atomic::Ordering::Relaxed);
            let mut since = Instant::now();
            let mut longest = Duration::ZERO;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                let now = done.load(std::sync::atomic::Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                }
                longest = longest.max(since.elapsed());
            }
            longest
        })
    };
    let started = Instant::now();
    let window_from = load.now_us();
    let at_start = count(&load);
    let mut durations = Vec::with_capacity(reloads);
    let mut failed_reloads = 0;
    for _ in 0..reloads {
        let t0 = Instant::now();
        let ok = Command::new("sh")
            .args(["-c", &reload])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            failed_reloads += 1;
        }
        durations.push(t0.elapsed());
    }
    let window = started.elapsed();
    let window_to = load.now_us();
    // The service must come back (or never have left) within the settle time to count.
    let during = (count(&load) - at_start) as f64 / window.as_secs_f64();

    let after_start = count(&load);
    std::thread::sleep(settle);
    let after = (count(&load) - after_start) as f64 / settle.as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let outage = sampler.join().unwrap_or_default();
    let report = load.stop();

    durations.sort();
    let median = match durations.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => durations[n / 2],
        n => (durations[n / 2 - 1] + durations[n / 2]) / 2,
    };
    let max = durations.last().copied().unwrap_or_default();
    let p50 = report.percentile_us(0.50) as f64 / 1000.0;
    let p99 = report.percentile_us(0.99) as f64 / 1000.0;
    let (window_p99, window_max) = report.window_us(window_from, window_to, 0.99);
    println!(
        "requests={} failures={} reload_cmd_failures={} reload_s_median={:.2} reload_s_max={:.2} p50_ms={:.2} p99_ms={:.2} window_p99_ms={:.2} window_max_ms={:.2} rps_before={:.0} rps_during={:.0} rps_after={:.0} longest_outage_s={:.2}",
        report.requests,
        report.failures,
        failed_reloads,
        median.as_secs_f64(),
        max.as_secs_f64(),
        p50,
        p99,
        window_p99 as f64 / 1000.0,
        window_max as f64 / 1000.0,
        before,
        during,
        after,
        outage.as_secs_f64(),
    );
    for e in report.examples.iter().take(3) {
        eprintln!("  failure: {e}");
    }
}
