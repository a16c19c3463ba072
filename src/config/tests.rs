//! Unit tests of the configuration: file, flags, errors, the key table.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::error::edit_distance;
use super::file::read_at_most;
use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, text).unwrap();
    load_file(&path).map_err(|mut e| {
        e.origin = e.origin.replace(&path.display().to_string(), "app.toml");
        e
    })
}

#[test]
fn full_file_is_read() {
    let cfg = load(
        r#"
command = ["node", "app.js"]
workers = 3
listen = ["127.0.0.1:8080", "[::1]:8081", "unix:/run/x.sock"]
stop_signal = "INT"
stop_timeout = "5s"
socket_mode = "0660"
[env]
NODE_ENV = "production"
"#,
    )
    .unwrap();
    assert_eq!(cfg.command, ["node", "app.js"]);
    assert_eq!(cfg.workers, Workers::Count(3));
    assert_eq!(cfg.listen.len(), 3);
    assert_eq!(cfg.stop_signal, Signal::SIGINT);
    assert_eq!(cfg.stop_timeout, Duration::from_secs(5));
    assert_eq!(cfg.socket_mode, Some(0o660));
    assert_eq!(cfg.env["NODE_ENV"], "production");
}

#[test]
fn errors_name_line_field_and_choices() {
    let e = load("command = [\"x\"]\nworkers = \"eight\"\n").unwrap_err();
    assert_eq!(e.origin, "app.toml:2:11");
    assert_eq!(e.field.as_deref(), Some("workers"));
    assert!(e.message.contains("\"auto\" or a whole number"), "{e}");

    let e = load("wrokers = 4\n").unwrap_err();
    assert!(e.message.contains("did you mean `workers`"), "{e}");
    assert_eq!(e.origin, "app.toml:1:1");

    let e = load("stop_timeout = 30\n").unwrap_err();
    assert!(e.message.contains("write \"30s\""), "{e}");
}

#[test]
fn snippet_points_at_value() {
    let e = load("workers = 0\n").unwrap_err();
    let snippet = e.snippet.unwrap();
    assert!(snippet.contains("1 | workers = 0"), "{snippet}");
    assert!(snippet.ends_with("          ^"), "{snippet:?}");
}

#[test]
fn flags_override_and_validate() {
    let mut cfg = Config::default();
    assert!(apply_flag(&mut cfg, "workers", "4").unwrap());
    assert_eq!(cfg.workers, Workers::Count(4));
    let e = apply_flag(&mut cfg, "stop-timeout", "soon").unwrap_err();
    assert_eq!(e.origin, "--stop-timeout");
    assert!(!apply_flag(&mut cfg, "nonsense", "1").unwrap());
}

#[test]
fn reload_canary_comes_from_file_and_flag() {
    assert_eq!(Config::default().reload_canary, Duration::from_secs(1));
    let cfg = load("reload_canary = \"2s\"\n").unwrap();
    assert_eq!(cfg.reload_canary, Duration::from_secs(2));
    for zero in ["reload_canary = \"0\"\n", "reload_canary = 0\n"] {
        assert_eq!(load(zero).unwrap().reload_canary, Duration::ZERO, "{zero}");
    }
    let mut cfg = Config::default();
    assert!(apply_flag(&mut cfg, "reload-canary", "500ms").unwrap());
    assert_eq!(cfg.reload_canary, Duration::from_millis(500));
    assert!(apply_flag(&mut cfg, "reload-canary", "0").unwrap());
    assert_eq!(cfg.reload_canary, Duration::ZERO);
    assert!(cfg.to_toml().contains("reload_canary = \"0s\"\n"));

    let e = load("workers = 2\nreload_canary = \"soon\"\n").unwrap_err();
    assert_eq!(e.origin, "app.toml:2:17");
    assert_eq!(e.field.as_deref(), Some("reload_canary"));
    assert!(e.message.contains("invalid duration \"soon\""), "{e}");
    let e = load("reload_canary = 5\n").unwrap_err();
    assert!(e.message.contains("write \"5s\""), "{e}");
    let e = load("reload_canary = \"2h\"\n").unwrap_err();
    assert_eq!(e.origin, "app.toml:1:17");
    assert!(e.message.contains("expected from 0s to 1h"), "{e}");
    let e = apply_flag(&mut cfg, "reload-canary", "-1s").unwrap_err();
    assert_eq!(e.origin, "--reload-canary");
    // Zero needs no unit for this key only; the others keep asking for one.
    assert!(load("collapse_grace = 0\n").is_err());
}

