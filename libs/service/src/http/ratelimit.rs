//! Per-key rate limits of the expensive routes (audience, dry run, reports, batch offers):
//! each scans many customers or renders a page, so one key looping on them must not starve
//! an instance. Limits are per instance (Lambda scales out instances; API Gateway's own
//! throttling bounds the total), per key and per route group, as a GCRA token bucket
//! (governor) that allows `per_minute` requests a minute with bursts up to that many.

use std::num::NonZeroU32;

use affinity_store::KeyId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;
use crate::http::auth::Caller;

/// The expensive route groups, each with a bucket of its own per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expensive {
    /// `GET /v1/items/{item_id}/audience`.
    Audience,
    /// `POST /v1/offers/dry-run`.
    DryRun,
    /// `GET /v1/offers/{offer_id}/report` and `GET /v1/models/{version}/report`.
    Reports,
    /// `POST /v1/offers/batch`.
    BatchOffers,
}

impl Expensive {
    /// Name used in the 429 message and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Expensive::Audience => "audience",
            Expensive::DryRun => "dry-run",
            Expensive::Reports => "reports",
            Expensive::BatchOffers => "batch offers",
        }
    }
}

/// The limiter every handler of an expensive route consults.
pub struct RateLimits {
    limiter: Option<DefaultKeyedRateLimiter<(KeyId, Expensive)>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("enabled", &self.limiter.is_some())
            .finish()
    }
}

impl RateLimits {
    /// `per_minute` requests per key and route group a minute; 0 turns limits off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one request of `caller` on `route`: 429 `rate_limited` with the wait when the
    /// key's bucket is empty.
    pub fn check(&self, caller: &Caller, route: Expensive) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&(caller.key_id.clone(), route))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                ApiError::RateLimited {
                    route: route.as_str(),
                    // Round up: a client that waits this long is let through.
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn caller(id: &str) -> Caller {
        Caller {
            tenant: affinity_store::TenantId::default(),
            key_id: KeyId::parse(id).unwrap(),
            scopes: BTreeSet::new(),
            customer: None,
        }
    }

    #[test]
    fn a_key_gets_its_allowance_then_429_with_retry_after_others_unaffected() {
        let limits = RateLimits::new(3);
        let a = caller("a");
        for _ in 0..3 {
            limits.check(&a, Expensive::Audience).unwrap();
        }
        match limits.check(&a, Expensive::Audience) {
            Err(ApiError::RateLimited {
                retry_after_secs, ..
            }) => assert!((1..=20).contains(&retry_after_secs), "{retry_after_secs}"),
            other => panic!("expected 429, got {other:?}"),
        }
        // Another route group and another key have their own buckets.
        limits.check(&a, Expensive::DryRun).unwrap();
        limits.check(&caller("b"), Expensive::Audience).unwrap();
    }

    #[test]
    fn zero_turns_limits_off() {
        let limits = RateLimits::new(0);
        for _ in 0..1000 {
            limits.check(&caller("a"), Expensive::Reports).unwrap();
        }
    }
}
