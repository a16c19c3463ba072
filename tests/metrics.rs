//! preforkd's `/metrics` endpoint with real processes: what it counts, that promtool and a
//! real Prometheus read it, that a socket systemd names `metrics` stays preforkd's own, and
//! that clients that are slow, too many or malformed never hold up the event loop.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Where the endpoint listens.
enum At {
    Tcp(u16),
    Unix(PathBuf),
}

/// One raw HTTP exchange with the endpoint: (status, body).
fn exchange(at: &At, request: &[u8]) -> std::io::Result<(u16, String)> {
    fn go(mut s: impl Read + Write, request: &[u8]) -> std::io::Result<(u16, String)> {
        s.write_all(request)?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }
    match at {
        At::Tcp(port) => {
            let s = TcpStream::connect(("127.0.0.1", *port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            go(s, request)
        }
        At::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            go(s, request)
        }
    }
}

/// `GET /metrics`, parsed into series → value; None while it does not answer 200.
fn scrape(at: &At) -> Option<BTreeMap<String, f64>> {
    let (status, body) = exchange(at, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    (status == 200).then(|| parse(&body))
}

fn parse(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Scrapes until `series` has `value`; the last page otherwise.
fn wait_value(at: &At, series: &str, value: f64) -> BTreeMap<String, f64> {
    let mut last = BTreeMap::new();
    let found = wait_for(Duration::from_secs(20), || {
        last = scrape(at)?;
        (last.get(series) == Some(&value)).then(|| last.clone())
    });
    found.unwrap_or_else(|| panic!("{series} never became {value}: {last:#?}"))
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo worker with its config in a file (so a reload can be made to fail), metrics on
/// a unix socket in the test's directory.
fn demo_with_metrics(dir: &Path, extra: &str) -> (Preforkd, At, PathBuf) {
    let sock = dir.join("metrics.sock");
    let config = dir.join("preforkd.toml");
    std::fs::write(
        &config,
        format!(
            "workers = 2\nmetrics_listen = \"unix:{}\"\n{extra}",
            sock.display()
        ),
    )
    .unwrap();
    let p = Preforkd::demo(&["--config", path_str(&config)]);
    (p, At::Unix(sock), config)
}

#[test]
fn the_page_counts_workers_crashes_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, at, config) = demo_with_metrics(dir.path(), "reload_canary = \"0\"\n");
    let pids = p.wait_workers(2);
    let page = wait_value(&at, "preforkd_workers_ready", 2.0);
    assert_eq!(page["preforkd_workers{state=\"ready\"}"], 2.0);
    assert_eq!(page["preforkd_workers_wanted"], 2.0);
    assert_eq!(page["preforkd_generation"], 1.0);
    for pid in &pids {
        let rss = page
            .iter()
            .find(|(k, _)| {
                k.starts_with("preforkd_worker_resident_memory_bytes{")
                    && k.contains(&format!("pid=\"{pid}\""))
            })
            .unwrap_or_else(|| panic!("no memory for worker {pid}: {page:#?}"));
        assert!(*rss.1 > 1e6, "{rss:?}");
    }
    assert!(page["process_resident_memory_bytes"] > 1e6);

    // A worker killed after a good start is a crash: wait until it has outlived min_uptime
    // (1 s by default), as preforkd sees it.
    wait_for(Duration::from_secs(10), || {
        let v = p.status_json()?;
        let w = v["workers"]
            .as_array()?
            .iter()
            .find(|w| w["pid"] == pids[0])?
            .clone();
        (w["uptime_ms"].as_u64()? > 1100).then_some(())
    })
    .unwrap_or_else(|| panic!("worker {} never outlived min_uptime", pids[0]));
    // SAFETY: kill(2) on a worker of the preforkd this test started.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    wait_value(&at, "preforkd_worker_restarts_total{reason=\"crash\"}", 1.0);

    // A good reload, then one the config rejects.
    p.wait_workers(2);
    let (code, out) = p.status_like(&["reload"]);
    assert_eq!(code, 0, "{out}\n{}", p.log());
    let page = wait_value(&at, "preforkd_reloads_total{outcome=\"completed\"}", 1.0);
    assert_eq!(page["preforkd_generation"], 2.0);
    assert_eq!(
        page["preforkd_reload_duration_seconds_count{outcome=\"completed\"}"],
        1.0
    );
    assert_eq!(
        page["preforkd_reload_duration_seconds_bucket{outcome=\"completed\",le=\"+Inf\"}"],
        1.0
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("workers = \"many\"\n");
    std::fs::write(&config, text).unwrap();
    let (code, _) = p.status_like(&["reload"]);
    assert_eq!(code, 1);
    let page = wait_value(&at, "preforkd_reloads_total{outcome=\"rejected\"}", 1.0);
    assert_eq!(page["preforkd_reloading"], 0.0);
    // status --json carries the same counters.
    let v = p.status_json().unwrap();
    assert_eq!(v["counters"]["crashed"], 1);
    assert!(
        v["workers"][0]["usage"]["rss_bytes"].as_u64().unwrap() > 0,
        "{v}"
    );
}

#[test]
#[cfg_attr(
    not(have_promtool),
    ignore = "promtool is not installed (Debian: prometheus)"
)]
fn promtool_finds_nothing_to_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, at, _) = demo_with_metrics(dir.path(), "");
    p.wait_workers(2);
    wait_value(&at, "preforkd_workers_ready", 2.0);
    let (status, body) = exchange(&at, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(status, 200);
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 0 with no output when the page is valid and lint-clean.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{body}"
    );
}

