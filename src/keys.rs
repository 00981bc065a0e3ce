//! API keys: `uk_` followed by 40 random base62 characters. Only a key's SHA-256 digest is stored,
//! so a leaked database does not leak usable keys; a key is found by its digest, which also
//! makes the lookup constant-time in the key (no prefix of it is ever compared).

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use entity::api_key;
use rand::{Rng, distr::Alphanumeric};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, SqlErr,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// Every key starts with this; it never changes, so secret scanners can recognise leaked keys.
pub const KEY_PREFIX: &str = "uk_";
/// Random characters after the prefix of a generated key (~238 bits).
const GENERATED_CHARS: usize = 40;
/// Fewest random characters of a key the service accepts (`USERS_API_KEY` included).
const MIN_CHARS: usize = 32;
/// Most characters of a presented key; anything longer is refused before it is hashed.
const MAX_CHARS: usize = 256;
/// `last_used_at` is written at most this often per key, so that reads do not become writes.
const LAST_USED_GRANULARITY: chrono::Duration = chrono::Duration::seconds(60);

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Create users.
    UsersWrite,
    /// Read users.
    UsersRead,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 2] = [Scope::UsersWrite, Scope::UsersRead];

    /// The wire and stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UsersWrite => "users:write",
            Self::UsersRead => "users:read",
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| format!("unknown scope {text:?}; known: users:write, users:read"))
    }
}

/// A whole API key. `Debug` and `Display` redact it; only `expose` shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// A fresh random key.
    pub fn generate() -> Self {
        let random: String = rand::rng().sample_iter(Alphanumeric).take(GENERATED_CHARS).map(char::from).collect();
        Self(format!("{KEY_PREFIX}{random}"))
    }

    /// The key itself: print it once, or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The stored form.
    pub fn digest(&self) -> String {
        digest(&self.0)
    }
}

impl FromStr for ApiKeySecret {
    type Err = String;

    /// Accepts only well-formed keys: the prefix and 32 to 256 base62 characters.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if is_well_formed(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("an API key is {KEY_PREFIX} followed by at least {MIN_CHARS} letters and digits"))
        }
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret(<redacted>)")
    }
}

