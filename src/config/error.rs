//! A configuration problem and how it is told: where (file, line, column or flag), which key,
//! what is wrong and what would be valid, every quoted value bounded by [`crate::echo`].

use std::fmt;

use super::agents::AGENT_KEYS;
use super::keys::KEYS;

/// A configuration problem, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the bad value was written: `app.toml:3:11`, `--workers`, or the command line.
    pub origin: String,
    /// The key concerned, when known.
    pub field: Option<String>,
    pub message: String,
    /// The offending line with a caret under the value, for file errors.
    pub snippet: Option<String>,
}

impl ConfigError {
    pub(crate) fn new(
        origin: impl Into<String>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            origin: origin.into(),
            field: field.map(str::to_owned),
            message: message.into(),
            snippet: None,
        }
    }
}

impl fmt::Display for ConfigError {
    /// Values quoted in the message (ours, the TOML parser's) are cut and escaped here,
    /// once, whatever their size: see [`crate::echo`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", crate::echo::echo(&self.origin))?;
        if let Some(field) = &self.field {
            write!(f, "{}: ", crate::echo::echo(field))?;
        }
        write!(f, "{}", crate::echo::message(&self.message))?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n{snippet}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// "unknown field `wrokers`; did you mean `workers`?", for a key at the top of the file.
pub(crate) fn unknown_key(name: &str) -> String {
    // `agent` is no flag, so [`nearest_key`] (which the flags share) leaves it out.
    let keys = KEYS.iter().chain(std::iter::once(&"agent"));
    match nearest(name, keys.copied()) {
        Some(key) => format!("unknown field `{name}`; did you mean `{key}`?"),
        None => format!("unknown field `{name}`: preforkd.toml(5) lists the keys"),
    }
}

/// The same inside an `[agent.NAME]` table, where a key of the pool's is a likely mistake.
pub(crate) fn unknown_agent_key(name: &str) -> String {
    let all = AGENT_KEYS.join(", ");
    if KEYS.contains(&name) {
        return format!(
            "`{name}` is a key of the worker pool, not of an agent: an agent takes {all} (and the pool's value of the rest)"
        );
    }
    match nearest(name, AGENT_KEYS.iter().copied()) {
        Some(key) => format!("unknown field `{name}`; did you mean `{key}`?"),
        None => format!("unknown field `{name}`: an agent takes {all}"),
    }
}

/// The key `name` was most likely meant to be, by edit distance; None if none is close.
pub fn nearest_key(name: &str) -> Option<&'static str> {
    nearest(name, KEYS.iter().copied())
}

fn nearest(name: &str, keys: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    // A long name is no typo of a short key, and comparing it would cost its length squared.
    if name.len() > 64 {
        return None;
    }
    keys.map(|k| (edit_distance(name, k), k))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= 3)
        .map(|(_, k)| k)
}

pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}
