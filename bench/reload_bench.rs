//! Reload benchmark: preforkd's demo under load while it is reloaded many times; prints the
//! requests served, every failure, and how long each reload took (SIGHUP to READY=1).
//!
//! Run through `bench/reload` (builds in release mode first). Options:
//! `--reloads N` (100), `--workers N` (2), `--keep-alive N` (8), `--one-shot N` (8).

#[path = "../tests/common/load.rs"]
mod load;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reloads = arg(&args, "--reloads", 100);
    let workers = arg(&args, "--workers", 2);
    let keep_alive = arg(&args, "--keep-alive", 8);
    let one_shot = arg(&args, "--one-shot", 8);
    let bin = std::env::var("PREFORKD").unwrap_or_else(|_| "target/release/preforkd".into());

    let dir = tempfile::tempdir().expect("temp dir");
    let notify_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&notify_path).expect("notify socket");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(&bin)
        .args(["demo", "--workers", &workers.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--runtime-dir", dir.path().join("run").to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("RUNTIME_DIRECTORY")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let pid = child.id() as i32;

    let wait_ready = |limit: Duration| -> Option<Instant> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            systemd.set_read_timeout(Some(left)).ok()?;
            let n = systemd.recv(&mut buf).ok()?;
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return Some(Instant::now());
            }
        }
    };
    wait_ready(Duration::from_secs(30)).expect("preforkd became ready");

    println!(
        "reload benchmark: {reloads} reloads, {workers} workers, {keep_alive} keep-alive + {one_shot} one-shot clients"
    );
    let started = Instant::now();
    let load = load::Load::start(port, keep_alive, one_shot, "/");
    std::thread::sleep(Duration::from_millis(500));
    let mut durations = Vec::with_capacity(reloads);
    for _ in 0..reloads {
        let t0 = Instant::now();
        // SAFETY: kill(2) on the preforkd this benchmark started.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        match wait_ready(Duration::from_secs(60)) {
            Some(t) => durations.push(t - t0),
            None => {
                eprintln!("a reload did not finish within 60 s");
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let elapsed = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = child.wait();

    durations.sort();
    let pct = |p: f64| durations[((durations.len() - 1) as f64 * p).round() as usize];
    println!("requests        {}", report.requests);
    println!("failures        {}", report.failures);
    for e in &report.examples {
        println!("  {e}");
    }
    println!(
        "requests/s      {:.0}",
        report.requests as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency         p50 {:.2} ms, p99 {:.2} ms",
        report.percentile_us(0.50) as f64 / 1000.0,
        report.percentile_us(0.99) as f64 / 1000.0
    );
    if !durations.is_empty() {
        println!(
            "reload duration p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} reloads)",
            pct(0.50).as_secs_f64() * 1000.0,
            pct(0.99).as_secs_f64() * 1000.0,
            durations[durations.len() - 1].as_secs_f64() * 1000.0,
            durations.len()
        );
    }
    if report.failures > 0 || durations.len() < reloads {
        std::process::exit(1);
    }
}
