//! Logging to stderr: journal priority prefixes under systemd, readable lines on a terminal.
//!
//! When stderr is connected to the journal (`$JOURNAL_STREAM` names the same device and inode as
//! fd 2), each line starts with its sd-daemon priority prefix (`<3>`, `<4>`, `<6>`, `<7>`), so
//! `journalctl -p warning` filters work; journald adds time and identifiers itself. Anywhere else
//! a line carries a UTC timestamp and the level. Each record is written with one `write(2)` or
//! `send(2)`, with no lock shared with other processes and no logging thread, so it stays correct
//! across fork.
//!
//! Logging never waits: preforkd has one thread, and a write blocked on a busy journald or a pipe
//! nobody reads would stall reaping, the watchdog and the control socket with it. A record stderr
//! cannot take whole at once is dropped and counted ([`dropped_lines`]), and the next record that
//! gets through is preceded by a warning saying how many went missing.

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

use crate::config::LogLevel;

mod sink;
#[cfg(test)]
mod tests;

use sink::{write_all, Sink};

/// Log records dropped because stderr would have blocked, since preforkd started.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many log records preforkd dropped so far because stderr was not taking them.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A synchronous drain writing one line per record to fd 2.
pub struct StderrDrain {
    journal: bool,
    max: Level,
    sink: Sink,
    /// Dropped since the last notice about dropped lines got through.
    unreported: AtomicU64,
}

impl StderrDrain {
    pub fn new(level: LogLevel) -> Self {
        let max = match level {
            LogLevel::Error => Level::Error,
            LogLevel::Warning => Level::Warning,
            LogLevel::Info => Level::Info,
            LogLevel::Debug => Level::Debug,
        };
        Self::with_sink(Sink::for_fd(2), stderr_is_journal(), max)
    }

    fn with_sink(sink: Sink, journal: bool, max: Level) -> Self {
        StderrDrain {
            journal,
            max,
            sink,
            unreported: AtomicU64::new(0),
        }
    }

    /// The priority prefix under the journal, else the timestamp and level.
    fn line_start(&self, level: Level) -> String {
        let mut line = String::with_capacity(128);
        if self.journal {
            let _ = write!(line, "<{}>", priority(level));
        } else {
            let now = std::time::SystemTime::now();
            let _ = write!(
                line,
                "{} {:<7} ",
                humantime::format_rfc3339_millis(now),
                level.as_str()
            );
        }
        line
    }

    fn format(&self, record: &Record, values: &OwnedKVList) -> String {
        let mut line = self.line_start(record.level());
        // Messages and values may quote outside input: bounded and escaped (crate::echo).
        let _ = write!(line, "{}", crate::echo::message(&record.msg().to_string()));
        // slog hands pairs over last-first; put them back in the order they were written.
        let mut kv = KvText(Vec::new());
        let _ = record.kv().serialize(record, &mut kv);
        kv.0.reverse();
        let mut context = KvText(Vec::new());
        let _ = values.serialize(record, &mut context);
        context.0.reverse();
        for pair in kv.0.iter().chain(&context.0) {
            line.push_str(pair);
        }
        // One record is one journal entry: a newline inside would split it.
        let mut line = line.replace('\n', " ");
        line.push('\n');
        line
    }

    fn dropped_notice(&self, count: u64) -> String {
        let mut line = self.line_start(Level::Warning);
        let what = if self.journal {
            "stderr (the journal)"
        } else {
            "stderr"
        };
        let _ = writeln!(
            line,
            "preforkd dropped {count} log lines: {what} was not taking them"
        );
        line
    }

    /// Writes `line` if stderr takes it now, after the notice of earlier drops if any.
    fn emit(&self, line: &str) {
        let unreported = self.unreported.load(Ordering::Relaxed);
        if unreported > 0 {
            if !self.sink.write_line(&self.dropped_notice(unreported)) {
                self.count_dropped();
                return;
            }
            self.unreported.fetch_sub(unreported, Ordering::Relaxed);
        }
        if !self.sink.write_line(line) {
            self.count_dropped();
        }
    }

    fn count_dropped(&self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        self.unreported.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        if record.level().is_at_least(self.max) {
            self.emit(&self.format(record, values));
        }
        Ok(())
    }
}

/// syslog priority for a slog level, as sd-daemon(3) prefixes expect.
fn priority(level: Level) -> u8 {
    match level {
        Level::Critical => 2,
        Level::Error => 3,
        Level::Warning => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// True when fd 2 is the stream systemd connected to the journal (`JOURNAL_STREAM=dev:ino`).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// ` key=value` pairs; values with spaces or quotes are quoted so lines stay parseable.
struct KvText(Vec<String>);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments) -> slog::Result {
        // An error is a message preforkd composed (a config error names file, line, field and
        // what was expected): bounded as a message, so its hint at the end survives, while a
        // value it quotes is still cut. Any other field is one value.
        let value = if key == "error" {
            crate::echo::message(&val.to_string())
        } else {
            crate::echo::echo(&val.to_string())
        };
        let plain = !value.is_empty()
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '=');
        self.0.push(if plain {
            format!(" {key}={value}")
        } else {
            format!(" {key}={value:?}")
        });
        Ok(())
    }
}

/// Prints an error that stops preforkd before its logger exists: "preforkd: …" on stderr, with
/// the error priority prefix when stderr is the journal.
///
/// This one may block: no event loop runs yet to be held up, and the message is the only account
/// of what went wrong, so waiting for stderr beats losing it.
pub fn print_error(message: &str) {
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    let mut text = String::new();
    for (i, line) in crate::echo::message(message).lines().enumerate() {
        let lead = if i == 0 { "preforkd: " } else { "  " };
        let _ = writeln!(text, "{prefix}{lead}{line}");
    }
    write_all(2, text.as_bytes());
}

/// The process-wide logger, built once the log level is known.
pub fn logger(level: LogLevel) -> slog::Logger {
    slog::Logger::root(StderrDrain::new(level).fuse(), slog::o!())
}
