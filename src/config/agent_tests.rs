//! Unit tests of the `[agent.NAME]` tables: reading, errors, the pool's values, sockets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::*;

fn read(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("app.toml"))
}

fn error(text: &str) -> ConfigError {
    read(text).expect_err(text)
}

#[test]
fn agents_are_read_in_file_order_with_every_key() {
    let cfg = read(
        r#"
command = ["node", "app.js"]

[agent.zz-scheduler]
command = ["node", "scheduler.js"]
working_directory = "/srv/app"
ready = "notify"
ready_timeout = "5s"
stop_signal = "INT"
stop_timeout = "2s"
sockets = ["metrics", "http"]
start = "before-workers"

[agent.zz-scheduler.env]
QUEUE = "jobs"

[agent.a_consumer]
command = ["consumer"]
"#,
    )
    .unwrap();
    let names: Vec<&str> = cfg.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["zz-scheduler", "a_consumer"], "the file's order");
    let s = cfg.agent("zz-scheduler").unwrap();
    assert_eq!(s.command, ["node", "scheduler.js"]);
    assert_eq!(s.env["QUEUE"], "jobs");
    assert_eq!(s.working_directory.as_deref(), Some(Path::new("/srv/app")));
    assert_eq!(s.ready, Some(Readiness::Notify));
    assert_eq!(s.ready_timeout, Some(Duration::from_secs(5)));
    assert_eq!(s.stop_signal, Some(Signal::SIGINT));
    assert_eq!(s.stop_timeout, Some(Duration::from_secs(2)));
    assert_eq!(s.sockets, ["metrics", "http"]);
    assert_eq!(s.start, AgentStart::BeforeWorkers);
    let c = cfg.agent("a_consumer").unwrap();
    assert_eq!((c.ready, c.stop_timeout), (None, None));
    assert!(c.sockets.is_empty());
    assert_eq!(c.start, AgentStart::WithWorkers);
    // Dotted keys and inline tables are the same tables to TOML.
    let dotted = read("agent.x.command = [\"x\"]\nagent.y = { command = [\"y\"] }\n").unwrap();
    assert_eq!(dotted.agents.len(), 2);
    assert!(read("command = [\"x\"]\n").unwrap().agents.is_empty());
}

#[test]
fn an_agent_runs_with_the_pools_values_where_its_table_is_silent() {
    let cfg = read(
        r#"
command = ["app"]
working_directory = "/srv/app"
ready = "notify"
ready_timeout = "9s"
stop_signal = "SIGQUIT"
stop_timeout = "7s"
kill_mode = "control-group"
[env]
SHARED = "pool"
KEPT = "pool"

[agent.own]
command = ["own"]
working_directory = "/srv/own"
ready = "exec"
ready_timeout = "1s"
stop_signal = "SIGINT"
stop_timeout = "1s"
env = { SHARED = "agent", MINE = "yes" }

[agent.bare]
command = ["bare"]
"#,
    )
    .unwrap();
    let bare = cfg.agent("bare").unwrap().settings(&cfg);
    assert_eq!(bare.readiness, Readiness::Notify);
    assert_eq!(bare.ready_timeout, Duration::from_secs(9));
    assert_eq!(bare.stop_signal, Signal::SIGQUIT);
    assert_eq!(bare.stop_timeout, Duration::from_secs(7));
    assert_eq!(bare.kill_mode, KillMode::ControlGroup);
    assert_eq!(bare.working_directory, Some(PathBuf::from("/srv/app")));
    assert_eq!(bare.env, cfg.env);

    let own = cfg.agent("own").unwrap().settings(&cfg);
    assert_eq!(own.readiness, Readiness::Exec);
    assert_eq!(own.ready_timeout, Duration::from_secs(1));
    assert_eq!(own.stop_signal, Signal::SIGINT);
    assert_eq!(own.stop_timeout, Duration::from_secs(1));
    assert_eq!(own.working_directory, Some(PathBuf::from("/srv/own")));
    // The pool's env, then the agent's over it.
    let env: Vec<(&str, &str)> = own
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [("KEPT", "pool"), ("MINE", "yes"), ("SHARED", "agent")]
    );

    // Unset everywhere: the pool's own default rule.
    let plain = read("[agent.a]\ncommand = [\"a\"]\n").unwrap();
    let a = plain.agents[0].settings(&plain);
    assert_eq!(a.readiness, Readiness::Exec);
    assert_eq!(a.working_directory, None);
}