fn is_well_formed(text: &str) -> bool {
    text.strip_prefix(KEY_PREFIX).is_some_and(|random| {
        (MIN_CHARS..=MAX_CHARS).contains(&random.len()) && random.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The key a request was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    /// Row id.
    pub id: i64,
    /// The operator's name for it.
    pub name: String,
}

/// Why a presented key is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not of the key format.
    #[error("the key is malformed")]
    Malformed,
    /// No such key, or revoked, or expired: told apart in the log only, never to the caller.
    #[error("the key is unknown, revoked or expired")]
    NotAccepted,
    /// A valid key without the scope.
    #[error("the key lacks the scope {0}")]
    MissingScope(&'static str),
    /// The store failed.
    #[error("database: {0}")]
    Database(Arc<DbErr>),
}

/// How long a key's row, once read, answers for it: the longest a revocation takes to reach
/// every instance. Expiry is checked on every request against the row's `expires_at`, so it is
/// exact; only a revocation (a change to the row) waits for the next read.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);
/// Most keys remembered at once. Only keys found in the database are remembered, so presenting
/// random keys cannot fill it; past this, the expired entries go, then all of them.
const KEY_CACHE_CAPACITY: usize = 4096;

/// How old a remembered row is when the next request with its key reads it again, while the
/// others go on using it until [`KEY_CACHE_TTL`].
const KEY_REFRESH_AFTER: Duration = Duration::from_millis(500);

/// The rows of recently presented keys, by digest, each for at most [`KEY_CACHE_TTL`]: spares
/// the database one query per request. Per process, and nothing depends on it but speed.
///
/// A row in use is read again by one request once it is [`KEY_REFRESH_AFTER`] old, so under a
/// steady load it never expires. A key missing from it (presented for the first time, or unused
/// for longer than the TTL) is read by one task, whose outcome every request presenting that key
/// meanwhile waits for. Were each of them to read it, every request in flight would, each on a
/// connection of its own: at c=16 on PostgreSQL the pool grew to 16 connections within seconds,
/// in the first run on a new server as at every expiry, and a new connection there took 88 ms (TLS
/// over sqlx 0.9's Nagle, see [`crate::database`]), which the requests waiting for one paid: a
/// p99 of 8 to 30 ms in that first run with 8 connections opened at start, 2.2 ms with the key's
/// row read once before it.
#[derive(Default)]
pub struct KeyCache(Mutex<Entries>);

/// The cache's contents, under one lock.
#[derive(Default)]
struct Entries {
    rows: HashMap<String, Remembered>,
    /// Reads in flight, by digest.
    reading: HashMap<String, Reading>,
}

/// A key's row as read at `read`; `refreshing` while one request is reading it again.
struct Remembered {
    read: Instant,
    row: Arc<api_key::Model>,
    refreshing: bool,
}

/// What the cache holds for a key.
#[derive(Debug)]
enum Cached {
    /// A row to use as it is.
    Fresh(Arc<api_key::Model>),
    /// A row still valid that this request reads again: it alone, until it reports back.
    Refresh(Arc<api_key::Model>),
    /// Nothing valid: the row must be read ([`KeyCache::read`]).
    Missing,
}

/// A read of a key's row in flight; holds its outcome once it is done.
type Reading = watch::Receiver<Option<ReadOutcome>>;

/// The row read (`None`: no such key), or why it could not be.
type ReadOutcome = Result<Option<Arc<api_key::Model>>, Arc<DbErr>>;

/// Waits for `reading` to be done.
async fn outcome(mut reading: Reading) -> ReadOutcome {
    let stopped = || Err(Arc::new(DbErr::Custom("the read of an API key's row stopped".to_owned())));
    match reading.wait_for(Option::is_some).await {
        Ok(done) => done.clone().unwrap_or_else(stopped),
        // Only if the reading task ended without an outcome (the runtime shutting down).
        Err(_) => stopped(),
    }
}

impl Entries {
    fn put(&mut self, digest: String, row: Arc<api_key::Model>) {
        if self.rows.len() >= KEY_CACHE_CAPACITY {
            self.rows.retain(|_, entry| entry.read.elapsed() < KEY_CACHE_TTL);
        }
        if self.rows.len() >= KEY_CACHE_CAPACITY {
            self.rows.clear();
        }
        self.rows.insert(digest, Remembered { read: Instant::now(), row, refreshing: false });
    }
}

impl KeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, digest: &str) -> Cached {
        let mut entries = self.lock();
        let Some(entry) = entries.rows.get_mut(digest) else { return Cached::Missing };
        let age = entry.read.elapsed();
        if age >= KEY_CACHE_TTL {
            Cached::Missing
        } else if age < KEY_REFRESH_AFTER || entry.refreshing {
            Cached::Fresh(Arc::clone(&entry.row))
        } else {
            entry.refreshing = true;
            Cached::Refresh(Arc::clone(&entry.row))
        }
    }

    /// The read of `digest`'s row in flight, or else a new one, `read(digest)`, in a task of its
    /// own (it ends and reports back even if every request waiting for it goes away); and whether
    /// it is new. Once done, a row read is remembered before anyone waiting sees it.
    fn read<F>(self: &Arc<Self>, digest: &str, read: impl FnOnce(String) -> F) -> (Reading, bool)
    where
        F: Future<Output = Result<Option<api_key::Model>, DbErr>> + Send + 'static,
    {
        let mut entries = self.lock();
        // A read whose task ended without an outcome is not waited for again.
        if let Some(reading) = entries.reading.get(digest).filter(|reading| reading.has_changed().is_ok()) {
            return (reading.clone(), false);
        }
        let (done, reading) = watch::channel(None);
        entries.reading.insert(digest.to_owned(), reading.clone());
        let (cache, digest, read) = (Arc::clone(self), digest.to_owned(), read(digest.to_owned()));
        tokio::spawn(async move {
            let outcome = read.await.map(|row| row.map(Arc::new)).map_err(Arc::new);
            cache.finish_reading(digest, &outcome);
            done.send_replace(Some(outcome));
        });
        (reading, true)
    }

    fn finish_reading(&self, digest: String, outcome: &ReadOutcome) {
        let mut entries = self.lock();
        entries.reading.remove(&digest);
        match outcome {
            Ok(Some(row)) => entries.put(digest, Arc::clone(row)),
            Ok(None) => drop(entries.rows.remove(&digest)),
            Err(_) => {}
        }
    }

    fn put(&self, digest: String, row: Arc<api_key::Model>) {
        self.lock().put(digest, row);
    }

    /// A refresh failed: the row stays as it was, for the next request to read again.
    fn refresh_failed(&self, digest: &str) {
        if let Some(entry) = self.lock().rows.get_mut(digest) {
            entry.refreshing = false;
        }
    }

    fn forget(&self, digest: &str) {
        self.lock().rows.remove(digest);
    }
}

