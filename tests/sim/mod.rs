//! The simulated world of tests/simulation.rs.

mod actors;
pub mod model;
pub mod world;
