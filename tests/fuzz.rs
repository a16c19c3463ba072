//! Property tests for everything that parses input from outside: config files, sd_notify
//! datagrams, control requests. None may panic, whatever the bytes; errors must say where.
//!
//! A smoke run (256 cases each) is part of the suite. The long run:
//!   PROPTEST_CASES=1000000 cargo test --release --test fuzz
//! (cargo-fuzz needs a nightly toolchain, which this project's machines do not have.)

use std::path::Path;

use proptest::prelude::*;

use preforkd::config;
use preforkd::control;
use preforkd::notify;

/// Fragments a config file is made of, so generated files get past the TOML parser often
/// enough to reach the value checks.
fn config_text() -> impl Strategy<Value = String> {
    // The pool's keys and the agents' (which only mean something under an [agent.NAME]
    // header, and are misplaced anywhere else: both must be told plainly).
    let keys: Vec<&str> = config::KEYS
        .iter()
        .chain(config::AGENT_KEYS)
        .copied()
        .collect();
    let key = prop::sample::select(keys);
    let value = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        "[a-z0-9%\\. ]{0,12}".prop_map(|s| format!("\"{s}\"")),
        prop::collection::vec("[a-zA-Z0-9:/_\\-\\.\\[\\]]{0,10}", 0..4).prop_map(|v| format!(
            "[{}]",
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Just("true".to_owned()),
        Just("{ A = \"1\" }".to_owned()),
        ".{0,20}",
    ];
    let line = prop_oneof![
        8 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => Just("[env]".to_owned()),
        1 => prop::sample::select(vec!["[agent.a]", "[agent.b-2]", "[agent.a.env]", "[agent]"])
            .prop_map(str::to_owned),
        1 => ".{0,30}",
    ];
    prop::collection::vec(line, 0..8).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #[test]
    fn config_files_never_panic_and_errors_say_where(text in config_text()) {
        if let Err(e) = config::parse(&text, Path::new("fuzz.toml")) {
            prop_assert!(e.origin.starts_with("fuzz.toml"), "{e}");
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn arbitrary_text_as_config_never_panics(text in ".{0,200}") {
        let _ = config::parse(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn flags_never_panic(key in prop::sample::select(config::KEYS.to_vec()), value in ".{0,40}") {
        let mut cfg = config::Config::default();
        let _ = config::apply_flag(&mut cfg, &key.replace('_', "-"), &value);
    }

    #[test]
    fn notify_datagrams_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..5000)) {
        let _ = notify::parse(&bytes);
    }

    #[test]
    fn notify_messages_mean_what_they_say(
        ready in any::<bool>(),
        watchdog in any::<bool>(),
        status in "[^\n\0]{0,300}",
        junk in prop::collection::vec("[A-Z_]{1,10}=[^\n\0]{0,20}", 0..5),
    ) {
        let mut lines: Vec<String> = junk;
        if ready { lines.push("READY=1".into()); }
        if watchdog { lines.push("WATCHDOG=1".into()); }
        lines.push(format!("STATUS={status}"));
        let msg = notify::parse(lines.join("\n").as_bytes()).unwrap();
        prop_assert_eq!(msg.ready, ready || lines.iter().any(|l| l == "READY=1"));
        prop_assert_eq!(msg.watchdog, watchdog || lines.iter().any(|l| l == "WATCHDOG=1"));
        let expected = preforkd::echo::echo(&status);
        prop_assert_eq!(msg.status.as_deref(), Some(expected.as_str()));
    }

    #[test]
    fn control_requests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let parsed = control::parse_request(&bytes);
        if parsed.is_some() {
            let text = String::from_utf8_lossy(&bytes);
            prop_assert!(matches!(text.trim(), "status" | "reload"), "{text:?}");
        }
    }
}
