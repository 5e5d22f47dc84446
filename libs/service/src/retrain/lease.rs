//! The tenant's retrain lock as a lease: taken with a conditional write, renewed in the
//! background while the pipeline works, released at the end. A run that dies stops
//! renewing, so its lock expires by itself and the next run goes ahead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use affinity_store::{Conflict, RecordStore, TenantId};
use tokio::task::JoinHandle;

use crate::error::{Context, Error, Result};

/// A held lease; dropping it stops the renewals (the lock then expires), `release` frees
/// it at once.
pub(crate) struct Lease {
    records: Arc<dyn RecordStore>,
    tenant: TenantId,
    owner: String,
    lease: Duration,
    lost: Arc<AtomicBool>,
    heartbeat: JoinHandle<()>,
}

impl Lease {
    /// Takes the lock or says who holds it.
    pub(crate) async fn acquire(
        records: Arc<dyn RecordStore>,
        tenant: &TenantId,
        owner: String,
        lease: Duration,
    ) -> Result<Self> {
        match records.acquire_lock(tenant, &owner, lease).await {
            Ok(_) => {}
            Err(affinity_store::Error::Conflict(Conflict::LockHeld { owner, until })) => {
                return Err(Error::RetrainRunning {
                    tenant: tenant.to_string(),
                    holder: owner,
                    until,
                });
            }
            Err(e) => return Err(e).step("take the retrain lock"),
        }
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(renew_until_stopped(
            Arc::clone(&records),
            tenant.clone(),
            owner.clone(),
            lease,
            Arc::clone(&lost),
        ));
        Ok(Self {
            records,
            tenant: tenant.clone(),
            owner,
            lease,
            lost,
            heartbeat,
        })
    }

    /// Fails if a renewal found the lock gone (expired and taken by another run).
    pub(crate) fn check(&self, step: &'static str) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::LockLost {
                tenant: self.tenant.to_string(),
                step,
            });
        }
        Ok(())
    }

    /// Renews now, in line: done right before the pointer flip so a run whose lock lapsed
    /// never promotes.
    pub(crate) async fn renew(&self, step: &'static str) -> Result<()> {
        self.check(step)?;
        match self
            .records
            .renew_lock(&self.tenant, &self.owner, self.lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(affinity_store::Error::Conflict(Conflict::LockNotOwned { .. })) => {
                self.lost.store(true, Ordering::SeqCst);
                Err(Error::LockLost {
                    tenant: self.tenant.to_string(),
                    step,
                })
            }
            Err(e) => Err(e).step("renew the retrain lock"),
        }
    }

    /// Stops renewing and frees the lock.
    pub(crate) async fn release(self) -> Result<()> {
        self.heartbeat.abort();
        self.records
            .release_lock(&self.tenant, &self.owner)
            .await
            .step("release the retrain lock")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A dead process renews nothing: without the heartbeat the lease runs out.
        self.heartbeat.abort();
    }
}

/// Renews every third of the lease. Gives up (and flags the lease lost) when the lock
/// is no longer ours, or when renewals kept failing until the lease must have lapsed.
async fn renew_until_stopped(
    records: Arc<dyn RecordStore>,
    tenant: TenantId,
    owner: String,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    let period = (lease / 3).max(Duration::from_millis(50));
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(period).await;
        match records.renew_lock(&tenant, &owner, lease).await {
            Ok(_) => last_ok = Instant::now(),
            Err(affinity_store::Error::Conflict(Conflict::LockNotOwned { .. })) => {
                tracing::warn!(tenant = %tenant, "retrain lock lost: another run holds it");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "retrain lock renewal failed");
                if last_ok.elapsed() >= lease {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use affinity_store::Stores;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renewals_keep_the_lock_and_stop_with_the_run() {
        let stores = Stores::memory().unwrap();
        let t = TenantId::default();
        let lease = Duration::from_millis(1500);
        let held = Lease::acquire(stores.records.clone(), &t, "a#1".into(), lease)
            .await
            .unwrap();
        // Well past the first lease: the heartbeat renewed it.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(held.check("test").is_ok());
        let other = Lease::acquire(stores.records.clone(), &t, "b#1".into(), lease).await;
        assert!(matches!(other, Err(Error::RetrainRunning { ref holder, .. }) if holder == "a#1"));
        // A dropped lease (a dead run) is not renewed: it lapses and the next run gets it.
        drop(held);
        let mut taken = None;
        for _ in 0..100 {
            match Lease::acquire(stores.records.clone(), &t, "b#1".into(), lease).await {
                Ok(l) => {
                    taken = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let taken = taken.expect("the abandoned lease lapsed");
        taken.release().await.unwrap();
        let again = Lease::acquire(stores.records.clone(), &t, "c#1".into(), lease)
            .await
            .unwrap();
        again.release().await.unwrap();
    }
}
