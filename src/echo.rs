//! Outside input echoed in messages, log lines, STATUS= and `preforkd status`: at most
//! [`MAX`] characters of any one value, cut with "… (N bytes)", and control characters (NUL,
//! escapes, carriage returns) shown escaped, so a value of any size or content can neither
//! flood a log, keep megabytes alive in STATUS=, nor forge or hide a line on a terminal.

/// Characters of one value that a message quotes.
pub const MAX: usize = 200;
/// A whole message, whatever it quotes.
const MAX_MESSAGE: usize = 2000;

/// One value: escaped, and cut so that at most [`MAX`] characters of it are shown, escapes
/// included. A value echoed before comes back as it is: a STATUS= bounded where it arrived is
/// shown again by the log and by `preforkd status`, and must still name its original size.
pub fn echo(text: &str) -> String {
    if is_echoed(text) {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut shown = 0;
    for c in text.chars() {
        let unit = escape(std::iter::once(c), false);
        let width = unit.chars().count();
        if shown + width > MAX {
            out.push_str(&format!("… ({} bytes)", text.len()));
            break;
        }
        out.push_str(&unit);
        shown += width;
    }
    out
}

/// True for what [`echo`] returns: no control character, and at most [`MAX`] characters before
/// an optional "… (N bytes)".
fn is_echoed(text: &str) -> bool {
    // MAX characters of up to 4 bytes, and the marker: anything longer was never echoed.
    if text.len() > 4 * MAX + 40 || text.chars().any(char::is_control) {
        return false;
    }
    let shown = text
        .strip_suffix(" bytes)")
        .and_then(|t| t.rsplit_once("… ("))
        .filter(|(_, n)| (1..=20).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
        .map_or(text, |(shown, _)| shown);
    shown.chars().nth(MAX).is_none()
}

/// A message that may quote values (between `"` or `` ` ``): each quoted run longer than
/// [`MAX`] is cut, control characters other than line breaks are escaped, and the whole is cut
/// at a few thousand characters. Messages built from many sources (serde's, the kernel's, ours)
/// are bounded here once, where they leave preforkd.
pub fn message(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE + 32));
    // Inside a quoted value: its closing character, its first MAX characters and its size.
    let mut quoted: Option<(char, String, usize, usize)> = None;
    let close_run = |out: &mut String, run: &str, chars: usize, bytes: usize| {
        if chars > MAX + SLACK {
            out.push_str(&escape(run.chars().take(MAX), false));
            out.push_str(&format!("… ({bytes} bytes)"));
        } else {
            out.push_str(&escape(run.chars(), false));
        }
    };
    for c in text.chars() {
        if c == '\n' {
            // Quotes never span lines in a message; a snippet's line may show only one quote.
            if let Some((_, run, chars, bytes)) = quoted.take() {
                close_run(&mut out, &run, chars, bytes);
            }
        }
        match &mut quoted {
            Some((close, run, chars, bytes)) if c == *close => {
                close_run(&mut out, run, *chars, *bytes);
                out.push(c);
                quoted = None;
            }
            Some((_, run, chars, bytes)) => {
                *chars += 1;
                *bytes += c.len_utf8();
                // Room for a marker a value cut before may carry: cutting twice changes nothing.
                if *chars <= MAX + SLACK {
                    run.push(c);
                }
            }
            None => {
                out.push_str(&escape(std::iter::once(c), true));
                if c == '"' || c == '`' {
                    quoted = Some((c, String::new(), 0, 0));
                }
            }
        }
        if out.len() > MAX_MESSAGE {
            let cut: String = out.chars().take(MAX_MESSAGE).collect();
            return format!("{cut}… ({} bytes)", text.len());
        }
    }
    if let Some((_, run, chars, bytes)) = quoted {
        close_run(&mut out, &run, chars, bytes);
    }
    out
}

/// Characters past [`MAX`] a quoted value may have before [`message`] cuts it: enough for the
/// "… (N bytes)" that [`echo`] adds, so bounding a bounded message changes nothing.
const SLACK: usize = 24;

fn escape(chars: impl Iterator<Item = char>, keep_newlines: bool) -> String {
    let mut out = String::new();
    for c in chars {
        match c {
            '\n' if keep_newlines => out.push(c),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_say_how_long_they_were() {
        let long = "x".repeat(50_000_000);
        let e = echo(&long);
        assert!(e.starts_with(&"x".repeat(MAX)), "{}", &e[..10]);
        assert!(e.ends_with("… (50000000 bytes)"), "{}", &e[MAX..]);
        assert_eq!(echo("short"), "short");
    }

    #[test]
    fn echoing_twice_changes_nothing_and_escapes_count_toward_the_bound() {
        let long = "y".repeat(5000);
        assert_eq!(echo(&echo(&long)), echo(&long));
        let escapes = "\x1b[2J".repeat(1000);
        let e = echo(&escapes);
        let shown = e.strip_suffix("… (4000 bytes)").expect(&e);
        assert!(shown.chars().count() <= MAX, "{e}");
        assert!(
            shown.starts_with("\\u{1b}[2J") && !e.contains('\x1b'),
            "{e}"
        );
        assert_eq!(echo(&e), e);
        assert_eq!(echo("a\0b"), "a\\0b");
        assert_eq!(echo(&echo("a\0b")), "a\\0b");
        // Text that only looks cut is kept only while it is within the bound.
        let fake = format!("{}… (3 bytes)", "z".repeat(MAX + 1));
        assert!(echo(&fake).ends_with(&format!("… ({} bytes)", fake.len())));
    }

    #[test]
    fn control_characters_and_nul_are_escaped() {
        assert_eq!(echo("a\0b\x1b[31mc\rd\ne"), "a\\0b\\u{1b}[31mc\\rd\\ne");
        assert_eq!(message("line\nnext\0"), "line\nnext\\0");
    }

    #[test]
    fn a_message_cuts_each_quoted_value() {
        let value = "9".repeat(10_000);
        let m = message(&format!(
            "invalid value \"{value}\": expected a number, not `{value}`"
        ));
        assert!(m.len() < 2 * MAX + 200, "{}", m.len());
        assert!(m.starts_with(&format!(
            "invalid value \"{}… (10000 bytes)\"",
            "9".repeat(MAX)
        )));
        assert!(m.contains(": expected a number, not `"), "{m}");
        let unclosed = message(&format!("oops \"{value}"));
        assert!(unclosed.ends_with("… (10000 bytes)"), "{unclosed}");
        assert_eq!(message(&m), m, "bounding twice changes nothing");
        let snippet = message(&format!("  1 | x = \"{value}…\n    |     ^^^"));
        assert!(
            snippet.ends_with("… (10003 bytes)\n    |     ^^^"),
            "{snippet}"
        );
        let huge = message(&"y ".repeat(100_000));
        assert!(huge.len() < MAX_MESSAGE + 100 && huge.ends_with("(200000 bytes)"));
    }
}