#[test]
fn errors_name_the_agent_and_key_and_point_at_the_value() {
    let e = error("[agent.scheduler]\ncommand = [\"x\"]\nstop_timeout = 30\n");
    assert_eq!(e.origin, "app.toml:3:16");
    assert_eq!(e.field.as_deref(), Some("agent.scheduler.stop_timeout"));
    assert!(e.message.contains("write \"30s\""), "{e}");
    assert!(e.snippet.unwrap().contains("3 | stop_timeout = 30"));

    let e = error("[agent.s]\ncommand = [\"x\"]\n[agent.s.env]\nPORT = 8080\n");
    assert_eq!(
        (e.origin.as_str(), e.field.as_deref()),
        ("app.toml:4:8", Some("agent.s.env.PORT"))
    );
    let e = error("[agent.s]\ncommand = [\"x\"]\nenv = { LISTEN_FDS = \"1\" }\n");
    assert_eq!(e.field.as_deref(), Some("agent.s.env.LISTEN_FDS"));
    assert!(e.message.contains("set by preforkd"), "{e}");

    let e = error("[agent.s]\ncommand = [\"x\", 5]\n");
    assert_eq!(e.origin, "app.toml:2:17", "the element: {e}");
    assert_eq!(e.field.as_deref(), Some("agent.s.command"));
    let e = error("[agent.s]\ncommand = []\n");
    assert!(e.message.contains("the command is empty"), "{e}");

    let e = error("[agent.s]\ncommand = [\"x\"]\nstart = \"after-workers\"\n");
    assert_eq!(e.field.as_deref(), Some("agent.s.start"));
    assert!(e.message.contains("\"before-workers\""), "{e}");
    assert!(e.message.contains("\"with-workers\""), "{e}");

    let e = error("[agent.s]\ncommand = [\"x\"]\nready = \"soon\"\n");
    assert_eq!(e.field.as_deref(), Some("agent.s.ready"));
    assert!(e.message.contains("\"notify\""), "{e}");
}

#[test]
fn unknown_keys_get_a_suggestion() {
    let e = error("[agent.s]\ncommand = [\"x\"]\nstop_timout = \"1s\"\n");
    assert_eq!(e.origin, "app.toml:3:1");
    assert_eq!(e.field.as_deref(), Some("agent.s"));
    assert!(e.message.contains("did you mean `stop_timeout`?"), "{e}");

    let e = error("[agent.s]\ncommand = [\"x\"]\nworkers = 2\n");
    assert!(
        e.message
            .contains("`workers` is a key of the worker pool, not of an agent"),
        "{e}"
    );
    let e = error("[agent.s]\ncommand = [\"x\"]\nfrobnicate = 2\n");
    assert!(e.message.contains("an agent takes command, env,"), "{e}");

    // The table's own name, misspelt at the top.
    let e = error("[agnet.s]\ncommand = [\"x\"]\n");
    assert!(e.message.contains("did you mean `agent`?"), "{e}");
}

#[test]
fn names_tables_and_commands_are_checked() {
    let e = error("[agent.\"my agent\"]\ncommand = [\"x\"]\n");
    assert_eq!(e.origin, "app.toml:1:8");
    assert!(e.message.contains("invalid agent name \"my agent\""), "{e}");
    let long = "a".repeat(MAX_AGENT_NAME + 1);
    let e = error(&format!("[agent.{long}]\ncommand = [\"x\"]\n"));
    assert!(e.message.contains("invalid agent name"), "{e}");
    let ok = "a".repeat(MAX_AGENT_NAME);
    assert!(read(&format!("[agent.{ok}]\ncommand = [\"x\"]\n")).is_ok());

    let e = error("command = [\"app\"]\n\n[agent.s]\nstart = \"before-workers\"\n");
    assert_eq!(e.origin, "app.toml:3:1", "the table's header: {e}");
    assert_eq!(e.field.as_deref(), Some("agent.s"));
    assert!(e.message.contains("agent \"s\" has no command"), "{e}");

    let e = error("[agent]\ncommand = [\"x\"]\n");
    assert_eq!(e.field.as_deref(), Some("agent.command"));
    assert!(e.message.contains("write [agent.NAME]"), "{e}");
    let e = error("agent = 5\n");
    assert_eq!(
        (e.origin.as_str(), e.field.as_deref()),
        ("app.toml:1:9", Some("agent"))
    );
    assert!(
        e.message.contains("expected a table such as [agent."),
        "{e}"
    );
    let e = error("[agent]\ns = \"x\"\n");
    assert_eq!(e.field.as_deref(), Some("agent.s"));
}