#[test]
fn special_files_are_refused_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("x.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = load_file(&fifo).unwrap_err();
    assert_eq!(e.origin, fifo.display().to_string());
    assert_eq!(
        e.message,
        "is not a regular file (a FIFO): give the path of a .toml file"
    );
    let e = load_file(Path::new("/dev/zero")).unwrap_err();
    assert!(e.message.contains("(a character device)"), "{e}");
    let e = load_file(dir.path()).unwrap_err();
    assert!(e.message.starts_with("is a directory"), "{e}");
}

#[test]
fn reading_stops_one_byte_past_the_bound() {
    // An endless reader stands for a file that grows while it is read.
    let e = read_at_most(std::io::repeat(b'#'), 0).unwrap_err();
    assert!(e.contains("(more than 1048576 bytes)"), "{e}");
    let exact = vec![b'#'; MAX_CONFIG_BYTES as usize];
    assert_eq!(read_at_most(&exact[..], 0).unwrap().len(), exact.len());
    let over = vec![b'#'; MAX_CONFIG_BYTES as usize + 1];
    assert!(read_at_most(&over[..], 0).is_err());
}

#[test]
fn edit_distance_works() {
    assert_eq!(edit_distance("wrokers", "workers"), 2);
    assert_eq!(edit_distance("", "abc"), 3);
}

/// A value other than the default for every key that has a flag, as a flag would give it.
const SAMPLES: &[(&str, &str)] = &[
    ("workers", "3"),
    ("listen", "[::1]:8081"),
    ("metrics_listen", "127.0.0.1:9464"),
    ("backlog", "99"),
    ("socket_mode", "0660"),
    ("socket_user", "nobody"),
    ("socket_group", "nogroup"),
    ("env", "NODE_ENV=production"),
    ("working_directory", "/srv/app"),
    ("stop_signal", "INT"),
    ("kill_mode", "control-group"),
    ("stop_timeout", "5s"),
    ("restart_delay", "200ms"),
    ("restart_delay_max", "20s"),
    ("min_uptime", "2s"),
    ("restart_burst", "7"),
    ("restart_interval", "1m"),
    ("cpu_affinity", "true"),
    ("syslog_identifier", "web"),
    ("stdout_priority", "notice"),
    ("stderr_priority", "warning"),
    ("log_level", "debug"),
    ("ready", "notify"),
    ("ready_timeout", "9s"),
    ("ready_quorum", "50%"),
    ("worker_watchdog", "10s"),
    ("worker_watchdog_grace", "2s"),
    ("collapse_grace", "0s"),
    ("max_memory", "512M"),
    ("worker_memory_max", "256M"),
    ("memory_check_interval", "2s"),
    ("max_lifetime", "6h"),
    ("max_lifetime_jitter", "30m"),
    ("name", "web@1"),
    ("runtime_dir", "/run/web"),
    ("reload_surge", "all"),
    ("reload_canary", "0"),
    ("rlimit_nofile", "4096"),
    ("umask", "0077"),
    ("oom_score_adj", "-5"),
    ("user", "nobody"),
    ("group", "nogroup"),
    ("supplementary_groups", "adm,staff"),
    ("ambient_capabilities", "net_bind_service"),
    ("no_new_privileges", "false"),
    ("allow_root_workers", "false"),
];

#[test]
fn every_key_has_help_and_a_sample_and_its_flag_changes_it() {
    let defaults = Config::default();
    for key in TABLE {
        assert!(!key.help.trim().is_empty(), "{} has no help", key.name);
        if key.arg.is_none() {
            continue;
        }
        let (_, value) = SAMPLES
            .iter()
            .find(|(k, _)| *k == key.name)
            .unwrap_or_else(|| panic!("{} has no sample here", key.name));
        let mut cfg = Config::default();
        assert!(apply_flag(&mut cfg, &key.name.replace('_', "-"), value).unwrap());
        assert!((key.changed)(&defaults, &cfg), "--{} {value}", key.name);
    }
}

/// `check` prints what the file parser reads back to the same settings, for the defaults and
/// for a value other than the default in every key.
#[test]
fn check_output_reads_back_to_the_same_settings() {
    let mut cfg = Config {
        command: vec!["node".into(), "app.js".into()],
        ..Config::default()
    };
    let flags: Vec<(String, String)> = SAMPLES
        .iter()
        .map(|(k, v)| (k.replace('_', "-"), v.to_string()))
        .collect();
    for start in [Config::default(), {
        apply_flags(&mut cfg, &flags).unwrap();
        cfg
    }] {
        let printed = start.to_toml();
        let again =
            parse(&printed, Path::new("check.toml")).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        for key in TABLE {
            assert!(
                (key.show)(&start) == (key.show)(&again),
                "{} differs after:\n{printed}",
                key.name
            );
        }
        assert_eq!(start.agents, again.agents, "after:\n{printed}");
    }
}

