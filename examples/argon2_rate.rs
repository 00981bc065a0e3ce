//! This machine's raw Argon2id rate at the service's parameters, on every core: the ceiling for
//! signups. `cargo run --release --example argon2_rate -- <seconds>`; prints hashes per second.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use argon2::{Argon2, PasswordHasher};

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let done = AtomicBool::new(false);
    let hashes = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..cores {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    Argon2::default().hash_password(b"bench-passphrase").expect("hashing works");
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
