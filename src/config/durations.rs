//! Durations: "30s", "500ms", "1m 30s", within a range per key, never negative, never a bare
//! number (which unit would it be?); and the two keys where "0" or "off" means none.

use std::time::Duration;

use super::kinds::{quote, Scalar};

fn quote_duration(d: Duration) -> String {
    quote(&humantime::format_duration(d).to_string())
}

/// The longest duration any key takes: longer ones are typos.
const MAX_DURATION: Duration = Duration::from_secs(3600);

/// A duration written as "30s", "500ms", "1m 30s", from `MIN_MS` milliseconds to an hour.
pub(crate) struct Dur<const MIN_MS: u64>;

impl<const MIN_MS: u64> Scalar for Dur<MIN_MS> {
    type Field = Duration;
    const EXPECTED: &'static str = "a duration such as \"500ms\", \"30s\" or \"2m\"";
    fn from_text(s: &str) -> Result<Duration, String> {
        in_range(duration(s, Self::EXPECTED)?, Duration::from_millis(MIN_MS))
    }
    fn from_int(i: i64) -> Result<Duration, String> {
        Err(bare_number(i))
    }
    fn show(d: &Duration) -> Option<String> {
        Some(quote_duration(*d))
    }
}

/// Any duration as written, before its range is checked.
fn duration(s: &str, expected: &str) -> Result<Duration, String> {
    if let Ok(n) = s.trim().parse::<i64>() {
        return Err(bare_number(n));
    }
    if s.trim().starts_with('-') {
        return Err(format!(
            "invalid duration \"{s}\": a duration cannot be negative; expected {expected}"
        ));
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration \"{s}\" ({e}): expected {expected}"))
}

fn bare_number(i: i64) -> String {
    if i < 0 {
        return format!("invalid duration {i}: a duration cannot be negative");
    }
    format!("invalid duration {i}: a bare number has no unit; write \"{i}s\" or \"{i}ms\"")
}

fn in_range(d: Duration, min: Duration) -> Result<Duration, String> {
    if d < min || d > MAX_DURATION {
        return Err(format!(
            "invalid duration {}: expected from {} to {}",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// A duration where a bare 0 is allowed and means none: zero needs no unit.
pub(crate) struct DurOrZero;

impl Scalar for DurOrZero {
    type Field = Duration;
    const EXPECTED: &'static str = "\"0\" (none) or a duration such as \"500ms\" or \"2s\"";
    fn from_text(s: &str) -> Result<Duration, String> {
        if s.trim() == "0" {
            return Ok(Duration::ZERO);
        }
        Dur::<0>::from_text(s)
    }
    fn from_int(i: i64) -> Result<Duration, String> {
        if i == 0 {
            return Ok(Duration::ZERO);
        }
        Err(bare_number(i))
    }
    fn show(d: &Duration) -> Option<String> {
        Some(quote_duration(*d))
    }
}

/// How often a worker must send WATCHDOG=1, or "off".
pub(crate) struct Watchdog;

impl Scalar for Watchdog {
    type Field = Option<Duration>;
    const EXPECTED: &'static str = "\"off\" or a duration such as \"10s\"";
    fn from_text(s: &str) -> Result<Option<Duration>, String> {
        if s == "off" {
            return Ok(None);
        }
        match duration(s, Self::EXPECTED)? {
            d if d < Duration::from_millis(10) => Err(format!(
                "invalid duration {}: a worker watchdog must be at least 10ms, or \"off\"",
                humantime::format_duration(d)
            )),
            d => in_range(d, Duration::ZERO).map(Some),
        }
    }
    fn from_int(i: i64) -> Result<Option<Duration>, String> {
        Err(bare_number(i))
    }
    fn show(d: &Option<Duration>) -> Option<String> {
        Some(d.map_or(quote("off"), quote_duration))
    }
}
