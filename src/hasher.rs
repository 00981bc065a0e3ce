//! Argon2id hashing on dedicated threads, bounded in number, queue and memory.

use std::{
    sync::{
        Arc, Condvar, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use argon2::{
    ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash as Phc, Salt},
};
use tokio::sync::oneshot;

use crate::domain::{Password, PasswordHash};

/// Hashes passwords with Argon2id at the contract's OWASP parameters (see [`argon2`]). Each hash
/// is ~12 ms of CPU over 19 MiB of memory, so it runs on threads of its own, where it cannot stall
/// the request handlers:
/// - `concurrency` threads, each owning one 19 MiB buffer it reuses for every hash. Allocating
///   the buffer per hash instead, on tokio's blocking pool, left each thread's malloc arena
///   holding freed buffers: 690 MiB resident under a signup load (measured), where this holds
///   `concurrency` × 19 MiB;
/// - at most `queue` more signups waiting for a thread. Past that a signup is refused at once
///   ([`HashError::Busy`]): a flood costs a counter increment per request, not CPU and memory
///   queued without bound;
/// - while other requests are being served (see [`PasswordHasher::serving_other_requests`]), only
///   `beside_requests` hashes run, on as many threads kept to the last cores (see
///   [`Shared::beside`]): the rest of the cores stay with the request handlers.
#[derive(Clone)]
pub struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
    capacity: usize,
    shared: Arc<Shared>,
}

/// What the hasher threads share with the hasher.
struct Shared {
    receiver: Mutex<mpsc::Receiver<Job>>,
    /// Hashes running now; a thread holding a job waits on `finished` for its turn.
    running: Mutex<usize>,
    finished: Condvar,
    concurrency: usize,
    /// Signups holding a place: hashing, or waiting for a hasher thread.
    admitted: AtomicUsize,
    /// Hashes that may run at once while other requests are served.
    beside_requests: usize,
    /// Until when only `beside_requests` hashes may run, in milliseconds since `epoch`:
    /// [`OTHERS_QUIET`] after the last request other than a signup.
    paused_until_ms: AtomicU64,
    /// Until when hashes beside other requests skip [`Shared::beside`], in milliseconds since
    /// `epoch`: [`BESIDE_SKIPPED`] after the last hash moved off it (see [`hash_beside`]).
    beside_skipped_until_ms: AtomicU64,
    epoch: Instant,
    hashed: AtomicU64,
    peak_running: AtomicUsize,
    /// The threads that hash while other requests are served: `beside_requests` of them, kept to
    /// as many of the process's last CPUs (see [`keep_to_last_cpus`]), `SCHED_IDLE`. Fewer hashes
    /// at once is not enough on its own: the kernel moves a `SCHED_IDLE` thread to whichever CPU
    /// falls idle, and a CPU that runs one never goes idle, so it never pulls a woken handler
    /// queued behind another on the other CPU; that one waits up to a scheduler tick (4 ms here).
    /// With two `SCHED_IDLE` spinners on two cores, plain creates' p99 at c=16 went from 1.8-2.0
    /// ms to 9.8-10.4 ms; with one spinner free to move, 4.6 ms; with one kept to the second CPU,
    /// 2.1-2.3 ms. Threads of their own rather than each hasher thread keeping itself to those
    /// CPUs for the length of a hash: in alternated 6 s runs of plain creates at c=16 alone and
    /// then beside signups at c=16, the ratio of the two p99s was 0.57-1.12x over four rounds on
    /// these threads, 1.12-1.41x (single rounds up to 3.2x) with the hasher threads keeping
    /// themselves there, which hash back to back and leave that CPU no idle moment at all.
    beside: rayon::ThreadPool,
    /// How many hashes on [`Shared::beside`], whose hasher threads stopped waiting for them (see
    /// [`hash_beside`]), have not ended. While any has not, the beside threads are known to get no
    /// CPU time, and hashes beside other requests run on their hasher threads from the start.
    left_behind: Arc<AtomicUsize>,
}

/// How long after the last request other than a signup only `beside_requests` hashes run. Plain
/// creates arrive far more often than this under any load worth protecting. A second rather than
/// less: after it, hashes run on the hasher threads at normal priority, and a stall of the host
/// (these virtual disks have stalled plain creates for over 100 ms) should not be taken for the
/// end of the other requests.
const OTHERS_QUIET: Duration = Duration::from_secs(1);

