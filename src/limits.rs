//! Rate limits: per API key for authenticated calls, per client address for public signup.
//!
//! Limits are kept in this instance's memory, so with N instances a client gets up to N times the
//! limit; that is a throttle against floods, not an accounting guarantee, and nothing that
//! correctness depends on. A shared store (PostgreSQL, Redis) would make them global at the cost
//! of a round trip on every request: the trade-off not taken.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
};
use poem::{
    Request, Response,
    http::{HeaderName, HeaderValue},
};

type Keyed<K> = DefaultKeyedRateLimiter<K, StateInformationMiddleware>;

/// Where a rate-limit decision left a client, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// Requests per window.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Seconds until the allowance is whole again.
    pub reset_secs: u64,
    /// When refused: seconds until the next request is let through.
    pub retry_after_secs: Option<u64>,
}

impl RateState {
    /// Writes `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (and `Retry-After`
    /// when refused) onto `response`.
    pub fn write_headers(&self, response: &mut Response) {
        let headers = response.headers_mut();
        let mut set = |name: &'static str, value: u64| {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
        };
        set("ratelimit-limit", u64::from(self.limit));
        set("ratelimit-remaining", u64::from(self.remaining));
        set("ratelimit-reset", self.reset_secs);
        if let Some(retry_after) = self.retry_after_secs {
            set("retry-after", retry_after);
        }
    }
}

/// The limits of one instance.
pub struct RateLimits {
    per_key: Option<Keyed<i64>>,
    per_address: Option<Keyed<IpAddr>>,
    trust_forwarded_for: bool,
    clock: DefaultClock,
}

/// Requests per minute, for the configuration.
pub type PerMinute = NonZeroU32;

impl RateLimits {
    /// Limits of `per_key` requests a minute for each key and `per_address` signups a minute for
    /// each client address; `None` switches one off.
    pub fn new(per_key: Option<PerMinute>, per_address: Option<PerMinute>, trust_forwarded_for: bool) -> Self {
        Self {
            per_key: per_key.map(keyed),
            per_address: per_address.map(keyed),
            trust_forwarded_for,
            clock: DefaultClock::default(),
        }
    }

    /// No limits at all.
    pub fn off() -> Self {
        Self::new(None, None, false)
    }

    /// Counts a request made with the key `key_id`.
    pub fn check_key(&self, key_id: i64) -> Option<RateState> {
        self.per_key.as_ref().map(|limiter| self.decide(limiter, &key_id))
    }

    /// Counts a public signup from the client of `request`.
    pub fn check_address(&self, request: &Request) -> Option<RateState> {
        let address = self.client_address(request)?;
        self.per_address.as_ref().map(|limiter| self.decide(limiter, &address))
    }

    /// The client's address: the peer's, or, behind a trusted proxy, the last `X-Forwarded-For`
    /// entry, which is the one that proxy added (earlier entries are the client's to forge).
    pub fn client_address(&self, request: &Request) -> Option<IpAddr> {
        if self.trust_forwarded_for
            && let Some(forwarded) = request.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok())
            && let Some(last) = forwarded.rsplit(',').next()
            && let Ok(address) = last.trim().parse()
        {
            return Some(address);
        }
        request.remote_addr().as_socket_addr().map(|peer| peer.ip())
    }

    fn decide<K: std::hash::Hash + Eq + Clone>(&self, limiter: &Keyed<K>, key: &K) -> RateState {
        match limiter.check_key(key) {
            Ok(snapshot) => {
                let quota = snapshot.quota();
                let remaining = snapshot.remaining_burst_capacity();
                RateState {
                    limit: quota.burst_size().get(),
                    remaining,
                    reset_secs: ceil_secs(quota.replenish_interval() * (quota.burst_size().get() - remaining)),
                    retry_after_secs: None,
                }
            }
            Err(not_until) => {
                let quota = not_until.quota();
                let wait = not_until.wait_time_from(self.clock.now());
                RateState {
                    limit: quota.burst_size().get(),
                    remaining: 0,
                    reset_secs: ceil_secs(quota.replenish_interval() * quota.burst_size().get()),
                    retry_after_secs: Some(ceil_secs(wait).max(1)),
                }
            }
        }
    }

    /// Forgets clients whose allowance is whole again, so the maps do not grow without bound.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_key {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_address {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

fn keyed<K: std::hash::Hash + Eq + Clone>(per_minute: PerMinute) -> Keyed<K> {
    RateLimiter::keyed(Quota::per_minute(per_minute)).with_middleware()
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A request's rate-limit state, left by the access check for the response's headers.
#[derive(Clone, Default)]
pub struct RateSlot(Arc<Mutex<Option<RateState>>>);

impl RateSlot {
    /// Records the state.
    pub fn set(&self, state: RateState) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(state);
    }

    /// The state, if a limit applied.
    pub fn get(&self) -> Option<RateState> {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_down_then_refuses_with_a_retry_time() {
        let limits = RateLimits::new(NonZeroU32::new(3), None, false);
        let states: Vec<RateState> = (0..4).map(|_| limits.check_key(7).unwrap()).collect();
        assert_eq!(states.iter().map(|s| s.remaining).collect::<Vec<_>>(), [2, 1, 0, 0]);
        assert!(states[..3].iter().all(|s| s.retry_after_secs.is_none() && s.limit == 3));
        let refused = states[3];
        assert!(refused.retry_after_secs.is_some_and(|secs| (1..=20).contains(&secs)), "{refused:?}");
        assert_eq!(refused.reset_secs, 60);
        // Another key has its own allowance.
        assert_eq!(limits.check_key(8).unwrap().remaining, 2);
    }

    #[test]
    fn off_limits_decide_nothing() {
        assert!(RateLimits::off().check_key(1).is_none());
    }
}
