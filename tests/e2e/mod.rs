//! Support for tests/systemd_e2e.rs: the containers, and the checks made in them.

pub(crate) mod checks;
pub(crate) mod container;
pub(crate) mod recipes;
// The helper tests/recipes.rs and the others share: lines past libtest's capture.
#[path = "../common/say.rs"]
pub(crate) mod say;