/// How often a hasher thread waiting for a hash on [`Shared::beside`] reads that thread's CPU
/// clock.
const BESIDE_CHECK: Duration = Duration::from_millis(200);

/// Less CPU time than this for the beside thread over a [`BESIDE_CHECK`] (a twentieth of a core),
/// and the machine has no idle time to give it: the hash runs on its hasher thread instead, at
/// normal priority. An idle-class thread gets idle time only, so another process that keeps every
/// core busy (`yes > /dev/null` twice on two cores) starves it: a signup made within a second of
/// a plain create took 12.7 s beside two such processes, where a hash at normal priority takes
/// tens of milliseconds.
///
/// Beside this service's own load the beside thread is meant to wait, and the bound must not be
/// met there: with plain creates at c=16 and signups at c=16 (wrk on the same two cores), it got
/// 14 to 27 ms of CPU in each of 51 checks of 100 ms (median 22.5 ms), and in one of six 10 s
/// rounds of another run a check found it under 10 ms, which moved that hash to normal priority
/// among the handlers and kept a third 19 MiB buffer (resident memory 56 -> 75 MiB). Over 200 ms
/// those 14 ms are 28 or more; beside the two `yes` processes the beside thread gets a slice of a
/// few milliseconds now and then.
const BESIDE_STARVED: Duration = Duration::from_millis(10);

/// How long hashes beside other requests skip the beside thread after one was moved off it: a
/// process that keeps every core busy seldom stops within seconds, and each hash sent there
/// meanwhile would wait a [`BESIDE_CHECK`] for nothing. Skipping it only while the hash left
/// behind had not ended, the next signup beside two `yes > /dev/null` processes took 0.30 s once
/// that hash had been dropped unstarted, as the first had (0.28 s), where the others took
/// 0.03-0.04 s.
const BESIDE_SKIPPED: Duration = Duration::from_secs(10);

/// Argon2id at the contract's parameters, OWASP's first recommendation: m=19456 KiB, t=2, p=1.
/// One lane, so a hash runs on one core from start to end; signups use every core by running one
/// hash per core at once. (Two lanes on two cores halved a lone signup's wait, but the contract
/// names p=1, and every stored hash carries its parameters.)
pub fn argon2() -> Argon2<'static> {
    let params = Params::new(Params::DEFAULT_M_COST, Params::DEFAULT_T_COST, Params::DEFAULT_P_COST, None)
        .expect("the constant parameters are within Argon2's bounds");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl Shared {
    fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `after` from now, in milliseconds since `epoch`.
    fn millis_since_epoch_in(&self, after: Duration) -> u64 {
        self.millis_since_epoch().saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
    }

    /// Waits until one more hash may run: fewer than `concurrency` are running, or fewer than
    /// `beside_requests` while other requests are served. The turn ends when the result drops.
    /// Also returns whether other requests are being served, in which case the hash is to run on
    /// [`Shared::beside`].
    fn turn(&self) -> (Turn<'_>, bool) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let paused_for = self.paused_until_ms.load(Ordering::Relaxed).saturating_sub(self.millis_since_epoch());
            let limit = if paused_for > 0 { self.beside_requests } else { self.concurrency };
            if *running < limit {
                *running += 1;
                self.peak_running.fetch_max(*running, Ordering::Relaxed);
                return (Turn(self), paused_for > 0);
            }
            // Woken by a hash that finished, or when the pause may have ended.
            running = match paused_for {
                0 => self.finished.wait(running).unwrap_or_else(PoisonError::into_inner),
                _ => {
                    let pause = Duration::from_millis(paused_for);
                    self.finished.wait_timeout(running, pause).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }
}

/// One hash's turn to run; ends when dropped.
struct Turn<'a>(&'a Shared);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        self.0.finished.notify_all();
    }
}

/// A password to hash, and where to send the PHC string.
struct Job {
    password: Password,
    reply: oneshot::Sender<Result<String, HashError>>,
}

/// Why a password was not hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hasher is busy and the queue is full: retry shortly.
    #[error("every password hasher is busy and the queue is full")]
    Busy,
    /// Only possible on a bug or an exhausted machine, never on input.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// Holds a place among the admitted; gives it back when dropped.
struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PasswordHasher {
    /// A hasher of `concurrency` threads, `beside_requests` of which go on hashing while other
    /// requests are served, with at most `queue` more signups waiting. The threads end when the
    /// last clone of the hasher is dropped.
    pub fn new(concurrency: usize, beside_requests: usize, queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        let beside_requests = beside_requests.clamp(1, concurrency);
        let (jobs, receiver) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            receiver: Mutex::new(receiver),
            running: Mutex::new(0),
            finished: Condvar::new(),
            concurrency,
            admitted: AtomicUsize::new(0),
            beside_requests,
            // Not paused at the start: a server whose first requests are signups uses every thread.
            paused_until_ms: AtomicU64::new(0),
            beside_skipped_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            hashed: AtomicU64::new(0),
            peak_running: AtomicUsize::new(0),
            beside: rayon::ThreadPoolBuilder::new()
                .num_threads(beside_requests)
                .thread_name(|n| format!("argon2-beside-{n}"))
                // Else a panic in a hash there would abort the process; its signup gets a 500.
                .panic_handler(|_| tracing::error!("a hash on a beside thread panicked"))
                .start_handler(move |_| {
                    yield_to_requests();
                    keep_to_last_cpus(beside_requests);
                })
                .build()
                .expect("the OS starts a thread"),
            left_behind: Arc::default(),
        });
        for n in 0..concurrency {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || hash_jobs(&shared))
                .expect("the OS starts a thread");
        }
        Self { jobs, capacity: concurrency + queue, shared }
    }

    /// The machine's core count: the default concurrency.
    pub fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    /// The default number of hashers that go on beside other requests: every core but one, and
    /// at least one.
    pub fn default_beside_requests(concurrency: usize) -> usize {
        concurrency.min(Self::cores().saturating_sub(1)).max(1)
    }

    /// Tells the hasher that a request other than a signup is being served: for the next
    /// [`OTHERS_QUIET`], no more than `beside_requests` hashes run at once, so that Argon2 leaves
    /// a core to the requests that need only milliseconds. On two cores, plain creates' p99 at
    /// c=16 beside signups at c=16 was 10.2-11.5 ms with the pause and 13.4-14.0 ms without (same
    /// binary, same hour). A store of one number: cheap enough for every request.
    pub fn serving_other_requests(&self) {
        let until = self.shared.millis_since_epoch_in(OTHERS_QUIET);
        self.shared.paused_until_ms.store(until, Ordering::Relaxed);
    }

    /// Hashes `password` into a PHC string with a fresh random salt.
    pub async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        let admitted = &self.shared.admitted;
        if admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Busy);
        }
        let _admission = Admission(admitted);
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { password, reply }).map_err(|_| HashError::Failed("the hasher threads ended".into()))?;
        let phc = answer.await.map_err(|_| HashError::Failed("a hasher thread ended mid-hash".into()))??;
        self.shared.hashed.fetch_add(1, Ordering::Relaxed);
        Ok(PasswordHash::from_phc(phc))
    }

    /// How many hashes this hasher has computed.
    pub fn hashes_computed(&self) -> u64 {
        self.shared.hashed.load(Ordering::Relaxed)
    }

    /// The most hashes that have run at once.
    pub fn peak_concurrent_hashes(&self) -> usize {
        self.shared.peak_running.load(Ordering::Relaxed)
    }
}

/// A hasher thread: takes jobs until every sender is gone, hashing each in the one buffer when
/// its turn comes, at normal priority, or on [`Shared::beside`] while other requests are served.
/// A thread holding a job while other requests are served may wait for the running hash to
/// finish: jobs still run in the order they came, one after another.
fn hash_jobs(shared: &Shared) {
    let argon2 = argon2();
    // Allocated at the first job: a server that never sees a signup never holds it.
    let mut memory = Vec::new();
    loop {
        // The lock is held only to take a job, not while hashing.
        let job = match shared.receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(Job { password, reply }) = job else { return };
        if memory.is_empty() {
            memory = new_memory(&argon2);
        }
        let hashed = {
            let (_turn, beside_requests) = shared.turn();
            match beside_requests && shared.beside_usable() {
                true => hash_beside(shared, &argon2, &password, &mut memory),
                false => hash_into(&argon2, password.expose().as_bytes(), &mut memory),
            }
        };
        // The caller may have gone (client disconnected); the answer is then dropped.
        let _ = reply.send(hashed);
    }
}

