//! This machine's raw Argon2id rate at the service's parameters, on every core: the ceiling for
//! signups. `cargo run --release --example argon2_rate -- <seconds>`; prints hashes per second,
//! measured for `<seconds>` each way the service hashes:
//!
//! - two at once on two cores (one thread per core hashing), as the service under load;
//! - one at a time, as the service hashes a lone client's signups, each waiting for the one
//!   before.
//!
//! Either way each hash is installed on a pool of one thread per core, which computes its lanes
//! side by side, as in the service. Hashing from outside the pool instead, as this did before,
//! sends each of the eight meetings of a hash's lanes through rayon's queue from outside: 6-17%
//! fewer hashes per second two at once (four pairs of 8 s runs, alternated), a ceiling set too low.
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
    let all_cores = rate(seconds, cores);
    let one_at_a_time = rate(seconds, 1);
    println!(
        "{{\"cores\":{cores},\"hashes_per_second\":{all_cores:.1},\"one_at_a_time_per_second\":{one_at_a_time:.1}}}"
    );
}

/// Hashes per second with `threads` threads hashing at once for `seconds`, each hash installed on
/// a pool of one thread per core for its lanes.
fn rate(seconds: u64, threads: usize) -> f64 {
    let lanes = rayon::ThreadPoolBuilder::new().build().expect("the OS starts a thread");
    let done = AtomicBool::new(false);
    let hashes = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let argon2 = users_api::hasher::argon2();
                let mut memory = vec![Block::default(); argon2.params().block_count()];
                let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
                while !done.load(Ordering::Relaxed) {
                    let salt = argon2::password_hash::generate_salt();
                    lanes.install(|| {
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