/// The same for the agents' tables: one that sets every key (with values that need quoting),
/// one that sets only its command and runs with the pool's values, printed as comments.
#[test]
fn check_output_reads_back_to_the_same_agents() {
    let text = r#"
command = ["node", "app.js"]
ready = "notify"
stop_timeout = "5s"
working_directory = "/"

[agent.scheduler]
command = ["node", "sched \"quoted\".js", "--tz=UTC"]
working_directory = "/srv/app dir"
ready = "2s"
ready_timeout = "90s"
stop_signal = "SIGINT"
stop_timeout = "1m 30s"
sockets = ["metrics", "http", "name with spaces"]
start = "before-workers"
[agent.scheduler.env]
QUEUE = "jobs \"now\""
EMPTY = ""

[agent.bare-1]
command = ["consumer"]
"#;
    let start = parse(text, Path::new("app.toml")).unwrap();
    assert_eq!(start.agents.len(), 2);
    let printed = start.to_toml();
    let again =
        parse(&printed, Path::new("check.toml")).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(start.agents, again.agents, "after:\n{printed}");
    for (a, b) in start.agents.iter().zip(&again.agents) {
        assert_eq!(a.settings(&start), b.settings(&again), "{}", a.name);
    }
    // And once more: check's output is a fixed point.
    assert_eq!(
        again.to_toml().lines().skip(1).collect::<Vec<_>>(),
        printed.lines().skip(1).collect::<Vec<_>>()
    );
}

#[test]
fn repeated_flags_replace_the_file_list_then_add() {
    let mut cfg = load("listen = [\"127.0.0.1:1\"]\n").unwrap();
    let flags = [
        ("listen", "127.0.0.1:2"),
        ("listen", "127.0.0.1:3"),
        ("env", "A=1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    apply_flags(&mut cfg, &flags).unwrap();
    let shown: Vec<String> = cfg.listen.iter().map(|a| a.to_string()).collect();
    assert_eq!(shown, ["127.0.0.1:2", "127.0.0.1:3"]);
}

#[test]
fn errors_point_at_the_element_or_table_key() {
    let e = load("listen = [\"127.0.0.1:1\", \"nowhere\"]\n").unwrap_err();
    assert_eq!(e.origin, "app.toml:1:26", "{e}");
    let e = load("[env]\nPORT = 8080\n").unwrap_err();
    assert_eq!(
        (e.origin.as_str(), e.field.as_deref()),
        ("app.toml:2:8", Some("env.PORT"))
    );
    assert!(
        e.message
            .contains("invalid type: integer `8080`, expected a string"),
        "{e}"
    );
    let e = load("workers = 1.5\n").unwrap_err();
    assert!(
        e.message.contains("invalid type: floating point `1.5`"),
        "{e}"
    );
    let e = load("workers = 99999999999999999999999\n").unwrap_err();
    assert!(
        e.message
            .starts_with("invalid value 99999999999999999999999: expected"),
        "{e}"
    );
    let e = load("stop_timeout = -5\n").unwrap_err();
    assert!(e.message.contains("cannot be negative"), "{e}");
    let e = load("server = 1\n").unwrap_err();
    assert!(e.message.contains("preforkd.toml(5) lists the keys"), "{e}");
}

#[test]
fn a_port_above_65535_is_named_out_of_range() {
    for (text, port) in [
        ("127.0.0.1:70000", "port 70000"),
        ("[::1]:65536", "port 65536"),
        ("0.0.0.0:99999999999999999999999", "the port"),
    ] {
        let e = load(&format!("listen = [\"{text}\"]\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("listen"), "{e}");
        assert!(
            e.message
                .ends_with(&format!("{port} is out of range; a port is 1–65535")),
            "{e}"
        );
    }
    let mut cfg = Config::default();
    let e = apply_flag(&mut cfg, "metrics-listen", "127.0.0.1:65536").unwrap_err();
    assert!(e.message.contains("port 65536 is out of range"), "{e}");
    assert!(load("listen = [\"127.0.0.1:65535\"]\n").is_ok());
    // Not an address with a bad port, but no address at all: the general words.
    for text in ["localhost:70000", "127.0.0.1:-1", "127.0.0.1:"] {
        let e = load(&format!("listen = [\"{text}\"]\n")).unwrap_err();
        assert!(e.message.contains("expected an address such as"), "{e}");
    }
}
