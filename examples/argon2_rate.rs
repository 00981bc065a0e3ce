//! This machine's raw Argon2id rate at the service's parameters, on every core: the ceiling for
//! signups. `cargo run --release --example argon2_rate -- <seconds>`; prints hashes per second,
//! measured for `<seconds>` each way the service hashes:
//!
//! - one at a time, as the service hashes a lone client's signups, each waiting for the one
//!   before: each hash installed on a pool of one thread per core, which computes its lanes side
//!   by side, as in the service. Hashing from outside the pool instead, as this did before, sends
//!   each of the eight meetings of a hash's lanes through rayon's queue from outside: 6-17% fewer
//!   hashes per second (four pairs of 8 s runs, alternated), a ceiling set too low;
//! - as many at once as there are cores, each hash's lanes side by side on that same pool;
//! - as many at once as there are cores, each hash computing its lanes one after the other on its
//!   own thread, as the service hashes under a signup load.
//!
//! Each thread reuses one buffer, as the service's hashers do: allocating 19 MiB per hash costs
//! page faults that are the allocator's, not Argon2's, and would lower the ceiling.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use argon2::{Block, Params};

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let one_at_a_time = rate(seconds, 1, Lanes::SideBySide);
    let side_by_side = rate(seconds, cores, Lanes::SideBySide);
    let own_thread = rate(seconds, cores, Lanes::OwnThread);
    println!(
        "{{\"cores\":{cores},\"one_at_a_time_per_second\":{one_at_a_time:.1},\"side_by_side_per_second\":{side_by_side:.1},\"own_threads_per_second\":{own_thread:.1}}}"
    );
}

/// Where a hash's lanes are computed.
#[derive(Clone, Copy)]
enum Lanes {
    /// Side by side, on a pool of one thread per core.
    SideBySide,
    /// One after the other, on the hashing thread.
    OwnThread,
}

/// Hashes per second with `threads` threads hashing at once for `seconds`.
fn rate(seconds: u64, threads: usize, lanes: Lanes) -> f64 {
    let shared = rayon::ThreadPoolBuilder::new().build().expect("the OS starts a thread");
    let done = AtomicBool::new(false);
    let hashes = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                // A pool of one either way, as each of the service's hasher threads is, whichever
                // pool its hash's lanes then go to.
                let own = users_api::hasher::this_thread_as_a_pool();
                let pool = match lanes {
                    Lanes::SideBySide => &shared,
                    Lanes::OwnThread => &own,
                };
                let argon2 = users_api::hasher::argon2();
                let mut memory = vec![Block::default(); argon2.params().block_count()];
                let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
                while !done.load(Ordering::Relaxed) {
                    let salt = argon2::password_hash::generate_salt();
                    pool.install(|| {
                        argon2
                            .hash_password_into_with_memory(b"bench-passphrase", &salt, &mut output, &mut memory)
                            .expect("hashing works")
                    });
                    hashes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        done.store(true, Ordering::Relaxed);
    });
    hashes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
