//! Argon2id hashing, off the async runtime and bounded to the machine's cores.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use argon2::{Argon2, PasswordHasher as _};
use tokio::sync::Semaphore;

use crate::domain::{Password, PasswordHash};

/// Hashes passwords with Argon2id at OWASP's parameters (m=19456 KiB, t=2, p=1: the argon2
/// crate's defaults). Each hash is ~30 ms of CPU and 19 MiB of memory, so it runs on tokio's
/// blocking pool, where it cannot stall the request handlers; a semaphore holds the number at once
/// to `concurrency`, and at most `queue` more wait for it. Past that a signup is refused at once
/// ([`HashError::Busy`]): a flood costs a counter increment per request, not CPU and memory
/// queued without bound.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    hashed: Arc<AtomicU64>,
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
    /// A hasher running at most `concurrency` hashes at once, with at most `queue` more waiting.
    pub fn new(concurrency: usize, queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            admitted: Arc::default(),
            capacity: concurrency + queue,
            hashed: Arc::default(),
        }
    }

    /// The machine's core count: the default concurrency.
    pub fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    /// Hashes `password` into a PHC string with a fresh random salt.
    pub async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Busy);
        }
        let _admission = Admission(&self.admitted);
        let _permit = self.permits.acquire().await.map_err(|err| HashError::Failed(err.to_string()))?;
        let phc = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|err| HashError::Failed(err.to_string()))
        })
        .await
        .map_err(|err| HashError::Failed(err.to_string()))??;
        self.hashed.fetch_add(1, Ordering::Relaxed);
        Ok(PasswordHash::from_phc(phc))
    }

    /// How many hashes this hasher has computed.
    pub fn hashes_computed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use argon2::PasswordVerifier;

    use super::*;

    #[tokio::test]
    async fn hashes_to_a_verifiable_argon2id_phc_string_with_owasp_parameters() {
        let hasher = PasswordHasher::new(1, 0);
        let password = Password::parse("a long unusual passphrase", None).unwrap();
        let hash = hasher.hash(password).await.unwrap();
        let phc = hash.as_phc();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let parsed = argon2::PasswordHash::new(phc).unwrap();
        Argon2::default().verify_password(b"a long unusual passphrase", &parsed).unwrap();
        assert!(Argon2::default().verify_password(b"another passphrase", &parsed).is_err());
        assert_eq!(hasher.hashes_computed(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_past_concurrency_and_queue_and_admits_again_after() {
        let hasher = PasswordHasher::new(1, 1);
        let password = || Password::parse("a long unusual passphrase", None).unwrap();
        let results = futures::future::join_all((0..8).map(|_| hasher.hash(password()))).await;
        let busy = results.iter().filter(|r| matches!(r, Err(HashError::Busy))).count();
        assert_eq!(results.len() - busy, hasher.hashes_computed() as usize, "every admitted hash ran");
        assert!(busy >= 6, "at most one running and one waiting of eight at once: {busy} refused");
        assert!(hasher.hash(password()).await.is_ok(), "admitted again once the others are done");
    }
}
