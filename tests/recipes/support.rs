//! Runs one recipe of examples/ under preforkd the way its README says (from its folder, with
//! its preforkd.toml) and checks what every recipe must do: two distinct workers answer, 10
//! reloads under load fail no request, a stop finishes a slow request in flight, and nothing is
//! left behind.
//!
//! A recipe whose toolchain build.rs did not find is ignored (tests/recipes.rs says which
//! cfg); one that runs checks its toolchain again with [`need_tools`] and fails if it is gone,
//! so CI (where nothing is ignored) cannot pass without having run it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::load::Load;
pub use crate::common::say;
use crate::common::*;

/// The checkout.
pub fn top() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where builds of the examples go: beside preforkd's own, under the target directory.
pub fn build_dir(recipe: &str) -> PathBuf {
    Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("recipes")
        .join(recipe)
}

/// The Python virtual environment .ci/run makes for the recipes that need PyPI packages.
pub fn venv() -> PathBuf {
    top().join("examples/.venv")
}

/// Something a recipe needs on this machine.
pub enum Need {
    /// A program on PATH.
    Program(&'static str),
    /// A file (a tool installed into the checkout), named by what it is.
    File(PathBuf, &'static str),
    /// A command that succeeds only with the thing installed, named by what it is.
    Runs(&'static [&'static str], &'static str),
}

impl Need {
    fn missing(&self) -> Option<String> {
        match self {
            Need::Program(p) => (!on_path(p)).then(|| p.to_string()),
            Need::File(path, what) => {
                (!path.exists()).then(|| format!("{what} ({})", path.display()))
            }
            Need::Runs(cmd, what) => {
                let ok = on_path(cmd[0])
                    && Command::new(cmd[0])
                        .args(&cmd[1..])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                (!ok).then(|| what.to_string())
            }
        }
    }
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Fails the test, naming what is missing, unless everything the recipe needs is here: the
/// test runs because build.rs found it (or CI is set).
pub fn need_tools(recipe: &str, needs: &[Need]) {
    let missing: Vec<String> = needs.iter().filter_map(Need::missing).collect();
    assert!(
        missing.is_empty(),
        "{recipe}: {} not installed (.ci/run installs it)",
        missing.join(", ")
    );
}

/// Runs a build step to its end, failing the test with its output if it fails.
pub fn build(what: &str, mut cmd: Command) {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if started.elapsed() > Duration::from_secs(2) {
        say(&format!(
            "{what}: built in {:.1}s",
            started.elapsed().as_secs_f64()
        ));
    }
}

/// How to run one recipe.
pub struct Recipe {
    /// Its folder under examples/.
    pub name: &'static str,
    /// How the messages name it (the folder, unless one folder has several recipes).
    pub label: &'static str,
    /// Its config file, in that folder.
    pub config: &'static str,
    /// Added to the environment preforkd starts with (PATH for a virtual environment, say).
    pub env: Vec<(&'static str, String)>,
    /// Extra flags after the config (they win over it).
    pub flags: Vec<String>,
    /// At most this many requests may fail during the reloads, for a server whose README
    /// says why (measured, with the upstream issue); 0 for every other recipe.
    pub known_loss: u64,
}

/// One identity line: `worker=<id> pid=<pid> gen=<gen>`.
fn identity(port: u16) -> Option<(u32, i32, u32)> {
    get(port, "/").ok().and_then(|r| parse_identity(&r.body))
}

/// The process group of a pid, per /proc (None once it is gone).
fn pgid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // state ppid pgrp ...
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// A keep-alive HTTP/1.1 connection whose client port the test knows.
struct Client {
    reader: BufReader<TcpStream>,
    port: u16,
}

impl Client {
    fn open(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            port: s.local_addr()?.port(),
            reader: BufReader::new(s),
        })
    }

    fn send(&mut self, path: &str) -> std::io::Result<()> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes())
    }

    /// (status, body) of the next answer.
    fn read(&mut self) -> std::io::Result<(u16, String)> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Bytes the server side of 127.0.0.1:`server` <- 127.0.0.1:`client` has not read yet, per
/// /proc/net/tcp (None if there is no such connection).
fn unread(server: u16, client: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok();
        if port(f.get(1)?)? != server || port(f.get(2)?)? != client {
            return None;
        }
        u64::from_str_radix(f.get(4)?.split_once(':')?.1, 16).ok()
    })
}

