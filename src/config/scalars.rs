//! The single values keys hold: each says what a valid one looks like, reads it from text
//! (a flag, a TOML string) or a TOML integer or boolean, and prints it back for `check`.

use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::signal::Signal;

use super::durations::Dur;
use super::kinds::{quote, Scalar};
use super::types::{KillMode, LogLevel, Readiness, Share, Workers, MAX_WORKERS};

impl Scalar for Workers {
    type Field = Workers;
    const EXPECTED: &'static str = "\"auto\" or a whole number of workers from 1 to 4096";
    fn from_text(s: &str) -> Result<Workers, String> {
        if s == "auto" {
            return Ok(Workers::Auto);
        }
        Self::from_number_text(s)
    }
    fn from_int(i: i64) -> Result<Workers, String> {
        worker_count(i, Self::EXPECTED).map(Workers::Count)
    }
    fn show(w: &Workers) -> Option<String> {
        Some(match w {
            Workers::Auto => format!("\"auto\"  # {} on this machine", w.resolve()),
            Workers::Count(n) => n.to_string(),
        })
    }
}

/// A whole number of workers, 1 to [`MAX_WORKERS`].
fn worker_count(i: i64, expected: &str) -> Result<u32, String> {
    if (1..=MAX_WORKERS as i64).contains(&i) {
        Ok(i as u32)
    } else {
        Err(format!("invalid value {i}: expected {expected}"))
    }
}

impl Scalar for Share {
    type Field = Share;
    const EXPECTED: &'static str =
        "\"all\", a number of workers such as 2, or a percentage such as \"50%\"";
    fn from_text(s: &str) -> Result<Share, String> {
        if s == "all" {
            return Ok(Share::All);
        }
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Share::Percent(p)),
                _ => Err(format!(
                    "invalid value \"{s}\": a percentage from 1% to 100%"
                )),
            };
        }
        Self::from_number_text(s)
    }
    fn from_int(i: i64) -> Result<Share, String> {
        worker_count(i, Self::EXPECTED).map(Share::Count)
    }
    fn show(s: &Share) -> Option<String> {
        Some(match s {
            Share::Count(n) => n.to_string(),
            other => quote(&other.to_string()),
        })
    }
}

/// A whole number from `MIN` to `MAX`.
pub(crate) struct Count<const MIN: i64, const MAX: i64>;

impl<const MIN: i64, const MAX: i64> Scalar for Count<MIN, MAX> {
    type Field = u32;
    const EXPECTED: &'static str = "a whole number";
    fn from_text(s: &str) -> Result<u32, String> {
        Self::from_number_text(s)
    }
    fn from_int(v: i64) -> Result<u32, String> {
        if (MIN..=MAX).contains(&v) {
            Ok(v as u32)
        } else {
            Err(format!(
                "invalid value {v}: expected a whole number from {MIN} to {MAX}"
            ))
        }
    }
    fn show(v: &u32) -> Option<String> {
        Some(v.to_string())
    }
}

