//! Bad config files and what the error about each must say: used at start and on reload.

use std::path::{Path, PathBuf};

/// (file contents, fragments the error must contain)
pub const BAD_FILES: &[(&str, &[&str])] = &[
    (
        "command = [\"sleep\"]\nworkers = \"eight\"\n",
        &[
            "app.toml:2:11",
            "workers:",
            "\"auto\" or a whole number of workers from 1 to 4096",
        ],
    ),
    (
        "workers = 0\n",
        &["app.toml:1:11", "workers:", "invalid value 0"],
    ),
    ("workers = 100000\n", &["workers:", "invalid value 100000"]),
    (
        "wrokers = 4\n",
        &[
            "app.toml:1:1",
            "unknown field `wrokers`",
            "did you mean `workers`?",
        ],
    ),
    (
        "stop_timeout = 30\n",
        &["stop_timeout:", "a bare number has no unit; write \"30s\""],
    ),
    (
        "stop_timeout = \"30 parsecs\"\n",
        &["stop_timeout:", "invalid duration \"30 parsecs\""],
    ),
    (
        "stop_timeout = \"0s\"\n",
        &["stop_timeout:", "expected from 1ms"],
    ),
    (
        "stop_signal = \"SIGFOO\"\n",
        &["stop_signal:", "unknown signal \"SIGFOO\"", "\"SIGTERM\""],
    ),
    (
        "stop_signal = \"KILL\"\n",
        &["stop_signal:", "cannot be caught"],
    ),
    (
        "stop_signal = \"SIGCHLD\"\n",
        &["stop_signal:", "does not end a program"],
    ),
    (
        "min_uptime = \"0s\"\n",
        &["min_uptime:", "expected from 10ms"],
    ),
    (
        "command = [\"sleep\"]\nuser = \"no-such-user-xyz\"\n",
        &["user:", "no user \"no-such-user-xyz\""],
    ),
    (
        "command = [\"sleep\"]\nuser = \"nobody\"\ngroup = \"no-such-group-xyz\"\n",
        &["group:", "no group \"no-such-group-xyz\""],
    ),
    (
        "ambient_capabilities = [\"CAP_FLY\"]\n",
        &["ambient_capabilities:", "unknown capability \"CAP_FLY\""],
    ),
    ("rlimit_nofile = 10\n", &["rlimit_nofile:", "from 64 up"]),
    ("umask = \"0888\"\n", &["umask:", "invalid mode"]),
    (
        "oom_score_adj = 5000\n",
        &["oom_score_adj:", "from -1000 to 1000"],
    ),
    (
        "restart_delay = \"0ms\"\n",
        &["restart_delay:", "expected from 10ms"],
    ),
    ("ready = \"soon\"\n", &["ready:", "\"notify\""]),
    (
        "ready_quorum = \"150%\"\n",
        &["ready_quorum:", "from 1% to 100%"],
    ),
    (
        "worker_watchdog = \"1ms\"\n",
        &["worker_watchdog:", "at least 10ms"],
    ),
    ("name = \"../etc\"\n", &["name:", "it names a directory"]),
    (
        "reload_canary = \"soon\"\n",
        &[
            "app.toml:1:17",
            "reload_canary:",
            "invalid duration \"soon\"",
        ],
    ),
    (
        "listen = [\"localhost\"]\n",
        &[
            "app.toml:1:11",
            "listen:",
            "invalid listen address \"localhost\"",
            "unix:/run/app.sock",
        ],
    ),
    (
        "listen = [\"unix:relative.sock\"]\n",
        &["listen:", "must be absolute"],
    ),
    ("listen = [\"127.0.0.1:0\"]\n", &["listen:", "port 0"]),
    (
        "listen = [\"127.0.0.1:70000\"]\n",
        &["listen:", "port 70000 is out of range; a port is 1–65535"],
    ),
    (
        "listen = \"127.0.0.1:80\"\n",
        &["listen:", "invalid type: string"],
    ),
    ("command = []\n", &["command:", "the command is empty"]),
    (
        "command = \"node app.js\"\n",
        &["command:", "invalid type: string \"node app.js\""],
    ),
    ("backlog = 0\n", &["backlog:", "from 1 to 65535"]),
    (
        "socket_mode = \"0999\"\n",
        &["socket_mode:", "invalid mode \"0999\"", "octal"],
    ),
    (
        "[env]\nOK = \"1\"\n1BAD = \"x\"\n",
        &[
            "app.toml:3:1",
            "env.1BAD:",
            "invalid variable name \"1BAD\"",
        ],
    ),
    (
        "env = { LISTEN_FDS = \"3\" }\n",
        &["env.LISTEN_FDS:", "LISTEN_FDS is set by preforkd"],
    ),
    ("env = { PORT = 8080 }\n", &["invalid type: integer"]),
    (
        "log_level = \"verbose\"\n",
        &["log_level:", "\"error\", \"warning\", \"info\", \"debug\""],
    ),
    (
        "cpu_affinity = \"maybe\"\n",
        &["cpu_affinity:", "true or false"],
    ),
    (
        "restart_burst = -1\n",
        &["restart_burst:", "from 1 to 10000"],
    ),
    (
        "command = [\"sleep\"]\nrestart_delay = \"20s\"\n",
        &["restart_delay:", "longer than restart_delay_max (10s)"],
    ),
    ("workers = \n", &["app.toml:1:"]),
    ("[server]\nport = 1\n", &["unknown field `server`"]),
    (
        "command = [\"no-such-program-xyz\"]\n",
        &[
            "command:",
            "program \"no-such-program-xyz\" not found in PATH",
        ],
    ),
    (
        "command = [\"sleep\"]\nworking_directory = \"/no/such/dir\"\n",
        &[
            "working_directory:",
            "\"/no/such/dir\" is not an existing directory",
        ],
    ),
    ("workers = 2\n", &["command:", "no command to run"]),
    (
        "command = [\"sleep\"]\n[agent.s]\ncommand = [\"x\"]\nstop_timeout = 30\n",
        &[
            "app.toml:4:16",
            "agent.s.stop_timeout:",
            "a bare number has no unit; write \"30s\"",
        ],
    ),
    (
        "[agent.s]\ncommand = [\"x\"]\nstop_timout = \"1s\"\n",
        &[
            "app.toml:3:1",
            "agent.s:",
            "unknown field `stop_timout`; did you mean `stop_timeout`?",
        ],
    ),
    (
        "[agent.s]\ncommand = [\"x\"]\nworkers = 2\n",
        &["agent.s:", "`workers` is a key of the worker pool"],
    ),
    (
        "[agent.s]\ncommand = [\"x\"]\nstart = \"now\"\n",
        &["agent.s.start:", "\"before-workers\"", "\"with-workers\""],
    ),
    (
        "command = [\"sleep\"]\n[agent.s]\nready = \"exec\"\n",
        &["app.toml:2:1", "agent.s:", "agent \"s\" has no command"],
    ),
    (
        "[agent.\"a b\"]\ncommand = [\"x\"]\n",
        &["app.toml:1:8", "invalid agent name \"a b\""],
    ),
    (
        "[agent.s]\ncommand = [\"x\"]\nsockets = [\"http\", \"http\"]\n",
        &["app.toml:3:20", "agent.s.sockets:", "\"http\" is listed twice"],
    ),
    (
        "[agent.s]\ncommand = [\"x\"]\nenv = { NOTIFY_SOCKET = \"/x\" }\n",
        &["agent.s.env.NOTIFY_SOCKET:", "set by preforkd"],
    ),
    (
        "command = [\"sleep\"]\n[agent.s]\ncommand = [\"x\"]\nworking_directory = \"/no/such/dir\"\n",
        &[
            "agent.s.working_directory:",
            "\"/no/such/dir\" is not an existing directory",
        ],
    ),
];

