//! Argon2id hashing, off the async runtime and bounded to the machine's cores.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use argon2::{Argon2, PasswordHasher as _};
use tokio::sync::Semaphore;

use crate::domain::{Password, PasswordHash};

/// Hashes passwords with Argon2id at OWASP's parameters (m=19456 KiB, t=2, p=1: the argon2
/// crate's defaults). Each hash is ~30 ms of CPU, so it runs on tokio's blocking pool, where it
/// cannot stall the request handlers; a semaphore holds the number at once to the core count, so
/// a burst of signups queues here instead of starving every other thread of CPU and memory.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    hashed: Arc<AtomicU64>,
}

/// Hashing failed: only possible on a bug or an exhausted machine, never on input.
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl PasswordHasher {
    /// A hasher running at most `concurrency` hashes at once.
    pub fn new(concurrency: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(concurrency.max(1))), hashed: Arc::default() }
    }

    /// A hasher running as many hashes at once as the machine has cores.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Hashes `password` into a PHC string with a fresh random salt.
    pub async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        let _permit = self.permits.acquire().await.map_err(|err| HashError(err.to_string()))?;
        let phc = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|err| HashError(err.to_string()))
        })
        .await
        .map_err(|err| HashError(err.to_string()))??;
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
        let hasher = PasswordHasher::new(1);
        let password = Password::parse("a long unusual passphrase", None).unwrap();
        let hash = hasher.hash(password).await.unwrap();
        let phc = hash.as_phc();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let parsed = argon2::PasswordHash::new(phc).unwrap();
        Argon2::default().verify_password(b"a long unusual passphrase", &parsed).unwrap();
        assert!(Argon2::default().verify_password(b"another passphrase", &parsed).is_err());
        assert_eq!(hasher.hashes_computed(), 1);
    }
}
