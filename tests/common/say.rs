//! Lines for the person running the tests that `cargo test` shows without `--nocapture`.

use std::io::Write;

/// Writes `line` to the test process's own stderr. libtest captures what `print!` and
/// `eprint!` write (and shows it only for a failing test), not writes to the stream itself, so
/// this line shows in `cargo test`'s output whether the test passes or not: for figures a run
/// should leave in CI's log (request counts, times) and for skips.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
