//! Values of the recycling keys: a memory size ("512M", "2G", "off") and long durations
//! ("12h", "7d", "off") for a worker's lifetime, beyond the hour the other durations stop at.

use std::time::Duration;

use super::kinds::{quote, Scalar};

const KIB: u64 = 1024;
const UNITS: [(&str, u64); 4] = [
    ("T", KIB * KIB * KIB * KIB),
    ("G", KIB * KIB * KIB),
    ("M", KIB * KIB),
    ("K", KIB),
];

/// The smallest memory limit: less is a typo (a number of megabytes written without a unit).
const MIN_BYTES: u64 = KIB * KIB;
/// The longest lifetime or jitter: longer ones are typos.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 86400);

/// A memory size as systemd writes `MemoryMax=`: bytes, or K, M, G, T (powers of 1024, with
/// or without "iB"); "off" for none.
pub(crate) struct MemoryLimit;

impl Scalar for MemoryLimit {
    type Field = Option<u64>;
    const EXPECTED: &'static str = "\"off\" or a size such as \"512M\" or \"2G\" (at least 1M)";
    fn from_text(s: &str) -> Result<Option<u64>, String> {
        let t = s.trim();
        if t == "off" {
            return Ok(None);
        }
        let invalid = || format!("invalid size \"{s}\": expected {}", Self::EXPECTED);
        let body = t
            .strip_suffix("iB")
            .or_else(|| t.strip_suffix('B'))
            .unwrap_or(t);
        let (digits, unit) = match UNITS.iter().find(|(u, _)| body.ends_with(u)) {
            Some((u, size)) => (&body[..body.len() - u.len()], *size),
            None => (body, 1),
        };
        let n: u64 = digits.trim().parse().map_err(|_| invalid())?;
        Self::bytes(n.checked_mul(unit).ok_or_else(invalid)?)
    }
    fn from_int(i: i64) -> Result<Option<u64>, String> {
        match u64::try_from(i) {
            Ok(n) => Self::bytes(n),
            Err(_) => Err(format!("invalid size {i}: expected {}", Self::EXPECTED)),
        }
    }
    fn show(v: &Option<u64>) -> Option<String> {
        Some(quote(&v.map_or("off".to_owned(), size)))
    }
}

impl MemoryLimit {
    fn bytes(n: u64) -> Result<Option<u64>, String> {
        if n < MIN_BYTES {
            return Err(format!(
                "invalid size {n} bytes: a worker needs more than that; write a unit, such as \"{n}M\""
            ));
        }
        Ok(Some(n))
    }
}

/// "512M", "1536K", "2G": the largest unit the size is a whole number of, as it reads back.
pub fn size(bytes: u64) -> String {
    UNITS
        .iter()
        .find(|(_, unit)| bytes % unit == 0)
        .map_or(bytes.to_string(), |(u, unit)| {
            format!("{}{u}", bytes / unit)
        })
}

/// "612 MiB", "1.5 GiB": a measured size for a log line.
pub fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (KIB * KIB) as f64;
    if m >= 10240.0 {
        format!("{:.1} GiB", m / 1024.0)
    } else {
        format!("{m:.0} MiB")
    }
}

/// How long a worker may live: "off" or from a second to a year.
pub(crate) struct Lifetime;

impl Scalar for Lifetime {
    type Field = Option<Duration>;
    const EXPECTED: &'static str = "\"off\" or a duration such as \"6h\" or \"1d\" (at least 1s)";
    fn from_text(s: &str) -> Result<Option<Duration>, String> {
        if s.trim() == "off" {
            return Ok(None);
        }
        long(s, Duration::from_secs(1), Self::EXPECTED).map(Some)
    }
    fn from_int(i: i64) -> Result<Option<Duration>, String> {
        Err(format!(
            "invalid duration {i}: a bare number has no unit; write \"{i}s\" or \"{i}h\""
        ))
    }
    fn show(v: &Option<Duration>) -> Option<String> {
        Some(quote(&v.map_or("off".to_owned(), |d| {
            humantime::format_duration(d).to_string()
        })))
    }
}

/// Up to how much later than `max_lifetime` a worker is recycled: 0 or up to a year.
pub(crate) struct Jitter;

impl Scalar for Jitter {
    type Field = Duration;
    const EXPECTED: &'static str = "\"0\" or a duration such as \"10m\"";
    fn from_text(s: &str) -> Result<Duration, String> {
        if s.trim() == "0" {
            return Ok(Duration::ZERO);
        }
        long(s, Duration::ZERO, Self::EXPECTED)
    }
    fn from_int(i: i64) -> Result<Duration, String> {
        if i == 0 {
            return Ok(Duration::ZERO);
        }
        Lifetime::from_int(i).map(|_| Duration::ZERO)
    }
    fn show(d: &Duration) -> Option<String> {
        Some(quote(&humantime::format_duration(*d).to_string()))
    }
}

fn long(s: &str, min: Duration, expected: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "invalid duration \"{s}\": a duration cannot be negative; expected {expected}"
        ));
    }
    if t.parse::<i64>().is_ok() {
        return Err(format!(
            "invalid duration \"{s}\": a bare number has no unit; write \"{t}s\" or \"{t}h\""
        ));
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration \"{s}\" ({e}): expected {expected}"))?;
    if d < min || d > MAX_LIFETIME {
        return Err(format!(
            "invalid duration {}: expected from {} to {}",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(MAX_LIFETIME)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_systemd_writes_them() {
        let read = |s| MemoryLimit::from_text(s);
        assert_eq!(read("512M"), Ok(Some(512 << 20)));
        assert_eq!(read("512MiB"), Ok(Some(512 << 20)));
        assert_eq!(read("2G"), Ok(Some(2 << 30)));
        assert_eq!(read("1048576"), Ok(Some(1 << 20)));
        assert_eq!(read("off"), Ok(None));
        assert!(read("512")
            .unwrap_err()
            .contains("write a unit, such as \"512M\""));
        assert!(read("-5M")
            .unwrap_err()
            .contains("expected \"off\" or a size"));
        assert!(read("99999999999T").is_err());
        assert!(read("1.5G").is_err());
        assert_eq!(size(512 << 20), "512M");
        assert_eq!(size(1536 << 10), "1536K");
        assert_eq!(size((1 << 20) + 1), "1048577");
        assert_eq!(mib(612 << 20), "612 MiB");
        assert_eq!(mib(12 << 30), "12.0 GiB");
    }

    #[test]
    fn lifetimes_go_beyond_an_hour() {
        assert_eq!(
            Lifetime::from_text("1d"),
            Ok(Some(Duration::from_secs(86400)))
        );
        assert_eq!(Lifetime::from_text("off"), Ok(None));
        assert!(Lifetime::from_text("500ms").is_err());
        assert!(Lifetime::from_text("2y").is_err());
        assert!(Lifetime::from_int(5).unwrap_err().contains("\"5s\""));
        assert_eq!(Jitter::from_text("0"), Ok(Duration::ZERO));
        assert_eq!(Jitter::from_int(0), Ok(Duration::ZERO));
        assert_eq!(Jitter::from_text("10m"), Ok(Duration::from_secs(600)));
        assert!(Jitter::from_int(3).is_err());
    }
}
