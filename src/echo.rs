//! Outside input echoed in messages, log lines, STATUS= and `preforkd status`: at most
//! [`MAX`] characters of any one value, cut with "… (N bytes)", and control characters (NUL,
//! escapes, carriage returns) shown escaped, so a value of any size or content can neither
//! flood a log, keep megabytes alive in STATUS=, nor forge or hide a line on a terminal.

/// Characters of one value that a message quotes.
pub const MAX: usize = 200;
/// A whole message, whatever it quotes.
const MAX_MESSAGE: usize = 2000;

/// One value: escaped, and cut to [`MAX`] characters.
pub fn echo(text: &str) -> String {
    let mut out = escape(text.chars().take(MAX), false);
    if text.chars().nth(MAX).is_some() {
        out.push_str(&format!("… ({} bytes)", text.len()));
    }
    out
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
