//! Logging to stderr: journal priority prefixes under systemd, readable lines on a terminal.
//!
//! When stderr is connected to the journal (`$JOURNAL_STREAM` names the same device and inode as
//! fd 2), each line starts with its sd-daemon priority prefix (`<3>`, `<4>`, `<6>`, `<7>`), so
//! `journalctl -p warning` filters work; journald adds time and identifiers itself. Anywhere else
//! a line carries a UTC timestamp and the level. Each record is written with one `write(2)`, with
//! no lock shared with other processes and no logging thread, so it stays correct across fork.

use std::fmt::Write as _;
use std::os::fd::AsFd;

use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};

use crate::config::LogLevel;

/// A synchronous drain writing one line per record to fd 2.
pub struct StderrDrain {
    journal: bool,
    max: Level,
}

impl StderrDrain {
    pub fn new(level: LogLevel) -> Self {
        StderrDrain {
            journal: stderr_is_journal(),
            max: match level {
                LogLevel::Error => Level::Error,
                LogLevel::Warning => Level::Warning,
                LogLevel::Info => Level::Info,
                LogLevel::Debug => Level::Debug,
            },
        }
    }

    fn format(&self, record: &Record, values: &OwnedKVList) -> String {
        let mut line = String::with_capacity(128);
        if self.journal {
            let _ = write!(line, "<{}>", priority(record.level()));
        } else {
            let now = std::time::SystemTime::now();
            let _ = write!(
                line,
                "{} {:<7} ",
                humantime::format_rfc3339_millis(now),
                record.level().as_str()
            );
        }
        let _ = write!(line, "{}", record.msg());
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
}

impl Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        if record.level().is_at_least(self.max) {
            write_all_stderr(self.format(record, values).as_bytes());
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

fn write_all_stderr(mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: writing a valid, initialised buffer to fd 2; errors end the attempt.
        let n = unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            return;
        }
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
        let value = val.to_string();
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
pub fn print_error(message: &str) {
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    let mut text = String::new();
    for (i, line) in message.lines().enumerate() {
        let lead = if i == 0 { "preforkd: " } else { "  " };
        let _ = writeln!(text, "{prefix}{lead}{line}");
    }
    write_all_stderr(text.as_bytes());
}

/// The process-wide logger, built once the log level is known.
pub fn logger(level: LogLevel) -> slog::Logger {
    slog::Logger::root(StderrDrain::new(level).fuse(), slog::o!())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_have_priority_prefix_and_no_inner_newline() {
        let drain = StderrDrain {
            journal: true,
            max: Level::Debug,
        };
        let values = slog::o!("gen" => 2);
        let owned = OwnedKVList::from(values);
        let line = drain.format(
            &slog::record!(
                Level::Warning,
                "",
                &format_args!("worker crashed\nbadly"),
                slog::b!("worker" => 1, "status" => "killed by SIGSEGV")
            ),
            &owned,
        );
        assert_eq!(
            line,
            "<4>worker crashed badly worker=1 status=\"killed by SIGSEGV\" gen=2\n"
        );
    }

    #[test]
    fn priorities_match_sd_daemon() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warning), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
    }
}