impl Scalar for Signal {
    type Field = Signal;
    const EXPECTED: &'static str =
        "a signal name such as \"SIGTERM\", \"SIGINT\", \"SIGQUIT\", \"SIGHUP\", \"SIGUSR1\", \"SIGUSR2\" or \"SIGWINCH\"";
    fn from_text(s: &str) -> Result<Signal, String> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        match Signal::from_str(&full) {
            Ok(Signal::SIGKILL) | Ok(Signal::SIGSTOP) => Err(format!(
                "\"{s}\" cannot be caught, so a worker could not stop gracefully: expected {}",
                Self::EXPECTED
            )),
            // By default these do nothing or only pause a program: every stop would wait out
            // stop_timeout.
            Ok(
                Signal::SIGCHLD
                | Signal::SIGCONT
                | Signal::SIGURG
                | Signal::SIGTSTP
                | Signal::SIGTTIN
                | Signal::SIGTTOU,
            ) => Err(format!(
                "\"{s}\" does not end a program that ignores it by default: expected {}",
                Self::EXPECTED
            )),
            Ok(sig) => Ok(sig),
            Err(_) => Err(format!(
                "unknown signal \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
    fn show(s: &Signal) -> Option<String> {
        Some(quote(s.as_str()))
    }
}

/// Permission bits, written "0660" or as a TOML octal integer 0o660.
pub(crate) struct Octal;

impl Scalar for Octal {
    type Field = u32;
    const EXPECTED: &'static str = "octal permission bits such as \"0660\"";
    fn from_text(s: &str) -> Result<u32, String> {
        match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 => Ok(m),
            _ => Err(format!("invalid mode \"{s}\": expected {}", Self::EXPECTED)),
        }
    }
    fn from_int(i: i64) -> Result<u32, String> {
        if (0..=0o777).contains(&i) {
            Ok(i as u32)
        } else {
            Err(format!(
                "invalid mode {i}: expected {} (in TOML an integer must be written 0o660)",
                Self::EXPECTED
            ))
        }
    }
    fn show(m: &u32) -> Option<String> {
        Some(quote(&format!("{m:04o}")))
    }
}

impl Scalar for Readiness {
    type Field = Readiness;
    const EXPECTED: &'static str =
        "\"notify\" (on the worker's READY=1), \"exec\" (once exec succeeded) or a duration such as \"2s\" (once alive that long)";
    fn from_text(s: &str) -> Result<Readiness, String> {
        match s {
            "notify" => Ok(Readiness::Notify),
            "exec" => Ok(Readiness::Exec),
            _ => match Dur::<0>::from_text(s) {
                Ok(d) => Ok(Readiness::After(d)),
                Err(_) => Err(format!(
                    "invalid value \"{s}\": expected {}",
                    Self::EXPECTED
                )),
            },
        }
    }
    fn show(r: &Readiness) -> Option<String> {
        Some(quote(&r.to_string()))
    }
}

/// The readiness rule; unset means `exec` (or `notify` for the built-in demo worker).
pub(crate) struct Ready;

impl Scalar for Ready {
    type Field = Option<Readiness>;
    const EXPECTED: &'static str = <Readiness as Scalar>::EXPECTED;
    fn from_text(s: &str) -> Result<Option<Readiness>, String> {
        Readiness::from_text(s).map(Some)
    }
    fn show(r: &Option<Readiness>) -> Option<String> {
        <Readiness as Scalar>::show(&r.unwrap_or(Readiness::Exec))
    }
}

/// A capability name such as "CAP_NET_BIND_SERVICE" (or "net_bind_service").
pub(crate) struct Capability;

impl Scalar for Capability {
    type Field = caps::Capability;
    const EXPECTED: &'static str =
        "a capability name such as \"CAP_NET_BIND_SERVICE\" (see capabilities(7))";
    fn from_text(s: &str) -> Result<caps::Capability, String> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        full.parse::<caps::Capability>()
            .map_err(|_| format!("unknown capability \"{s}\": expected {}", Self::EXPECTED))
    }
    fn show(c: &caps::Capability) -> Option<String> {
        Some(quote(&c.to_string()))
    }
}

/// A file descriptor limit: "max" (the hard limit) or a number.
pub(crate) struct NoFile;

impl Scalar for NoFile {
    type Field = u64;
    const EXPECTED: &'static str = "\"max\" (the hard limit) or a number of files from 64 up";
    fn from_text(s: &str) -> Result<u64, String> {
        if s == "max" {
            return Ok(u64::MAX);
        }
        Self::from_number_text(s)
    }
    fn from_int(i: i64) -> Result<u64, String> {
        if i >= 64 {
            Ok(i as u64)
        } else {
            Err(format!("invalid value {i}: expected {}", Self::EXPECTED))
        }
    }
    fn show(n: &u64) -> Option<String> {
        Some(if *n == u64::MAX {
            quote("max")
        } else {
            n.to_string()
        })
    }
}

/// The workers' OOM score adjustment.
pub(crate) struct OomScore;

impl Scalar for OomScore {
    type Field = i32;
    const EXPECTED: &'static str =
        "a number from -1000 to 1000 (higher: killed first when memory runs out)";
    fn from_text(s: &str) -> Result<i32, String> {
        Self::from_number_text(s)
    }
    fn from_int(v: i64) -> Result<i32, String> {
        if (-1000..=1000).contains(&v) {
            Ok(v as i32)
        } else {
            Err(format!("invalid value {v}: expected {}", Self::EXPECTED))
        }
    }
    fn show(v: &i32) -> Option<String> {
        Some(v.to_string())
    }
}

impl Scalar for LogLevel {
    type Field = LogLevel;
    const EXPECTED: &'static str = "one of \"error\", \"warning\", \"info\", \"debug\"";
    fn from_text(s: &str) -> Result<LogLevel, String> {
        match s {
            "error" => Ok(LogLevel::Error),
            "warning" | "warn" => Ok(LogLevel::Warning),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            _ => Err(format!(
                "invalid log level \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
    fn show(l: &LogLevel) -> Option<String> {
        Some(quote(l.name()))
    }
}

impl Scalar for bool {
    type Field = bool;
    const EXPECTED: &'static str = "true or false";
    fn from_text(s: &str) -> Result<bool, String> {
        match s {
            "true" | "yes" | "on" => Ok(true),
            "false" | "no" | "off" => Ok(false),
            _ => Err(format!(
                "invalid value \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
    fn from_bool(b: bool) -> Result<bool, String> {
        Ok(b)
    }
    fn show(b: &bool) -> Option<String> {
        Some(b.to_string())
    }
}

/// A boolean whose flag may stand alone: `--cpu-affinity` means `--cpu-affinity=true`.
pub(crate) struct Switch;

impl Scalar for Switch {
    type Field = bool;
    const EXPECTED: &'static str = <bool as Scalar>::EXPECTED;
    fn from_text(s: &str) -> Result<bool, String> {
        bool::from_text(s)
    }
    fn from_bool(b: bool) -> Result<bool, String> {
        Ok(b)
    }
    fn show(b: &bool) -> Option<String> {
        Some(b.to_string())
    }
    const SWITCH: bool = true;
}

/// A user or group name (or number).
pub(crate) struct Name;

impl Scalar for Name {
    type Field = String;
    const EXPECTED: &'static str = "a user or group name";
    fn from_text(s: &str) -> Result<String, String> {
        if s.is_empty() || s.contains(['\0', ':', '/']) {
            Err(format!("invalid name \"{s}\": expected {}", Self::EXPECTED))
        } else {
            Ok(s.to_owned())
        }
    }
    fn show(s: &String) -> Option<String> {
        Some(quote(s))
    }
}

/// The instance's name; it becomes a directory name.
pub(crate) struct InstanceName;

impl Scalar for InstanceName {
    type Field = String;
    const EXPECTED: &'static str =
        "up to 64 letters, digits, '-', '_', '.' or '@' (it names a directory)";
    fn from_text(name: &str) -> Result<String, String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
        if ok {
            Ok(name.to_owned())
        } else {
            Err(format!("invalid name \"{name}\": use {}", Self::EXPECTED))
        }
    }
    fn show(s: &String) -> Option<String> {
        Some(quote(s))
    }
}

/// A file system path.
pub(crate) struct FsPath;

impl Scalar for FsPath {
    type Field = PathBuf;
    const EXPECTED: &'static str = "a path";
    fn from_text(s: &str) -> Result<PathBuf, String> {
        if s.is_empty() || s.contains('\0') {
            return Err(format!("invalid path \"{s}\": expected {}", Self::EXPECTED));
        }
        Ok(PathBuf::from(s))
    }
    fn show(p: &PathBuf) -> Option<String> {
        Some(quote(&p.display().to_string()))
    }
}

impl Scalar for KillMode {
    type Field = KillMode;
    const EXPECTED: &'static str = "\"mixed\" (stop_signal to the worker process, SIGKILL to its group) or \"control-group\" (stop_signal to its whole process group)";
    fn from_text(s: &str) -> Result<KillMode, String> {
        match s {
            "mixed" => Ok(KillMode::Mixed),
            "control-group" => Ok(KillMode::ControlGroup),
            _ => Err(format!(
                "invalid kill mode \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
    fn show(k: &KillMode) -> Option<String> {
        Some(quote(k.name()))
    }
}

/// The name a worker's output carries in the journal (`SYSLOG_IDENTIFIER`, `journalctl -t`).
pub(crate) struct Identifier;

impl Scalar for Identifier {
    type Field = String;
    const EXPECTED: &'static str =
        "a name of up to 64 characters without spaces or control characters, such as \"node\"";
    fn from_text(s: &str) -> Result<String, String> {
        let ok = !s.is_empty()
            && s.chars().count() <= 64
            && !s.chars().any(|c| c.is_control() || c.is_whitespace());
        if ok {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "invalid identifier \"{s}\": expected {}",
                Self::EXPECTED
            ))
        }
    }
    fn show(s: &String) -> Option<String> {
        Some(quote(s))
    }
}

/// A syslog priority, by name or number; the journal's `PRIORITY=`.
pub(crate) struct Priority;

/// Syslog's priority names, by number.
pub const PRIORITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

impl Scalar for Priority {
    type Field = u8;
    const EXPECTED: &'static str = "one of \"emerg\", \"alert\", \"crit\", \"err\", \"warning\", \"notice\", \"info\", \"debug\", or 0 to 7";
    fn from_text(s: &str) -> Result<u8, String> {
        let alias = match s {
            "error" => "err",
            "warn" => "warning",
            other => other,
        };
        match PRIORITIES.iter().position(|p| *p == alias) {
            Some(n) => Ok(n as u8),
            None => Self::from_number_text(s),
        }
    }
    fn from_int(i: i64) -> Result<u8, String> {
        if (0..=7).contains(&i) {
            Ok(i as u8)
        } else {
            Err(format!("invalid priority {i}: expected {}", Self::EXPECTED))
        }
    }
    fn show(p: &u8) -> Option<String> {
        Some(quote(PRIORITIES[usize::from(*p).min(7)]))
    }
}