/// Live processes (not zombies) in any of `groups`.
fn members(groups: &BTreeSet<i32>) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| pgid(p).is_some_and(|g| groups.contains(&g)) && is_alive(p))
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (p, cmd.trim_end().to_owned())
        })
        .collect()
}

/// Every worker preforkd started, sampled every 10 ms: each leads a process group of its own,
/// which holds whatever the worker started (gunicorn's and Puma's own workers, helpers).
/// On drop, anything still in those groups is killed, so a failing test leaves nothing behind.
struct Groups {
    seen: Arc<Mutex<BTreeSet<i32>>>,
    running: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl Groups {
    fn watch(preforkd: i32) -> Groups {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let running = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (seen, running) = (Arc::clone(&seen), Arc::clone(&running));
            std::thread::spawn(move || {
                while running.load(Ordering::SeqCst) {
                    let now = children(preforkd);
                    seen.lock().unwrap().extend(now);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Groups {
            seen,
            running,
            sampler: Some(sampler),
        }
    }

    fn all(&self) -> BTreeSet<i32> {
        self.seen.lock().unwrap().clone()
    }

    fn stop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        self.stop();
        for g in self.all() {
            // SAFETY: kill(2) on a process group preforkd created for a worker of this test.
            unsafe { libc::kill(-g, libc::SIGKILL) };
        }
    }
}

impl Recipe {
    pub fn new(name: &'static str) -> Recipe {
        Recipe {
            name,
            label: name,
            config: "preforkd.toml",
            env: Vec::new(),
            flags: Vec::new(),
            known_loss: 0,
        }
    }

    /// Accepts up to `max` failed requests during the reloads: only for a server that cannot
    /// reload without loss, which its README says with the measured figure.
    pub fn known_loss(mut self, max: u64) -> Recipe {
        self.known_loss = max;
        self
    }

    pub fn label(mut self, label: &'static str) -> Recipe {
        self.label = label;
        self
    }

    pub fn config(mut self, file: &'static str) -> Recipe {
        self.config = file;
        self
    }

    pub fn env(mut self, k: &'static str, v: impl Into<String>) -> Recipe {
        self.env.push((k, v.into()));
        self
    }

    pub fn flag(mut self, f: impl Into<String>) -> Recipe {
        self.flags.push(f.into());
        self
    }

    /// PATH with `dir` first, as activating a virtual environment does.
    pub fn path_first(self, dir: &Path) -> Recipe {
        let path = std::env::var("PATH").unwrap_or_default();
        self.env("PATH", format!("{}:{path}", dir.display()))
    }

    pub fn folder(&self) -> PathBuf {
        top().join("examples").join(self.name)
    }

    /// The whole check; see the module comment. Returns what preforkd and its workers wrote
    /// (without a journal the workers share preforkd's stderr), for a recipe's own checks.
    pub fn check(self) -> String {
        let started = Instant::now();
        let folder = self.folder();
        // Started from the recipe's folder, as its README says; `env -C` execs preforkd with
        // the pid the socket was handed to.
        let wrapper: &'static str =
            Box::leak(format!("env -C {}", folder.display()).into_boxed_str());
        let mut args = vec!["--config", self.config, "--workers", "2"];
        args.extend(self.flags.iter().map(String::as_str));
        let mut start = Start::activated(&args);
        start.wrapper = Some(wrapper);
        for (k, v) in &self.env {
            start = start.env(k, v.clone());
        }
        let mut p = start.spawn();
        let mut groups = Groups::watch(p.pid);
        let name = self.label;

        // 1. Two distinct workers answer, each a process of one of preforkd's workers.
        let serving = |p: &mut Preforkd, gen: u32| {
            let ok = wait_for(Duration::from_secs(30), || {
                let workers = p.workers();
                if workers.len() != 2 {
                    return None;
                }
                let mut ids = BTreeSet::new();
                let mut pids = BTreeSet::new();
                for _ in 0..40 {
                    if let Some((id, pid, g)) = identity(p.port) {
                        if g == gen && pgid(pid).is_some_and(|g| workers.contains(&g)) {
                            ids.insert(id);
                            pids.insert(pid);
                        }
                    }
                    if ids.len() == 2 && pids.len() == 2 {
                        return Some(pids);
                    }
                }
                None
            });
            ok.unwrap_or_else(|| {
                panic!(
                    "{name}: two workers of generation {gen} did not both answer; workers {:?}, answer {:?}\nlog:\n{}",
                    p.workers(),
                    get(p.port, "/").map(|r| r.body),
                    p.log()
                )
            })
        };
        let first = serving(&mut p, 1);
        let up = started.elapsed();

        // 2. Ten reloads under load: keep-alive and one-request-per-connection clients.
        let load = Load::start(p.port, 2, 2, "/");
        wait_for(Duration::from_secs(10), || {
            (load.completed() > 50).then_some(())
        })
        .unwrap_or_else(|| panic!("{name}: the load got no answers\nlog:\n{}", p.log()));
        let reloads_started = Instant::now();
        for i in 1..=10 {
            let (code, out) = p.status_like(&["reload"]);
            assert_eq!(code, 0, "{name}: reload {i}: {out}\nlog:\n{}", p.log());
        }
        let reload_time = reloads_started.elapsed();
        // Requests after the last reload count too: a retired worker may still be draining.
        let at_end = load.completed();
        wait_for(Duration::from_secs(10), || {
            (load.completed() > at_end + 50).then_some(())
        })
        .unwrap_or_else(|| panic!("{name}: no answers after the reloads\nlog:\n{}", p.log()));
        let report = load.stop();
        assert!(
            report.failures <= self.known_loss,
            "{name}: {} of {} requests failed during 10 reloads, e.g. {:?}\nlog:\n{}",
            report.failures,
            report.requests,
            report.examples,
            p.log()
        );
        let now = serving(&mut p, 11);
        assert!(now.is_disjoint(&first), "{name}: old workers still answer");

        // 3. A stop with a slow request in flight finishes it.
        // A fresh connection: some servers (gunicorn's sync worker) close after each answer.
        let mut conn = Client::open(p.port).unwrap();
        conn.send("/sleep?ms=1500").unwrap();
        // The request is in flight once a worker has accepted the connection and read it: the
        // kernel then holds no unread byte on the server's side.
        wait_for(Duration::from_secs(5), || {
            (unread(p.port, conn.port) == Some(0)).then_some(())
        })
        .unwrap_or_else(|| panic!("{name}: the worker did not read the slow request"));
        let sent = Instant::now();
        p.signal(libc::SIGTERM);
        let (status, body) = conn.read().unwrap_or_else(|e| {
            panic!(
                "{name}: the request in flight at the stop was lost: {e}\nlog:\n{}",
                p.log()
            )
        });
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.starts_with("slept 1500"), "{name}: {body}");
        // As a client does once it has its answer to the last request it had (Node waits for
        // the client's side of the close before the connection counts as closed).
        drop(conn);
        let code = p.exit_code(Duration::from_secs(20));
        let stopped = sent.elapsed();
        assert_eq!(code, 0, "{name}: preforkd exit status\nlog:\n{}", p.log());

        // 4. Nothing left behind: no process in any worker's group.
        groups.stop();
        let all = groups.all();
        let left = wait_for(Duration::from_secs(5), || {
            members(&all).is_empty().then_some(())
        });
        assert!(
            left.is_some(),
            "{name}: processes left behind: {:?}\nlog:\n{}",
            members(&all),
            p.log()
        );
        p.assert_no_worker_left();

        if report.failures > 0 {
            say(&format!(
                "KNOWN LOSS: {name}: {} of {} requests failed during 10 reloads (at most {} allowed: examples/{}/README.md says why), e.g. {:?}",
                report.failures, report.requests, self.known_loss, self.name, report.examples
            ));
        }
        say(&format!(
            "recipe {name}: 2 workers answered in {:.1}s; 10 reloads under load in {:.1}s: {} requests, {} failed; stop with a 1.5 s request in flight: answered, exit 0 after {:.1}s; {} worker groups, none left; {:.1}s in all",
            up.as_secs_f64(),
            reload_time.as_secs_f64(),
            report.requests,
            report.failures,
            stopped.as_secs_f64(),
            all.len(),
            started.elapsed().as_secs_f64()
        ));
        p.log()
    }
}