/// Checks a presented key and that it holds `scope`. The key's row comes from `cache` when it was
/// read less than [`KEY_CACHE_TTL`] ago, else from the database.
pub async fn authenticate(
    db: &DatabaseConnection,
    cache: &Arc<KeyCache>,
    presented: &str,
    scope: Scope,
) -> Result<KeyIdentity, Refusal> {
    if !is_well_formed(presented) {
        return Err(Refusal::Malformed);
    }
    let digest = digest(presented);
    let now = Utc::now();
    let read = |digest: String| {
        let db = db.clone();
        async move { api_key::Entity::find().filter(api_key::Column::Digest.eq(digest)).one(&db).await }
    };
    let (row, read_now) = match cache.get(&digest) {
        Cached::Fresh(row) => (row, false),
        Cached::Refresh(remembered) => match read(digest.clone()).await {
            Ok(Some(row)) => {
                let row = Arc::new(row);
                cache.put(digest, Arc::clone(&row));
                (row, true)
            }
            Ok(None) => {
                cache.forget(&digest);
                return Err(Refusal::NotAccepted);
            }
            // The remembered row is still valid: this request goes on with it.
            Err(err) => {
                tracing::warn!("could not read an API key's row again: {err}");
                cache.refresh_failed(&digest);
                (remembered, false)
            }
        },
        Cached::Missing => {
            let (reading, first) = cache.read(&digest, read);
            match outcome(reading).await {
                Ok(Some(row)) => (row, first),
                Ok(None) => return Err(Refusal::NotAccepted),
                Err(err) => return Err(Refusal::Database(err)),
            }
        }
    };
    if row.revoked_at.is_some() || row.expires_at.is_some_and(|expiry| expiry <= now) {
        tracing::debug!(key = %row.name, "refused a revoked or expired key");
        return Err(Refusal::NotAccepted);
    }
    if !parse_scopes(&row.scopes).contains(&scope) {
        return Err(Refusal::MissingScope(scope.as_str()));
    }
    // Only on a row just read: the cached copy's `last_used_at` is as old as the copy.
    if read_now && row.last_used_at.is_none_or(|used| now - used >= LAST_USED_GRANULARITY) {
        touch(db, row.id, now);
    }
    Ok(KeyIdentity { id: row.id, name: row.name.clone() })
}

/// Records a key's use at `now`, off the request's path: a failed bookkeeping write must not
/// fail the request.
fn touch(db: &DatabaseConnection, id: i64, now: DateTime<Utc>) {
    let db = db.clone();
    tokio::spawn(async move {
        let touch = api_key::ActiveModel { id: Set(id), last_used_at: Set(Some(now)), ..Default::default() };
        if let Err(err) = touch.update(&db).await {
            tracing::warn!("could not record a key's last use: {err}");
        }
    });
}

fn parse_scopes(stored: &str) -> Vec<Scope> {
    stored.split_whitespace().filter_map(|s| s.parse().ok()).collect()
}

/// A key as `keys list` shows it: everything but the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Name.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<Scope>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last used, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Why a key was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    /// The name is taken.
    #[error("a key named {0:?} exists")]
    NameTaken(String),
    /// The store failed.
    #[error("database: {0}")]
    Database(#[from] DbErr),
}

/// Creates a key named `name` with `scopes`, returning the key: the only time it is seen.
pub async fn create(
    db: &DatabaseConnection,
    name: &str,
    scopes: &[Scope],
    expires_at: Option<DateTime<Utc>>,
) -> Result<ApiKeySecret, CreateKeyError> {
    let secret = ApiKeySecret::generate();
    register(db, name, &secret, scopes, expires_at).await?;
    Ok(secret)
}

