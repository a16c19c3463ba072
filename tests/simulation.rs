//! Deterministic simulation of the supervisor's core: a seeded world of workers, operators and
//! clocks drives `Core::handle` through random event orders and checks invariants after every
//! step (FoundationDB's and TigerBeetle's technique, applied to a process supervisor).
//!
//! The world plays the shell's part exactly as `src/supervisor/` does: a spawn answers with
//! its fork outcome at once and with its exec outcome later; a child's exec outcome always
//! comes before its exit; exits are handled before anything else of a wake-up, and the rest of
//! a wake-up in `by_priority` order. Workers exec or fail (ENOENT, ENOEXEC, EACCES, EAGAIN),
//! become ready or never, crash, hang, ignore SIGTERM, send any datagram or have helpers that
//! do; operators signal, reload good, bad, larger, smaller and readiness-changing configs,
//! scale and ask for status; the clock jumps.
//!
//! `cargo test` runs 10 000 sequences of 200 events. More:
//!   PREFORKD_SIM_SEQUENCES=1000000 cargo test --release --test simulation
//! A failure prints its seed and the event trace; `PREFORKD_SIM_SEED=<n>` replays that one.

mod sim;

use std::time::Instant;

use preforkd::supervisor::core::Event;
use sim::model::STEPS;
use sim::world::World;

/// Runs one sequence; None, or the failure with its seed.
fn run(seed: u64) -> Result<(), String> {
    let result = std::panic::catch_unwind(|| {
        let mut world = World::new(seed);
        world.wake(vec![Event::Start], vec![]);
        for _ in 0..STEPS {
            if world.exited.is_some() {
                break;
            }
            world.step();
        }
        world.converge();
        world.finish();
    });
    result.map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("seed {seed} failed (replay: PREFORKD_SIM_SEED={seed}):\n{msg}")
    })
}

#[test]
fn no_event_order_breaks_the_core() {
    if let Ok(seed) = std::env::var("PREFORKD_SIM_SEED") {
        let seed: u64 = seed.parse().expect("PREFORKD_SIM_SEED is a number");
        if let Err(e) = run(seed) {
            panic!("{e}");
        }
        return;
    }
    let sequences: u64 = std::env::var("PREFORKD_SIM_SEQUENCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let first: u64 = std::env::var("PREFORKD_SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // Quiet the default hook: a failure is reported once, with its seed.
    std::panic::set_hook(Box::new(|_| {}));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let started = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (first + t..first + sequences)
                        .step_by(threads as usize)
                        .find_map(|seed| run(seed).err())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    });
    let _ = std::panic::take_hook();
    println!(
        "{sequences} sequences of up to {STEPS} steps in {:.1?}",
        started.elapsed()
    );
    if let Some(f) = failures.first() {
        panic!("{f}");
    }
}