/// A Prometheus server this test started, ended by its pid when the test ends.
struct Prometheus {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[cfg_attr(
    not(have_prometheus),
    ignore = "prometheus is not installed (Debian: prometheus)"
)]
fn a_real_prometheus_scrapes_the_pool() {
    let metrics_port = free_port();
    let mut p = Preforkd::demo(&[
        "--workers",
        "2",
        "--metrics-listen",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    p.wait_workers(2);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: preforkd\n    static_configs:\n      - targets: [\"127.0.0.1:{metrics_port}\"]\n"
        ),
    )
    .unwrap();
    let web_port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let prometheus = Prometheus { child, _dir: dir };
    let query = "/api/v1/query?query=preforkd_workers_ready";
    let mut last = String::new();
    let found = wait_for(Duration::from_secs(60), || {
        last = get(web_port, query).ok()?.body;
        let v: serde_json::Value = serde_json::from_str(&last).ok()?;
        let value = v["data"]["result"][0]["value"][1].as_str()?.to_owned();
        (value == "2").then_some(v)
    });
    let log =
        std::fs::read_to_string(prometheus._dir.path().join("prometheus.log")).unwrap_or_default();
    let v = found.unwrap_or_else(|| panic!("Prometheus never saw 2 ready workers: {last}\n{log}"));
    assert_eq!(v["data"]["result"][0]["metric"]["job"], "preforkd", "{v}");
    drop(prometheus);
}

#[test]
fn a_socket_systemd_names_metrics_is_preforkds_own() {
    let metrics = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = metrics.local_addr().unwrap().port();
    let inode = {
        use std::os::unix::fs::MetadataExt;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&metrics);
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino()
    };
    let mut start = Preforkd::demo_start(&["--workers", "2"]);
    start.metrics = Some(metrics);
    let mut p = start.spawn();
    let pids = p.wait_workers(2);
    let page = wait_value(&At::Tcp(port), "preforkd_workers_ready", 2.0);
    assert_eq!(page["preforkd_workers_wanted"], 2.0);
    for pid in pids {
        let env = environ(pid);
        assert_env(&env, &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "http")]);
        let held = fds(pid);
        let socket = format!("socket:[{inode}]");
        assert!(
            !held.values().any(|t| *t == socket),
            "worker {pid} holds {socket}: {held:?}"
        );
    }
}