/// Filler for the oversized file: it must never show up in a message.
pub const BIG_FILE_FILLER: &str = "# filler that no error message may echo\n";

/// Paths that are no config file at all, made in `dir` where they need making: (path,
/// fragments the error must contain). Reading any of them must neither block (a FIFO without
/// a writer) nor fill memory (/dev/zero), so each must be refused at once.
pub fn bad_paths(dir: &Path) -> Vec<(PathBuf, &'static [&'static str])> {
    let fifo = dir.join("x.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let link = dir.join("link.toml");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let zero_link = dir.join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero_link).unwrap();
    let big = dir.join("big.toml");
    std::fs::write(
        &big,
        BIG_FILE_FILLER.repeat(2 * 1024 * 1024 / BIG_FILE_FILLER.len() + 1),
    )
    .unwrap();
    let socket = dir.join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    vec![
        (
            fifo,
            &[
                "x.fifo: is not a regular file (a FIFO)",
                "give the path of a .toml file",
            ],
        ),
        (link, &["link.toml: is not a regular file (a FIFO)"]),
        (
            "/dev/zero".into(),
            &["/dev/zero: is not a regular file (a character device)"],
        ),
        (
            "/dev/urandom".into(),
            &["/dev/urandom: is not a regular file (a character device)"],
        ),
        (
            zero_link,
            &["zero.toml: is not a regular file (a character device)"],
        ),
        (
            big,
            &[
                "big.toml: is larger than 1 MiB (2097160 bytes)",
                "a preforkd config is a few KiB; is this the right file?",
            ],
        ),
        (socket, &["s.sock: is not a regular file (a socket)"]),
    ]
}
