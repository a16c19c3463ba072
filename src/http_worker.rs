//! The built-in demo worker (`preforkd hello-worker`). To be written.
pub fn main(_args: &[String]) -> i32 { 0 }
