//! Connection threads, kept for reuse and started off the accept path.
//!
//! Every connection is served by a thread of its own (a `/sleep` or a slow client holds only
//! its own thread), but the acceptor never starts one: it queues the connection and goes
//! straight back to `accept4()`. A thread that has finished a connection parks here and takes
//! the next one; when none is parked, a spawner thread starts more.
//!
//! Why: starting a thread (clone, a stack mapping, its first scheduling) costs more than a
//! whole Connection: close request. Done by the acceptor between two `accept4()` calls, as the
//! demo used to, it capped the connections per second and kept the worker out of the shared
//! accept queue during bursts; with threads reused, the same two workers served about a fifth
//! more connections per second and their p99 latency fell from ~25 ms to ~2 ms
//! (bench/README.md).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use super::conn::{serve_connection, Conn};
use super::server::{wake_signal, ConnectionSlot};

const STACK_BYTES: usize = 256 * 1024;
/// A parked thread that gets no connection for this long ends, so a burst's threads do not
/// stay forever.
const PARKED_FOR_AT_MOST: Duration = Duration::from_secs(30);

/// A connection and the slot it holds in the worker's limit.
pub type Job = (Conn, ConnectionSlot);

#[derive(Default)]
pub struct Pool {
    state: Mutex<State>,
    /// A job was queued for the parked threads.
    handed_over: Condvar,
    /// More jobs are queued than threads are parked or starting.
    short_of_threads: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Threads waiting in `park`.
    parked: usize,
    /// Threads the spawner started that have not parked yet.
    starting: usize,
}

impl State {
    fn short_of_threads(&self) -> bool {
        self.jobs.len() > self.parked + self.starting
    }
}

impl Pool {
    /// Starts the spawner thread; it lives as long as the process.
    pub fn start() -> io::Result<Arc<Pool>> {
        let pool = Arc::new(Pool::default());
        let spawner = Arc::clone(&pool);
        thread::Builder::new()
            .name("hw-spawn".into())
            .spawn(move || {
                // Kicks are meant for the acceptor only.
                let _ = wake_signal().thread_block();
                spawner.spawn_on_demand();
            })?;
        Ok(pool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards a queue and counts that are consistent after every statement.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` for a parked thread, asking for a new one if none is free. Never blocks
    /// for longer than the lock.
    pub fn run(&self, job: Job) {
        let mut state = self.lock();
        state.jobs.push_back(job);
        let short = state.short_of_threads();
        drop(state);
        self.handed_over.notify_one();
        if short {
            self.short_of_threads.notify_one();
        }
    }

    fn spawn_on_demand(self: Arc<Self>) {
        let mut state = self.lock();
        loop {
            while !state.short_of_threads() {
                state = self
                    .short_of_threads
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.starting += 1;
            drop(state);
            let pool = Arc::clone(&self);
            let started = thread::Builder::new()
                .name("hw-conn".into())
                .stack_size(STACK_BYTES)
                .spawn(move || pool.serve());
            state = self.lock();
            if let Err(err) = started {
                state.starting -= 1;
                // Queued connections wait for a thread that finishes; try again shortly.
                eprintln!("{}: cannot start a connection thread: {err}", super::PROG);
                drop(state);
                thread::sleep(Duration::from_millis(100));
                state = self.lock();
            }
        }
    }

    fn serve(&self) {
        let mut state = self.lock();
        state.starting -= 1;
        while let Some((conn, slot)) = self.park(state) {
            serve_connection(conn, &slot.0);
            drop(slot);
            state = self.lock();
        }
    }

    /// Waits for the next job; None when none came for a while.
    fn park<'a>(&'a self, mut state: MutexGuard<'a, State>) -> Option<Job> {
        state.parked += 1;
        loop {
            if let Some(job) = state.jobs.pop_front() {
                state.parked -= 1;
                return Some(job);
            }
            let (next, timeout) = self
                .handed_over
                .wait_timeout(state, PARKED_FOR_AT_MOST)
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            if timeout.timed_out() && state.jobs.is_empty() {
                state.parked -= 1;
                return None;
            }
        }
    }
}
