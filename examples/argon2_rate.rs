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
//!
//! Also prints the CPU time each hash took on every core (the threads' own CPU clocks over the
//! hashes they finished): the reference for the service's hasher threads' CPU per signup, which
//! tells a host that hashed slower during a load from a service that leaves hashing less time.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use argon2::{Block, Params};

/// Why a thread's CPU clock is there to read.
const CPU_CLOCK: &str = "every thread has a CPU clock on the systems the benchmark runs on";

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (one_at_a_time, _) = rate(seconds, 1);
    let (every_core, cpu_per_hash) = rate(seconds, cores);
    let cpu_ms_per_hash = cpu_per_hash.as_secs_f64() * 1e3;
    println!(
        "{{\"cores\":{cores},\"one_at_a_time_per_second\":{one_at_a_time:.1},\"every_core_per_second\":{every_core:.1},\
         \"every_core_cpu_ms_per_hash\":{cpu_ms_per_hash:.2}}}"
    );
}

/// Hashes per second with `threads` threads hashing at once for `seconds`, and the CPU time per
/// hash those threads used.
fn rate(seconds: u64, threads: usize) -> (f64, Duration) {
    let done = AtomicBool::new(false);
    let hashes = AtomicU64::new(0);
    let started = Instant::now();
    let cpu: Duration = std::thread::scope(|scope| {
        let hashing: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let argon2 = users_api::hasher::argon2();
                    let mut memory = vec![Block::default(); argon2.params().block_count()];
                    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
                    let mut cpu = Duration::ZERO;
                    while !done.load(Ordering::Relaxed) {
                        let salt = argon2::password_hash::generate_salt();
                        let before = users_api::hasher::thread_cpu_time().expect(CPU_CLOCK);
                        argon2
                            .hash_password_into_with_memory(b"bench-passphrase", &salt, &mut output, &mut memory)
                            .expect("hashing works");
                        cpu += users_api::hasher::thread_cpu_time().expect(CPU_CLOCK) - before;
                        hashes.fetch_add(1, Ordering::Relaxed);
                    }
                    cpu
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(seconds));
        done.store(true, Ordering::Relaxed);
        hashing.into_iter().map(|thread| thread.join().expect("a hashing thread ends")).sum()
    });
    let hashes = hashes.load(Ordering::Relaxed);
    (hashes as f64 / started.elapsed().as_secs_f64(), cpu / u32::try_from(hashes.max(1)).unwrap_or(u32::MAX))
}
