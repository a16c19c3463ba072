//! preforkd runs a socket-activated server on every core under systemd.
//!
//! systemd (or preforkd itself) opens the listen sockets; preforkd forks one worker per core,
//! each exec'ing the app with the sockets at fd 3.. and `LISTEN_*` set for it, so any app that
//! speaks systemd socket activation runs unchanged and accepts connections directly from the
//! kernel. preforkd replaces workers that die, backs off when they keep dying, and on SIGTERM,
//! SIGINT or SIGQUIT lets them finish their requests before it exits.
//!
//! Modules, from the edges in: [`cli`] (command line), [`config`] (TOML and flags), [`sockets`]
//! (LISTEN_FDS or bind), [`spawn`] (fork + exec, the only process-level `unsafe`),
//! [`restart`] (back-off policy), [`signals`], [`notify`] (to systemd), [`relay`] (the workers'
//! notify socket), [`control`] and [`status`] (`preforkd status` and `reload`), [`runtime_dir`],
//! [`log`], [`echo`] (how outside input is quoted), [`metrics`] (the `/metrics` endpoint), [`top`] (`status --watch`), and [`supervisor`]: its `core` makes every
//! decision as a pure state machine, its shell carries them out. The demo app behind
//! `preforkd hello-worker` is not here: it lives in the binary (src/demo/).

pub mod cli;
pub mod config;
pub mod control;
pub mod echo;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod privileges;
pub mod relay;
pub mod restart;
pub mod runtime_dir;
pub mod signals;
pub mod sockets;
pub mod spawn;
pub mod status;
pub mod supervisor;
pub mod top;

/// preforkd's exit codes (sysexits.h where one fits).
pub mod exit {
    /// Stopped on request, every worker reaped.
    pub const OK: i32 = 0;
    /// The command line is malformed (unknown option, missing value).
    pub const USAGE: i32 = 64;
    /// The workers kept failing to start; preforkd gave up so systemd's `Restart=` can act.
    pub const UNAVAILABLE: i32 = 69;
    /// The system refused: a socket could not be bound, signals could not be set up.
    pub const OSERR: i32 = 71;
    /// The runtime directory is not safe to use: another user could reach into it.
    pub const CANTCREAT: i32 = 73;
    /// `preforkd status` / `reload`: the instance runs but was too busy to take the request in
    /// time; asking again later may work.
    pub const TEMPFAIL: i32 = 75;
    /// The configuration is invalid: file, flags, command, or the LISTEN_* environment.
    pub const CONFIG: i32 = 78;
    /// `preforkd status` / `reload`: no instance answers there (as `systemctl status` uses 3).
    pub const NOT_RUNNING: i32 = 3;
    /// `preforkd status` / `reload`: asking failed some other way (such as permission denied),
    /// or the answer made no sense.
    pub const FAILED: i32 = 1;
    /// `preforkd reload`: the configuration was invalid or the new workers failed; the old
    /// generation keeps serving.
    pub const RELOAD_FAILED: i32 = 1;
}