#[test]
fn socket_names_are_valid_and_listed_once() {
    let e = error("[agent.s]\ncommand = [\"x\"]\nsockets = [\"http\", \"grpc\", \"http\"]\n");
    assert_eq!(e.origin, "app.toml:3:28", "the second mention: {e}");
    assert_eq!(e.field.as_deref(), Some("agent.s.sockets"));
    assert!(e.message.contains("\"http\" is listed twice"), "{e}");
    let e = error("[agent.s]\ncommand = [\"x\"]\nsockets = [\"a:b\"]\n");
    assert!(e.message.contains("invalid socket name \"a:b\""), "{e}");
    let e = error("[agent.s]\ncommand = [\"x\"]\nsockets = \"http\"\n");
    assert!(e.message.contains("expected a list of socket names"), "{e}");
}

#[test]
fn socket_indices_follow_the_agents_order_and_name_what_there_is() {
    let cfg = read("[agent.s]\ncommand = [\"x\"]\nsockets = [\"metrics\", \"http\"]\n").unwrap();
    let agent = &cfg.agents[0];
    let names: Vec<String> = ["http", "metrics", "http"].map(String::from).into();
    // Every socket of a name, as systemd names all the sockets of one socket unit alike.
    assert_eq!(agent.socket_indices(&names).unwrap(), [1, 0, 2]);
    let names: Vec<String> = ["http", "unix", "http"].map(String::from).into();
    let e = agent.socket_indices(&names).unwrap_err();
    assert!(
        e.starts_with("no socket is named \"metrics\": the sockets are named \"http\", \"unix\" ("),
        "{e}"
    );
    let e = agent.socket_indices(&[]).unwrap_err();
    assert!(e.contains("preforkd holds no sockets"), "{e}");
    let none = read("[agent.n]\ncommand = [\"x\"]\n").unwrap();
    assert!(none.agents[0].socket_indices(&names).unwrap().is_empty());

    let e = cfg.check_agent_sockets(&names).unwrap_err();
    assert_eq!(
        (e.origin.as_str(), e.field.as_deref()),
        ("app.toml", Some("agent.s.sockets"))
    );
    assert!(cfg
        .check_agent_sockets(&["metrics".into(), "http".into()])
        .is_ok());
}

#[test]
fn finish_makes_working_directories_absolute_and_checks_them() {
    let mut cfg =
        read("command = [\"x\"]\n[agent.s]\ncommand = [\"x\"]\nworking_directory = \".\"\n")
            .unwrap();
    finish(&mut cfg).unwrap();
    let dir = cfg.agents[0].working_directory.clone().unwrap();
    assert!(dir.is_absolute(), "{}", dir.display());
    let mut cfg = read(
        "command = [\"x\"]\n[agent.s]\ncommand = [\"x\"]\nworking_directory = \"/nonexistent/x\"\n",
    )
    .unwrap();
    let e = finish(&mut cfg).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("agent.s.working_directory"));
    assert!(e.message.contains("is not an existing directory"), "{e}");
}

#[test]
fn programs_are_found_in_the_agents_path_and_directory() {
    let cfg = read(
        "command = [\"x\"]\n[env]\nPATH = \"/nonexistent\"\n\n[agent.a]\ncommand = [\"sh\"]\nenv = { PATH = \"/usr/bin:/bin\" }\n\n[agent.b]\ncommand = [\"sh\"]\n\n[agent.c]\ncommand = [\"./sh\"]\nworking_directory = \"/bin\"\n",
    )
    .unwrap();
    let found = cfg.agents[0].resolve_program(&cfg).unwrap();
    assert!(found.ends_with("sh"), "{}", found.display());
    // The pool's PATH where the agent sets none.
    let e = cfg.agents[1].resolve_program(&cfg).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("agent.b.command"));
    assert!(
        e.message.contains("not found in PATH (/nonexistent)"),
        "{e}"
    );
    let rel = cfg.agents[2].resolve_program(&cfg).unwrap();
    assert_eq!(rel, Path::new("/bin/sh"));
}

#[test]
fn check_prints_the_pools_values_as_comments() {
    let cfg = read(
        "command = [\"app\"]\nstop_timeout = \"7s\"\n[agent.s]\ncommand = [\"x\"]\nstop_signal = \"INT\"\n",
    )
    .unwrap();
    let printed = cfg.to_toml();
    let table = &printed[printed.find("[agent.s]").unwrap()..];
    assert!(table.contains("\nstop_signal = \"SIGINT\"\n"), "{table}");
    assert!(
        table.contains("\n# stop_timeout = \"7s\"  (the pool's)\n"),
        "{table}"
    );
    assert!(table.contains("\nstart = \"with-workers\"\n"), "{table}");
}
