//! The file layer: reading a config file safely (a regular file of at most 1 MiB, never
//! blocking), parsing its TOML, and setting each key through its kind, so that every error
//! names the file, line, column, key and value, with the line and a caret under the value.

use std::ops::Range;
use std::path::Path;

use toml::de::DeTable;
use toml::Spanned;

use super::agents;
use super::error::{unknown_key, ConfigError};
use super::keys::{key, Config};
use super::kinds::{Invalid, Raw};

/// The largest config file preforkd reads. Real ones are a few KiB; the bound keeps a wrong
/// path (a log, a disk image) from costing memory and time before it is refused.
pub const MAX_CONFIG_BYTES: u64 = 1_048_576;

/// Reads and parses a config file, layering it over the defaults.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    load_file_over(path, Config::default())
}

/// Reads and parses a config file, layering it over `base` (defaults that depend on where
/// preforkd runs, such as the instance name under a systemd unit).
pub fn load_file_over(path: &Path, base: Config) -> Result<Config, ConfigError> {
    let display = path.display().to_string();
    let bytes = read_bounded(path).map_err(|m| ConfigError::new(display.clone(), None, m))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let (line, col) = Source { path, text: &text }.line_col(valid);
            return Err(ConfigError::new(
                format!("{display}:{line}:{col}"),
                None,
                "the file is not valid UTF-8: TOML files must be UTF-8 text",
            ));
        }
    };
    parse_over(&text, path, base)
}

/// The bytes of the regular file at `path` (symlinks followed), at most [`MAX_CONFIG_BYTES`].
/// Never blocks: this also runs on a reload, inside the supervisor's event loop.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO for reading otherwise waits until a writer comes. O_NOCTTY:
    // preforkd is a session leader under systemd, and opening a terminal would make it its
    // controlling terminal.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        // Opening a unix socket fails (ENXIO); stat says what it is.
        Err(e) => {
            return Err(match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() => not_a_file(&meta.file_type()),
                _ => format!("cannot read the config file: {e}"),
            })
        }
    };
    // The opened file, not the path: the path may have been swapped meanwhile.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the config file: {e}"))?;
    if !meta.is_file() {
        return Err(not_a_file(&meta.file_type()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large(&format!("{} bytes", meta.len())));
    }
    read_at_most(file, meta.len() as usize)
}

/// All of `reader` if it holds at most [`MAX_CONFIG_BYTES`]. The size stat gave is not
/// trusted: a file may grow while it is read, and files in /proc say 0.
pub(super) fn read_at_most(
    reader: impl std::io::Read,
    size_hint: usize,
) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(size_hint);
    // One byte past the bound tells a file at the bound from a larger one.
    reader
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the config file: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(&format!("more than {MAX_CONFIG_BYTES} bytes")));
    }
    Ok(bytes)
}

fn too_large(size: &str) -> String {
    format!(
        "is larger than 1 MiB ({size}): a preforkd config is a few KiB; is this the right file?"
    )
}

/// Why a path that is no regular file cannot be the config, in words.
fn not_a_file(kind: &std::fs::FileType) -> String {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        return "is a directory, not a config file: give the path of a .toml file".into();
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "a special file"
    };
    format!("is not a regular file ({what}): give the path of a .toml file")
}

/// Parses the text of a config file named `path` (for messages), layered over the defaults.
/// Pure: no I/O, so it can be fuzzed.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_over(text, path, Config::default())
}

fn parse_over(text: &str, path: &Path, base: Config) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let doc = DeTable::parse(text).map_err(|e| src.error_from_toml(&e))?;
    let mut cfg = Config {
        file: Some(path.to_owned()),
        ..base
    };
    // In the order written, so that the first error reported is the first in the file.
    let mut entries: Vec<_> = doc.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (name, value) in entries {
        if name.get_ref() == "agent" {
            cfg.agents = agents::parse(value).map_err(|e| src.invalid("agent", value, e))?;
            continue;
        }
        let Some(key) = key(name.get_ref()) else {
            return Err(src.error_at(name.span(), None, unknown_key(name.get_ref())));
        };
        (key.set)(&mut cfg, Raw::File(value)).map_err(|e| src.invalid(key.name, value, e))?;
    }
    Ok(cfg)
}

/// The text of a config file, for turning byte offsets into positions.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    fn origin(&self, offset: usize) -> String {
        let (line, col) = self.line_col(offset);
        format!("{}:{line}:{col}", self.path.display())
    }

    /// The line holding `span`, with carets under it, in the style of rustc and toml.
    /// The line with a caret under the span; a long line is shown as a window around the
    /// span, and control characters as `?`, so the caret stays under what it points at.
    fn snippet(&self, span: std::ops::Range<usize>) -> String {
        const WINDOW: usize = 120;
        let (line, col) = self.line_col(span.start);
        let chars: Vec<char> = self
            .text
            .lines()
            .nth(line - 1)
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        let width = self.text[span.start.min(self.text.len())..span.end.min(self.text.len())]
            .lines()
            .next()
            .map_or(1, |s| s.chars().count().max(1));
        let start = (col - 1).min(chars.len());
        let from = if chars.len() > WINDOW {
            start.saturating_sub(40)
        } else {
            0
        };
        let to = chars.len().min(from + WINDOW);
        let lead = if from > 0 { "…" } else { "" };
        let tail = if to < chars.len() { "…" } else { "" };
        let text: String = chars[from..to].iter().collect();
        let gutter = " ".repeat(line.to_string().len());
        format!(
            "{gutter} |\n{line} | {lead}{text}{tail}\n{gutter} | {}{}",
            " ".repeat(start - from + lead.chars().count()),
            "^".repeat(width.min(to.saturating_sub(start)).max(1))
        )
    }

    /// The key written on the line where `offset` lies (`key = value`), with its table.
    fn key_at(&self, offset: usize) -> Option<String> {
        let (line, _) = self.line_col(offset);
        let lines: Vec<&str> = self.text.lines().collect();
        let this = lines.get(line - 1)?;
        let key = this.split_once('=')?.0.trim().trim_matches('"');
        if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
            return None;
        }
        let table = lines[..line - 1].iter().rev().find_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && !l.starts_with("[[")).then(|| l.trim_matches(['[', ']']).trim())
        });
        Some(match table {
            Some(t) => format!("{t}.{key}"),
            None => key.to_owned(),
        })
    }

    fn error_at(&self, span: Range<usize>, field: Option<&str>, message: String) -> ConfigError {
        ConfigError {
            origin: self.origin(span.start),
            field: field.map(str::to_owned),
            message,
            snippet: Some(self.snippet(span)),
        }
    }

    /// `value` of `key` was refused; the error may point inside it (an element, a table key).
    fn invalid(&self, key: &str, value: &Spanned<toml::de::DeValue>, e: Invalid) -> ConfigError {
        let field = match e.sub {
            Some(sub) => format!("{key}.{sub}"),
            None => key.to_owned(),
        };
        self.error_at(e.span.unwrap_or(value.span()), Some(&field), e.message)
    }

    fn error_from_toml(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().trim().to_owned();
        let Some(span) = err.span() else {
            return ConfigError::new(self.path.display().to_string(), None, message);
        };
        let field = self.key_at(span.start);
        ConfigError {
            origin: self.origin(span.start),
            field,
            message,
            snippet: Some(self.snippet(span)),
        }
    }
}
