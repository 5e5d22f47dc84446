//! Backoff policy and chunking shared by the remote backends.

use std::time::Duration;

use rand::Rng;

/// DynamoDB's BatchWriteItem limit; moto accepts more, so we enforce it ourselves.
pub const BATCH_WRITE_LIMIT: usize = 25;
/// DynamoDB's BatchGetItem limit.
pub const BATCH_GET_LIMIT: usize = 100;

/// Exponential backoff with full jitter (sleep uniformly in `[0, min(cap, base * 2^n)]`),
/// the AWS-recommended scheme: retries of many clients spread out instead of synchronising.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts without progress before giving up (the first try counts).
    pub max_attempts: u32,
    /// Backoff ceiling for the first retry.
    pub base_delay: Duration,
    /// Largest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Upper bound of the sleep before retry number `retry` (1-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A jittered sleep before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// Splits `items` into owned chunks of at most `size` (size 0 is treated as 1).
pub fn chunked<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let size = size.max(1);
    let mut out = Vec::with_capacity(items.len().div_ceil(size));
    let mut cur = Vec::with_capacity(size.min(items.len()));
    for it in items {
        cur.push(it);
        if cur.len() == size {
            out.push(std::mem::replace(&mut cur, Vec::with_capacity(size)));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunker_respects_the_25_item_limit() {
        for n in [0usize, 1, 24, 25, 26, 50, 51, 1000, 1001] {
            let chunks = chunked((0..n).collect::<Vec<_>>(), BATCH_WRITE_LIMIT);
            assert!(
                chunks
                    .iter()
                    .all(|c| !c.is_empty() && c.len() <= BATCH_WRITE_LIMIT),
                "n={n}"
            );
            assert_eq!(chunks.len(), n.div_ceil(BATCH_WRITE_LIMIT), "n={n}");
            let flat: Vec<usize> = chunks.into_iter().flatten().collect();
            assert_eq!(
                flat,
                (0..n).collect::<Vec<_>>(),
                "order and completeness, n={n}"
            );
        }
        assert_eq!(chunked(vec![1, 2, 3], 0).len(), 3);
    }

    #[test]
    fn backoff_grows_exponentially_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
        };
        assert_eq!(p.ceiling(1), Duration::from_millis(10));
        assert_eq!(p.ceiling(2), Duration::from_millis(20));
        assert_eq!(p.ceiling(4), Duration::from_millis(80));
        assert_eq!(p.ceiling(5), Duration::from_millis(100));
        assert_eq!(p.ceiling(400), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let p = RetryPolicy::default();
        let samples: Vec<Duration> = (0..200).map(|_| p.delay(3)).collect();
        assert!(samples.iter().all(|d| *d <= p.ceiling(3)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 50, "full jitter should spread sleeps");
    }
}
