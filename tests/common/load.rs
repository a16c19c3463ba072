//! A bounded HTTP load client that counts every failure: refused or reset connections, short or
//! non-200 answers, timeouts. Used by the reload tests and by bench/.
//!
//! Keep-alive clients reuse their connection until the server answers `Connection: close`, as a
//! well-behaved HTTP client does, and never retry: a request that fails is a failure.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub failures: u64,
    /// The first few failures, described.
    pub examples: Vec<String>,
    /// Latency of every successful request, in microseconds.
    pub latencies_us: Vec<u64>,
    /// When each of those requests ended, in microseconds since the load started (same order).
    pub finished_us: Vec<u64>,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.requests += other.requests;
        self.failures += other.failures;
        for e in other.examples {
            if self.examples.len() < 10 {
                self.examples.push(e);
            }
        }
        self.latencies_us.extend(other.latencies_us);
        self.finished_us.extend(other.finished_us);
    }

    /// Asserts that no request failed; `log` (preforkd's) is printed if one did.
    pub fn assert_none_failed(&self, log: &str) {
        assert_eq!(
            self.failures, 0,
            "{} of {} requests failed: {:?}\n{log}",
            self.failures, self.requests, self.examples
        );
    }

    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }

    /// The p-quantile and the maximum latency of the requests in flight at any time within
    /// [from, to) (microseconds since the load started): what clients saw during a window,
    /// including a request that waited through it and was answered just after.
    pub fn window_us(&self, from: u64, to: u64, p: f64) -> (u64, u64) {
        let mut inside: Vec<u64> = self
            .finished_us
            .iter()
            .zip(&self.latencies_us)
            .filter(|(&end, &latency)| end >= from && end.saturating_sub(latency) < to)
            .map(|(_, &l)| l)
            .collect();
        inside.sort_unstable();
        (quantile(&inside, p), inside.last().copied().unwrap_or(0))
    }

    /// The p-quantile of every latency. Sorts a copy: `finished_us` pairs with the recorded
    /// order, which `window_us` needs.
    pub fn percentile_us(&self, p: f64) -> u64 {
        let mut all = self.latencies_us.clone();
        all.sort_unstable();
        quantile(&all, p)
    }
}

/// The p-quantile of sorted values (0 for none).
fn quantile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Running clients; [`Load::stop`] ends them and sums up.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Requests answered so far, across all clients, for throughput over a window.
    done: Arc<AtomicU64>,
    threads: Vec<JoinHandle<LoadReport>>,
    epoch: Instant,
}

const TIMEOUT: Duration = Duration::from_secs(10);
/// A hard bound so a client can never run away, whatever the test does.
const MAX_RUNTIME: Duration = Duration::from_secs(300);

impl Load {
    /// Starts `keep_alive` clients that reuse connections and `one_shot` clients that open a
    /// connection per request, all asking `GET path` of 127.0.0.1:`port`.
    pub fn start(port: u16, keep_alive: usize, one_shot: usize, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let mut threads = Vec::new();
        for i in 0..keep_alive + one_shot {
            let stop = Arc::clone(&stop);
            let counter = Arc::clone(&done);
            let path = path.to_owned();
            let reuse = i < keep_alive;
            threads.push(std::thread::spawn(move || {
                client(port, &path, reuse, &stop, &counter, epoch)
            }));
        }
        Load {
            stop,
            done,
            threads,
            epoch,
        }
    }

    /// Microseconds since the load started, on the clock of [`LoadReport::finished_us`].
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Requests answered so far.
    pub fn completed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// The shared counter behind [`Load::completed`], for sampling from another thread.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.done)
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for t in self.threads {
            if let Ok(r) = t.join() {
                total.merge(r);
            }
        }
        total
    }
}

fn client(
    port: u16,
    path: &str,
    reuse: bool,
    stop: &AtomicBool,
    done: &AtomicU64,
    epoch: Instant,
) -> LoadReport {
    let mut report = LoadReport::default();
    let started = Instant::now();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < MAX_RUNTIME {
        let t0 = Instant::now();
        report.requests += 1;
        let result = one_request(port, path, reuse, &mut conn);
        match result {
            Ok(keep) => {
                done.fetch_add(1, Ordering::Relaxed);
                // One clock read, so that finished - latency is exactly when the request began.
                let end = Instant::now();
                report.latencies_us.push((end - t0).as_micros() as u64);
                report.finished_us.push((end - epoch).as_micros() as u64);
                if !keep {
                    conn = None;
                }
            }
            Err(e) => {
                report.fail(format!(
                    "{:?} after {:?}: {e}",
                    if reuse { "keep-alive" } else { "one-shot" },
                    t0.elapsed()
                ));
                conn = None;
                // A refused connection fails at once: pause a little, as a client would,
                // rather than spin a core that the server needs.
                if e.starts_with("connect") {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    report
}

/// One request; Ok(true) if the connection may be reused.
fn one_request(
    port: u16,
    path: &str,
    reuse: bool,
    conn: &mut Option<BufReader<TcpStream>>,
) -> Result<bool, String> {
    if conn.is_none() {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        *conn = Some(BufReader::new(s));
    }
    let Some(reader) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let connection = if reuse { "keep-alive" } else { "close" };
    let req = format!("GET {path} HTTP/1.1\r\nHost: load\r\nConnection: {connection}\r\n\r\n");
    reader
        .get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err("connection closed before the answer".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read status: {e}")),
    }
    if !line.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {:?}", line.trim_end()));
    }
    let mut length = None;
    let mut keep = reuse;
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read headers: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
            if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                keep = false;
            }
        }
    }
    let length = length.ok_or("no Content-Length")?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("short body: {e}"))?;
    Ok(keep)
}
