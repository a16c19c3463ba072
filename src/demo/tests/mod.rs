//! Tests of the demo worker with real sockets: an in-process server for the HTTP behaviour,
//! and child processes (this test binary re-run as the worker) for signals and exit codes.
//! The pure parts (heads, routes, the handshake, connection rules) are tested in their modules.

mod client;
mod in_process;
mod process;

#[test]
fn unknown_arguments_are_rejected() {
    assert_eq!(super::main(&["--bogus".to_owned()]), super::EX_USAGE);
}