/// Hashes `password` on [`Shared::beside`], in `memory`, and waits for it there; but if over a
/// [`BESIDE_CHECK`] the beside thread gets less than [`BESIDE_STARVED`] of CPU time (or has not
/// started the hash), hashes it here instead, at the calling hasher thread's normal priority. The
/// hash left behind is dropped before it starts, or else runs to its end on idle time, its result
/// unused. It keeps this thread's buffer, which it frees as it ends ([`free_buffer`]); this
/// thread takes a new one. So the buffers are one per hasher thread, and one more per hash left
/// behind, until it ends. For [`BESIDE_SKIPPED`] after, hashes beside other requests skip the
/// beside thread ([`Shared::beside_usable`]). Where threads have no CPU clock to read, it waits for
/// the beside thread.
fn hash_beside(
    shared: &Shared,
    argon2: &Argon2<'_>,
    password: &Password,
    memory: &mut Vec<Block>,
) -> Result<String, HashError> {
    let job = Arc::new(BesideJob::default());
    let (done, outcome) = mpsc::sync_channel(1);
    {
        let (job, left_behind, password) = (Arc::clone(&job), Arc::clone(&shared.left_behind), password.clone());
        let mut buffer = std::mem::take(memory);
        shared.beside.spawn(move || {
            let hashed = job.start().then(|| hash_into(&self::argon2(), password.expose().as_bytes(), &mut buffer));
            match hashed {
                Some(hashed) if job.finish() => {
                    let _ = done.send((hashed, buffer));
                }
                _ => {
                    free_buffer(buffer);
                    left_behind.fetch_sub(1, Ordering::AcqRel);
                }
            }
        });
    }
    let mut checked = None;
    let finished = loop {
        match outcome.recv_timeout(BESIDE_CHECK) {
            Ok(finished) => break Some(finished),
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(mpsc::RecvTimeoutError::Timeout) if job.cpu_time_since(&mut checked) >= BESIDE_STARVED => {}
            Err(mpsc::RecvTimeoutError::Timeout) if shared.abandon(&job) => {
                tracing::debug!("the beside thread gets no CPU time: a hash runs at normal priority");
                shared.beside_skipped_until_ms.store(shared.millis_since_epoch_in(BESIDE_SKIPPED), Ordering::Relaxed);
                *memory = new_memory(argon2);
                return hash_into(argon2, password.expose().as_bytes(), memory);
            }
            // It finished meanwhile: its result is on its way.
            Err(mpsc::RecvTimeoutError::Timeout) => break outcome.recv().ok(),
        }
    };
    match finished {
        Some((hashed, buffer)) => {
            *memory = buffer;
            hashed
        }
        // Only if the hash panicked (the pool's panic handler logs it).
        None => Err(HashError::Failed("a hash on the beside thread ended without a result".into())),
    }
}