async fn register(
    db: &DatabaseConnection,
    name: &str,
    secret: &ApiKeySecret,
    scopes: &[Scope],
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), CreateKeyError> {
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let row = api_key::ActiveModel {
        name: Set(name.to_owned()),
        digest: Set(secret.digest()),
        scopes: Set(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
        created_at: Set(Utc::now()),
        last_used_at: Set(None),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
        ..Default::default()
    };
    // Not `INSERT … RETURNING`, which on SQLite can hide a failed commit (see `users::insert`).
    match api_key::Entity::insert(row).exec_without_returning(db).await {
        Ok(_) => Ok(()),
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Err(CreateKeyError::NameTaken(name.to_owned()))
        }
        Err(err) => Err(err.into()),
    }
}

/// Every key, oldest first.
pub async fn list(db: &DatabaseConnection) -> Result<Vec<KeyRecord>, DbErr> {
    let rows = api_key::Entity::find().order_by_asc(api_key::Column::Id).all(db).await?;
    Ok(rows
        .into_iter()
        .map(|row| KeyRecord {
            scopes: parse_scopes(&row.scopes),
            name: row.name,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        })
        .collect())
}

/// Revokes the key named `name`; `false` when there is none. Revoking twice keeps the first time.
pub async fn revoke(db: &DatabaseConnection, name: &str) -> Result<bool, DbErr> {
    let result = api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAt, sea_orm::sea_query::Expr::value(Utc::now()))
        .filter(api_key::Column::Name.eq(name))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    if result.rows_affected > 0 {
        return Ok(true);
    }
    Ok(api_key::Entity::find().filter(api_key::Column::Name.eq(name)).count(db).await? > 0)
}

/// What start-up did about keys.
#[derive(Debug)]
pub enum Bootstrap {
    /// Keys existed; nothing was registered.
    KeysExist {
        /// `USERS_API_KEY` was set but is not among them.
        configured_key_unknown: bool,
    },
    /// `USERS_API_KEY` was registered with every scope.
    RegisteredConfigured,
    /// A key was generated with every scope; print it once.
    Generated(ApiKeySecret),
}

/// The name the first key is registered under.
pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap";

