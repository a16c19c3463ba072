//! Support for tests/systemd_e2e.rs: the containers, and the checks made in them.

pub(crate) mod checks;
pub(crate) mod container;