/// Frees the buffer of a hash left behind, and hands its pages back to the system. glibc's
/// `free` keeps a buffer that came from a thread's malloc arena in that arena, resident, for that
/// arena's threads alone (see [`PasswordHasher`]); `malloc_trim` gives back the free pages of every
/// arena. Kept instead as a spare for the next hash left behind, it stayed resident once the
/// neighbour that starved the beside thread was gone: 2 s after two `yes > /dev/null` processes
/// ended, 71.3 MiB resident, against 52.8 MiB with it freed and trimmed.
fn free_buffer(buffer: Vec<Block>) {
    drop(buffer);
    // SAFETY: `malloc_trim` only hands free pages back to the system; no memory in use moves.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Shared {
    /// Whether a hash beside other requests may go to [`Shared::beside`]: no hash left there has
    /// yet to end, and none was moved off it in the last [`BESIDE_SKIPPED`].
    fn beside_usable(&self) -> bool {
        self.left_behind.load(Ordering::Acquire) == 0
            && self.millis_since_epoch() >= self.beside_skipped_until_ms.load(Ordering::Relaxed)
    }

    /// Stops waiting for `job` unless it has finished: whether it was left behind.
    fn abandon(&self, job: &BesideJob) -> bool {
        // Counted first, so that the job, if it sees itself abandoned, never counts below zero.
        self.left_behind.fetch_add(1, Ordering::AcqRel);
        let abandoned =
            job.state.compare_exchange(WAITED_FOR, LEFT_BEHIND, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if !abandoned {
            self.left_behind.fetch_sub(1, Ordering::AcqRel);
        }
        abandoned
    }
}

/// [`BesideJob::state`]: its hasher thread waits for it.
const WAITED_FOR: u8 = 0;
/// [`BesideJob::state`]: its hasher thread stopped waiting; it ends without a result.
const LEFT_BEHIND: u8 = 1;
/// [`BesideJob::state`]: it has a result, which its hasher thread takes.
const FINISHED: u8 = 2;

/// What a hasher thread and the beside thread know of a hash on [`Shared::beside`].
#[derive(Default)]
struct BesideJob {
    /// [`WAITED_FOR`], then [`LEFT_BEHIND`] or [`FINISHED`], whichever comes first.
    state: AtomicU8,
    /// Set when the hash starts: the beside thread's CPU clock and its reading then, if known.
    started: OnceLock<Option<(CpuClock, Duration)>>,
}

impl BesideJob {
    /// Called on the beside thread: whether to hash (not if left behind already), and if so,
    /// where its CPU time is read.
    fn start(&self) -> bool {
        if self.state.load(Ordering::Acquire) == LEFT_BEHIND {
            return false;
        }
        let clock = CpuClock::of_this_thread().and_then(|clock| Some((clock, clock.read()?)));
        let _ = self.started.set(clock);
        true
    }

    /// Called on the beside thread with a result: whether its hasher thread still waits for it.
    fn finish(&self) -> bool {
        self.state.compare_exchange(WAITED_FOR, FINISHED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The CPU time the beside thread has had since `checked` (or since the hash started), and
    /// now `checked`; zero before the hash starts, [`Duration::MAX`] if its clock is not known.
    fn cpu_time_since(&self, checked: &mut Option<Duration>) -> Duration {
        let Some(started) = self.started.get() else { return Duration::ZERO };
        let Some((clock, at_start)) = started else { return Duration::MAX };
        let Some(now) = clock.read() else { return Duration::MAX };
        let since = now.saturating_sub(checked.unwrap_or(*at_start));
        *checked = Some(now);
        since
    }
}

/// A thread's CPU clock, readable from any thread of the process.
#[derive(Clone, Copy)]
struct CpuClock(#[cfg(unix)] libc::clockid_t);

impl CpuClock {
    /// The calling thread's clock; `None` elsewhere than on Linux, where no beside thread is
    /// idle-class (nor starved for being so).
    fn of_this_thread() -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            let mut clock: libc::clockid_t = 0;
            // SAFETY: `pthread_self` is the calling thread, alive during the call, which writes only
            // the one `clockid_t` passed.
            let got = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0;
            got.then_some(Self(clock))
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// The CPU time on this clock; `None` if it cannot be read.
    fn read(self) -> Option<Duration> {
        #[cfg(unix)]
        {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: the call writes only the one `timespec` passed.
            let read = unsafe { libc::clock_gettime(self.0, &mut now) };
            (read == 0).then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
        }
        #[cfg(not(unix))]
        None
    }
}

/// Puts the calling thread, one of [`Shared::beside`], in Linux's `SCHED_IDLE` class: it runs on
/// whatever CPU time the request handlers leave, and a handler that wakes takes its core at once.
/// Without it, two hashers on two cores held the CPU the handlers needed: plain creates' p99 went
/// from 12 to 61 ms while signups ran. A nice value of 10 or 19 did not help (16 ms): the kernel
/// lets a running task finish its slice before a woken one of the normal class runs, unless the
/// running one is `SCHED_IDLE`.
///
/// Only those threads: the hasher threads, which hash while nothing but signups is served, stay
/// at normal priority. An idle-class thread also gives way to every other process on the machine,
/// and with two processes keeping both cores busy (`yes > /dev/null` twice) signups at c=16
/// completed none in 8 s, twice, while raw Argon2id beside the same two processes hashed 51-57
/// times a second; with the hasher threads at normal priority, 59 and 61 signups a second.
/// Elsewhere a no-op; if the call fails, hashing goes on at normal priority.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        let idle = libc::sched_param { sched_priority: 0 };
        // SAFETY: `sched_setscheduler` reads only its arguments; `idle` outlives the call. On
        // Linux, id 0 is the calling thread alone, since each thread has its own policy.
        let failed = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0;
        if failed {
            tracing::debug!("could not lower a hasher thread's priority: {}", std::io::Error::last_os_error());
        }
    }
}

/// Confines the calling thread to the last `count` CPUs of those the process may run on, leaving
/// the others to the request handlers. Nothing to do when there are no more than `count`;
/// elsewhere than on Linux, a no-op; if a call fails, the thread goes on anywhere.
fn keep_to_last_cpus(count: usize) {
    let Some(cpus) = allowed_cpus() else { return };
    if cpus.len() > count {
        keep_to(&cpus[cpus.len() - count..]);
    }
}

/// Confines the calling thread to `cpus`, each one of [`allowed_cpus`]. Elsewhere than on Linux,
/// a no-op; if the call fails, the thread goes on anywhere.
fn keep_to(cpus: &[usize]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: an all-zero `cpu_set_t` is the empty set; `CPU_SET` writes within it (every
        // CPU listed came from `allowed_cpus`, so is below `CPU_SETSIZE`), and the call reads only
        // the set passed, of the size passed. On Linux, id 0 is the calling thread alone.
        let failed = unsafe {
            let mut kept: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in cpus {
                libc::CPU_SET(cpu, &mut kept);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &kept) != 0
        };
        if failed {
            tracing::debug!("could not keep a hasher thread to its CPUs: {}", std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpus;
}

/// The CPUs the calling thread may run on, in order; `None` if they cannot be read (and
/// elsewhere than on Linux).
fn allowed_cpus() -> Option<Vec<usize>> {
    #[cfg(not(target_os = "linux"))]
    return None;
    // SAFETY: an all-zero `cpu_set_t` is the empty set; the call writes only the set passed, of
    // the size passed, and `CPU_ISSET` reads within it.
    #[cfg(target_os = "linux")]
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            tracing::debug!("could not read a hasher thread's CPUs: {}", std::io::Error::last_os_error());
            return None;
        }
        Some((0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &allowed)).collect())
    }
}

/// The CPU time the calling thread has used: what a hash cost, and on which thread it ran (for
/// `examples/argon2_rate.rs` and the tests). `None` where the OS keeps no such clock.
pub fn thread_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    return CpuClock(libc::CLOCK_THREAD_CPUTIME_ID).read();
    #[cfg(not(unix))]
    None
}

/// A buffer for one hash at `argon2`'s parameters (19 MiB at the contract's).
fn new_memory(argon2: &Argon2<'_>) -> Vec<Block> {
    vec![Block::default(); argon2.params().block_count()]
}

/// One hash in `memory`, as a PHC string. The buffer is not cleared between hashes: it holds
/// Argon2's internal state, from which the password is no easier to recover than from the hash.
fn hash_into(argon2: &Argon2<'_>, password: &[u8], memory: &mut [Block]) -> Result<String, HashError> {
    let failed = |err: &dyn std::fmt::Display| HashError::Failed(err.to_string());
    let salt = argon2::password_hash::generate_salt();
    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2.hash_password_into_with_memory(password, &salt, &mut output, memory).map_err(|e| failed(&e))?;
    let phc = Phc {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::default().into()),
        params: ParamsString::try_from(argon2.params()).map_err(|e| failed(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| failed(&e))?),
        hash: Some(Output::new(&output).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use argon2::PasswordVerifier;

    use super::*;

    /// Runs `work` while telling `hasher`, every 10 ms from before `work` starts, that other
    /// requests are served, as a server under plain creates does: however late the idle-class
    /// hasher threads get to a hash, it is a hash beside other requests.
    async fn serving_other_requests<T>(hasher: &PasswordHasher, work: impl Future<Output = T>) -> T {
        let others = async {
            loop {
                hasher.serving_other_requests();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            biased;
            () = others => unreachable!("the loop never ends"),
            done = work => done,
        }
    }

    #[tokio::test]
    async fn hashes_to_a_verifiable_argon2id_phc_string_at_the_contracts_owasp_parameters() {
        let hasher = PasswordHasher::new(1, 1, 0);
        let password = Password::parse("a long unusual passphrase", None).unwrap();
        let first = hasher.hash(password.clone()).await.unwrap();
        let phc = first.as_phc();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let parsed = argon2::password_hash::phc::PasswordHash::new(phc).unwrap();
        Argon2::default().verify_password(b"a long unusual passphrase", &parsed).unwrap();
        assert!(Argon2::default().verify_password(b"another passphrase", &parsed).is_err());
        // The same buffer, reused: a fresh salt, and still verifiable.
        let second = hasher.hash(password).await.unwrap();
        assert_ne!(first.as_phc(), second.as_phc());
        let parsed = argon2::password_hash::phc::PasswordHash::new(second.as_phc()).unwrap();
        Argon2::default().verify_password(b"a long unusual passphrase", &parsed).unwrap();
        assert_eq!(hasher.hashes_computed(), 2);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn beside_threads_run_in_the_idle_scheduling_class_and_hasher_threads_at_normal_priority() {
        let hasher = PasswordHasher::new(2, 1, 0);
        hasher.hash(Password::parse("a long unusual passphrase", None).unwrap()).await.unwrap();
        // SAFETY: reads the calling thread's policy; no pointers.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        assert_eq!(hasher.shared.beside.install(policy), libc::SCHED_IDLE, "beside other requests, idle class");
        let mut hasher_policies = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if name.strip_prefix("argon2-").is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())) {
                let sched = std::fs::read_to_string(task.join("sched")).unwrap();
                let policy = sched.lines().find(|line| line.starts_with("policy")).unwrap().to_owned();
                hasher_policies.push(policy.split(':').nth(1).unwrap().trim().to_owned());
            }
        }
        // Other tests' hashers run in this process too: every hasher thread counts.
        assert!(hasher_policies.len() >= 2, "the hasher threads are found: {hasher_policies:?}");
        let normal = libc::SCHED_OTHER.to_string();
        assert!(hasher_policies.iter().all(|p| p == &normal), "SCHED_OTHER is 0: {hasher_policies:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beside_other_requests_only_the_allowed_hashes_run_at_once() {
        let hasher = PasswordHasher::new(2, 1, 8);
        let password = || Password::parse("a long unusual passphrase", None).unwrap();
        // Alone, signups use both threads (each hash is ~12 ms: two at once are all but certain
        // among eight; the loop only guards against a scheduler that never overlaps them).
        for _ in 0..10 {
            let hashes = futures::future::join_all((0..8).map(|_| hasher.hash(password()))).await;
            for hash in hashes {
                let hash = hash.unwrap();
                let parsed = argon2::password_hash::phc::PasswordHash::new(hash.as_phc()).unwrap();
                Argon2::default().verify_password(b"a long unusual passphrase", &parsed).unwrap();
            }
            if hasher.peak_concurrent_hashes() == 2 {
                break;
            }
        }
        assert_eq!(hasher.peak_concurrent_hashes(), 2, "both threads hash while nothing else is served");

        let paused = PasswordHasher::new(2, 1, 8);
        let hashes = futures::future::join_all((0..8).map(|_| paused.hash(password())));
        let results = serving_other_requests(&paused, hashes).await;
        assert!(results.iter().all(Result::is_ok), "every signup is hashed, one at a time");
        assert_eq!(paused.hashes_computed(), 8);
        assert_eq!(paused.peak_concurrent_hashes(), 1, "one hash at a time while other requests are served");
    }

    #[test]
    fn a_turn_says_whether_other_requests_are_served() {
        let hasher = PasswordHasher::new(2, 1, 0);
        let (turn, beside_requests) = hasher.shared.turn();
        assert!(!beside_requests, "nothing else is served: the hash may run on any core");
        drop(turn);
        hasher.serving_other_requests();
        let (_turn, beside_requests) = hasher.shared.turn();
        assert!(beside_requests, "while other requests are served, on the cores left to hashing");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn beside_other_requests_hashes_run_on_the_last_cpus_only() {
        let hasher = PasswordHasher::new(2, 1, 0);
        let everywhere = allowed_cpus().unwrap();
        assert_eq!(hasher.shared.beside.current_num_threads(), 1);
        let last = &everywhere[everywhere.len() - 1..];
        assert_eq!(hasher.shared.beside.install(allowed_cpus).unwrap(), last, "of {everywhere:?}, only the last");
        assert_eq!(allowed_cpus().unwrap(), everywhere, "the thread that asked keeps its CPUs");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hash_runs_on_the_beside_thread_only_while_other_requests_are_served() {
        let hasher = PasswordHasher::new(1, 1, 0);
        let password = || Password::parse("a long unusual passphrase", None).unwrap();
        let beside_thread_cpu = || hasher.shared.beside.install(thread_cpu_time).unwrap();

        let before = beside_thread_cpu();
        hasher.hash(password()).await.unwrap();
        let alone = beside_thread_cpu() - before;
        assert!(alone < Duration::from_millis(2), "nothing else served: hashed on its own thread ({alone:?} beside)");

        // One hash is ~12 ms of CPU. The beside thread hashes on idle time only, and when other
        // tests keep its CPU busy the hash rightly moves to its hasher thread: one in three
        // attempts gets idle time.
        let mut beside = Vec::new();
        for _ in 0..3 {
            let before = beside_thread_cpu();
            serving_other_requests(&hasher, hasher.hash(password())).await.unwrap();
            beside.push(beside_thread_cpu() - before);
            if beside.last() > Some(&Duration::from_millis(5)) {
                return;
            }
        }
        panic!("never hashed on the beside thread (CPU time there: {beside:?})");
    }

    /// Beside other requests, a hash the beside thread gets no CPU time for runs on its hasher
    /// thread instead. A thread spinning at normal priority on each of the beside thread's CPUs
    /// stands for another process keeping the machine busy: the idle-class beside thread then
    /// gets a slice of a few milliseconds now and then, and would take seconds over one hash.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hash_the_beside_thread_gets_no_cpu_time_for_runs_on_its_hasher_thread() {
        let hasher = PasswordHasher::new(1, 1, 0);
        let cost = {
            let mut memory = new_memory(&argon2());
            let before = thread_cpu_time().unwrap();
            hash_into(&argon2(), b"a long unusual passphrase", &mut memory).unwrap();
            thread_cpu_time().unwrap() - before
        };
        let (clock, cpus) = hasher.shared.beside.install(|| (CpuClock::of_this_thread(), allowed_cpus()));
        let (clock, cpus) = (clock.unwrap(), cpus.unwrap());
        let spinning = Arc::new(AtomicBool::new(true));
        let spinners: Vec<_> = (0..cpus.len())
            .map(|_| {
                let (spinning, cpus) = (Arc::clone(&spinning), cpus.clone());
                std::thread::spawn(move || {
                    keep_to(&cpus);
                    while spinning.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();

        let password = || Password::parse("a long unusual passphrase", None).unwrap();
        let before = clock.read().unwrap();
        let first = serving_other_requests(&hasher, hasher.hash(password())).await;
        let beside = clock.read().unwrap() - before;
        let more =
            serving_other_requests(&hasher, async { [hasher.hash(password()).await, hasher.hash(password()).await] });
        let more = more.await;
        let left_behind = hasher.shared.left_behind.load(Ordering::Acquire);
        spinning.store(false, Ordering::Relaxed);
        spinners.into_iter().for_each(|spinner| spinner.join().unwrap());

        for hash in [first].into_iter().chain(more) {
            let parsed = argon2::password_hash::phc::PasswordHash::new(hash.unwrap().as_phc()).unwrap();
            Argon2::default().verify_password(b"a long unusual passphrase", &parsed).unwrap();
        }
        // The kernel gives an idle-class thread a slice of a few milliseconds now and then.
        assert!(
            beside < cost / 2,
            "hashed elsewhere than the starved beside thread ({beside:?} there, {cost:?} a hash)"
        );
        // The first hash was left there; the next two, if it had not ended, did not go there.
        assert!(left_behind <= 1, "at most one hash left on the beside thread: {left_behind}");
        // Behind it in the pool's queue: this runs once the hash left behind has ended.
        hasher.shared.beside.install(|| ());
        assert_eq!(hasher.shared.left_behind.load(Ordering::Acquire), 0, "the hash left behind ended");
        // With nothing left there and its CPU free again, the next hash still skips it for a while.
        let before = clock.read().unwrap();
        serving_other_requests(&hasher, hasher.hash(password())).await.unwrap();
        let beside = clock.read().unwrap() - before;
        assert!(beside < cost / 2, "a hash just after one was moved off skips the beside thread ({beside:?} there)");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_past_concurrency_and_queue_and_admits_again_after() {
        let hasher = PasswordHasher::new(1, 1, 1);
        let password = || Password::parse("a long unusual passphrase", None).unwrap();
        let results = futures::future::join_all((0..8).map(|_| hasher.hash(password()))).await;
        let busy = results.iter().filter(|r| matches!(r, Err(HashError::Busy))).count();
        assert_eq!(results.len() - busy, hasher.hashes_computed() as usize, "every admitted hash ran");
        assert!(busy >= 6, "at most one running and one waiting of eight at once: {busy} refused");
        assert!(hasher.hash(password()).await.is_ok(), "admitted again once the others are done");
    }
}