#[test]
fn slow_many_and_malformed_clients_never_hold_up_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, at, _) = demo_with_metrics(dir.path(), "");
    let pids = p.wait_workers(2);
    wait_value(&at, "preforkd_workers_ready", 2.0);
    let At::Unix(path) = &at else { unreachable!() };
    // More idle connections than the endpoint serves at once: the extra ones are told 503.
    let idle: Vec<UnixStream> = (0..24)
        .map(|_| UnixStream::connect(path).unwrap())
        .collect();
    let mut half = UnixStream::connect(path).unwrap();
    half.write_all(b"GET /metr").unwrap();
    // Meanwhile preforkd answers status and heals a killed worker at once.
    let asked = Instant::now();
    let (code, out) = p.status(&[]);
    assert_eq!(code, 0, "{out}");
    // Held up by the idle clients, it would wait for their 10 s timeout.
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // SAFETY: kill(2) on a worker of the preforkd this test started.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    let healed = Instant::now();
    p.wait_workers(2);
    assert!(
        healed.elapsed() < Duration::from_secs(5),
        "{:?}",
        healed.elapsed()
    );
    drop(idle);
    drop(half);
    // Malformed, oversized, other paths and methods get an answer and a hang-up.
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let cases: [(&[u8], u16); 4] = [
        (huge.as_bytes(), 431),
        (b"\x01\x02 nonsense\r\n\r\n", 400),
        (b"GET /other HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    ];
    for (request, want) in cases {
        let got = wait_for(Duration::from_secs(15), || exchange(&at, request).ok());
        assert_eq!(
            got.map(|g| g.0),
            Some(want),
            "{:?}",
            String::from_utf8_lossy(&request[..20])
        );
    }
    // The 503s, the oversized and the malformed requests (a page is rendered at most once a
    // second, so the count may show on the next one).
    let mut page = BTreeMap::new();
    let counted = wait_for(Duration::from_secs(5), || {
        page = scrape(&at)?;
        (page["preforkd_metrics_rejected_total"] >= 2.0).then_some(())
    });
    assert!(counted.is_some(), "{page:#?}");
    // A client that says nothing is hung up on after 10 s.
    let mut silent = UnixStream::connect(path).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let began = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(silent.read(&mut buf).unwrap(), 0);
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(13),
        "{waited:?}"
    );
}

#[test]
fn a_metrics_socket_in_use_is_refused_at_start_with_exit_71() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, out) = run_to_end(
        &[
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--",
            "true",
        ],
        &[],
    );
    assert_eq!(code, 71, "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{port}")) && out.contains("another process"),
        "{out}"
    );
}

#[test]
fn status_watch_shows_frames_with_memory_and_cpu_until_it_is_ended() {
    let mut p = Preforkd::demo(&["--workers", "2"]);
    let pids = p.wait_workers(2);
    let mut watch = std::process::Command::new(BIN)
        .args(["status", "--watch"])
        .env("RUNTIME_DIRECTORY", &p.runtime_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    // Load between the frames, so that the second one has CPU to show.
    let port = p.port;
    let load = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            let _ = get(port, "/");
        }
    });
    let frames = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut frames: Vec<Vec<String>> = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("preforkd \"") {
                frames.push(Vec::new());
            }
            if let Some(f) = frames.last_mut() {
                f.push(line);
            }
            if frames.len() == 3 {
                break;
            }
        }
        frames
    });
    let began = Instant::now();
    let frames = wait_for(Duration::from_secs(10), || {
        frames.is_finished().then_some(())
    })
    .map(|()| frames.join().unwrap())
    .unwrap_or_else(|| panic!("no 3 frames within 10 s"));
    // A frame a second: the third comes about 2 s after the first.
    assert!(
        began.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        began.elapsed()
    );
    let _ = watch.kill();
    let _ = watch.wait();
    load.join().unwrap();
    // Not a terminal: plain frames, no escape sequence.
    let text = frames.concat().join("\n");
    assert!(!text.contains('\x1b'), "{text}");
    let second = &frames[1];
    assert!(second[0].contains("2/2 ready"), "{second:#?}");
    for pid in &pids {
        let row = second
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(&pid.to_string()))
            .unwrap_or_else(|| panic!("no row for {pid}: {second:#?}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        // WORKER PID GEN STATE UPTIME RSS PSS CPU% RESTARTS STATUS
        assert!(cols[5].ends_with('M') && cols[6].ends_with('M'), "{row}");
        let cpu: f64 = cols[7].parse().unwrap_or_else(|_| panic!("CPU% in {row}"));
        assert!((0.0..=200.0).contains(&cpu), "{row}");
    }
}

/// review-16: a client that half-closes after its request (`nc -N`, socat, an HTTP/1.0
/// client doing shutdown(SHUT_WR)) is a legal HTTP client and must get the page. The server
/// reads until EAGAIN, sees EOF after the complete head and drops the client unanswered.
#[test]
fn review16_a_client_that_half_closes_after_its_request_gets_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, at, _) = demo_with_metrics(dir.path(), "");
    wait_value(&at, "preforkd_workers_ready", 2.0);
    let At::Unix(path) = &at else { unreachable!() };
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "no answer to a half-closed client: {text:?}"
    );
}