/// When no key exists, registers `configured` (from `USERS_API_KEY`) or a generated key with
/// every scope. Safe when several instances start at once: the name is unique, so one insert
/// wins and the others see the key exist.
pub async fn bootstrap(db: &DatabaseConnection, configured: Option<&ApiKeySecret>) -> Result<Bootstrap, DbErr> {
    let known = |db| async move {
        match configured {
            Some(secret) => api_key::Entity::find()
                .filter(api_key::Column::Digest.eq(secret.digest()))
                .count(db)
                .await
                .map(|n| n > 0),
            None => Ok(true),
        }
    };
    if api_key::Entity::find().count(db).await? > 0 {
        return Ok(Bootstrap::KeysExist { configured_key_unknown: !known(db).await? });
    }
    let (secret, generated) = match configured {
        Some(secret) => (secret.clone(), false),
        None => (ApiKeySecret::generate(), true),
    };
    match register(db, BOOTSTRAP_KEY_NAME, &secret, &Scope::ALL, None).await {
        Ok(()) if generated => Ok(Bootstrap::Generated(secret)),
        Ok(()) => Ok(Bootstrap::RegisteredConfigured),
        Err(CreateKeyError::NameTaken(_)) => Ok(Bootstrap::KeysExist { configured_key_unknown: !known(db).await? }),
        Err(CreateKeyError::Database(err)) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let (a, b) = (ApiKeySecret::generate(), ApiKeySecret::generate());
        assert!(is_well_formed(a.expose()), "{}", a.expose());
        assert_ne!(a, b);
        assert_eq!(a.digest().len(), 64);
    }

    #[test]
    fn refuses_malformed_keys() {
        for bad in [
            "",
            "uk_",
            "uk_short",
            "xx_0123456789abcdef0123456789abcdef",
            "uk_0123456789abcdef0123456789abcde!",
            "uk_0123456789abcdef 0123456789abcdef",
        ] {
            assert!(bad.parse::<ApiKeySecret>().is_err(), "{bad:?}");
        }
        assert!("uk_0123456789abcdef0123456789ABCDEF".parse::<ApiKeySecret>().is_ok());
    }

    /// A valid key's row.
    fn key_row() -> api_key::Model {
        api_key::Model {
            id: 1,
            name: "test".to_owned(),
            digest: "d".repeat(64),
            scopes: "users:write".to_owned(),
            created_at: Utc::now(),
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
        }
    }

    /// A row past [`KEY_REFRESH_AFTER`] is read again by one request at a time, the others using
    /// it meanwhile; past [`KEY_CACHE_TTL`] it is never used.
    #[test]
    fn a_remembered_row_is_refreshed_by_one_request_and_never_used_past_its_ttl() {
        let cache = KeyCache::default();
        let row = Arc::new(key_row());
        let aged = |by: Duration| {
            let mut entries = cache.0.lock().unwrap();
            entries.rows.values_mut().for_each(|entry| entry.read = Instant::now() - by);
        };
        assert!(matches!(cache.get("key"), Cached::Missing));
        cache.put("key".to_owned(), Arc::clone(&row));
        assert!(matches!(cache.get("key"), Cached::Fresh(_)));

        aged(KEY_REFRESH_AFTER);
        assert!(matches!(cache.get("key"), Cached::Refresh(_)));
        for _ in 0..3 {
            assert!(matches!(cache.get("key"), Cached::Fresh(_)), "only one request refreshes");
        }
        cache.refresh_failed("key");
        assert!(matches!(cache.get("key"), Cached::Refresh(_)), "after a failed refresh, the next one tries");
        cache.put("key".to_owned(), Arc::clone(&row));
        assert!(matches!(cache.get("key"), Cached::Fresh(_)));

        aged(KEY_CACHE_TTL);
        assert!(matches!(cache.get("key"), Cached::Missing), "a refreshing request never keeps a row past its TTL");
        cache.put("key".to_owned(), row);
        cache.forget("key");
        assert!(matches!(cache.get("key"), Cached::Missing));
    }

    /// Every request that finds a key missing while its row is being read waits for that one
    /// read, and gets its outcome: the row, no row, or the error.
    #[tokio::test]
    async fn a_missing_key_is_read_once_for_every_request_presenting_it_meanwhile() {
        let row = key_row();
        let cache = Arc::new(KeyCache::default());
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let outcomes: [ReadOutcome; 3] =
            [Ok(Some(Arc::new(row))), Ok(None), Err(Arc::new(DbErr::Custom("the store failed".to_owned())))];
        for (round, expected) in outcomes.into_iter().enumerate() {
            let (finish, finished) = tokio::sync::oneshot::channel::<ReadOutcome>();
            let mut finished = Some(finished);
            let mut waiting = Vec::new();
            for request in 0..4 {
                assert!(matches!(cache.get("key"), Cached::Missing), "round {round}, request {request}");
                let reads = Arc::clone(&reads);
                let finished = finished.take();
                let (reading, first) = cache.read("key", move |_| async move {
                    reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let outcome = finished.expect("only the first request reads").await.unwrap();
                    outcome
                        .map(|row| row.map(|row| (*row).clone()))
                        .map_err(|_| DbErr::Custom("the store failed".to_owned()))
                });
                assert_eq!(first, request == 0, "round {round}, request {request}");
                waiting.push(tokio::spawn(outcome(reading)));
            }
            finish.send(expected.clone()).unwrap();
            for outcome in futures::future::join_all(waiting).await {
                match (outcome.unwrap(), &expected) {
                    (Ok(Some(row)), Ok(Some(expected))) => assert_eq!(row, *expected),
                    (Ok(None), Ok(None)) => {}
                    (Err(err), Err(expected)) => assert_eq!(err.to_string(), expected.to_string()),
                    (outcome, _) => panic!("round {round}: {outcome:?} instead of {expected:?}"),
                }
            }
            assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), round + 1, "one read per round");
            let remembered = matches!(cache.get("key"), Cached::Fresh(_));
            assert_eq!(remembered, round == 0, "round {round}: only a row read is remembered");
            cache.forget("key");
        }
    }

    #[test]
    fn debug_redacts_the_key() {
        let key = ApiKeySecret::generate();
        assert!(!format!("{key:?}").contains(&key.expose()[3..]));
    }
}
