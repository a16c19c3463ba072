//! The simulated world of tests/simulation.rs.

mod actors;
mod deliver;
mod invariants;
pub mod model;
pub mod world;
