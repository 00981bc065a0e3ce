//! This machine's raw Argon2id rate at the service's parameters: the ceiling for signups.
//! `cargo run --release --example argon2_rate -- <seconds>`; prints hashes per second, measured
//! for `<seconds>` each way:
//!
//! - one at a time, each waiting for the one before: all a lone client's signups can use, since a
//!   hash in one lane (p=1) runs on one core;
//! - as many at once as there are cores, each on a thread of its own: the machine's rate on every
//!   core, as the service's hasher threads hash under a signup load.
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
    let one_at_a_time = rate(seconds, 1);
    let every_core = rate(seconds, cores);
    println!(
        "{{\"cores\":{cores},\"one_at_a_time_per_second\":{one_at_a_time:.1},\"every_core_per_second\":{every_core:.1}}}"
    );
}

/// Hashes per second with `threads` threads hashing at once for `seconds`.
fn rate(seconds: u64, threads: usize) -> f64 {
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
                    argon2
                        .hash_password_into_with_memory(b"bench-passphrase", &salt, &mut output, &mut memory)
                        .expect("hashing works");
                    hashes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        done.store(true, Ordering::Relaxed);
    });
    hashes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
