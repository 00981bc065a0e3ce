//! This machine's raw Argon2id rate at the service's parameters, on every core: the ceiling for
//! signups. `cargo run --release --example argon2_rate -- <seconds>`; prints hashes per second.
//!
//! One thread per core hashes, each hash's lanes spread over rayon's pool of one thread per core,
//! as in the service.
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
    let done = AtomicBool::new(false);
    let hashes = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..cores {
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
    let rate = hashes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("{{\"cores\":{cores},\"hashes_per_second\":{rate:.1}}}");
}
