//! API keys: `Authorization: Bearer <key>`. Keys belong to one tenant and carry scopes;
//! the store holds only their SHA-256, found by hash and compared in constant time. A
//! verified key is trusted for `key_cache` before it is looked up again (so a revocation
//! reaches every instance within that time).

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use affinity_store::{ApiKeyRecord, KeyHash, KeyId, KeyStore, Scope, TenantId};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Longest bearer token accepted before any lookup.
const MAX_KEY_CHARS: usize = 200;
/// Entries kept in the verified-key cache before it is cleared.
const MAX_CACHED: usize = 10_000;
/// Header a caller may send to assert which tenant it means; a mismatch is a 403.
pub const TENANT_HEADER: &str = "x-affinity-tenant";

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The key's tenant: every read and write of the request is scoped to it.
    pub tenant: TenantId,
    /// The key's public id.
    pub key_id: KeyId,
    /// What the key may do.
    pub scopes: BTreeSet<Scope>,
}

impl Caller {
    /// 403 unless the key carries `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::MissingScope(scope))
        }
    }
}

/// Verified keys by hash, with the time they were verified.
#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    entries: RwLock<HashMap<KeyHash, (ApiKeyRecord, Instant)>>,
}

impl KeyCache {
    /// A cache trusting verified keys for `ttl` (zero: look up every time).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// Authenticates a presented secret: 401 when malformed, unknown or revoked.
    pub async fn verify(&self, keys: &dyn KeyStore, secret: &str) -> Result<Caller, ApiError> {
        if secret.is_empty()
            || secret.len() > MAX_KEY_CHARS
            || !secret.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ApiError::InvalidKey);
        }
        let hash = KeyHash::of_secret(secret);
        if !self.ttl.is_zero() {
            let cached = self
                .entries
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&hash)
                .filter(|(_, at)| at.elapsed() < self.ttl)
                .map(|(r, _)| r.clone());
            if let Some(record) = cached {
                return accept(&record, &hash);
            }
        }
        let record = keys
            .find_key(&hash)
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::InvalidKey)?;
        let caller = accept(&record, &hash)?;
        if !self.ttl.is_zero() {
            let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_CACHED {
                map.clear();
            }
            map.insert(hash, (record, Instant::now()));
        }
        Ok(caller)
    }
}

/// Constant-time check of the stored hash against the presented one, then revocation.
fn accept(record: &ApiKeyRecord, presented: &KeyHash) -> Result<Caller, ApiError> {
    let same: bool = record
        .hash
        .to_hex()
        .as_bytes()
        .ct_eq(presented.to_hex().as_bytes())
        .into();
    if !same || record.revoked {
        return Err(ApiError::InvalidKey);
    }
    Ok(Caller {
        tenant: record.tenant.clone(),
        key_id: record.key_id.clone(),
        scopes: record.scopes.clone(),
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or(ApiError::MissingKey)?;
        let value = header.to_str().map_err(|_| ApiError::InvalidKey)?;
        let (scheme, secret) = value.split_once(' ').ok_or(ApiError::InvalidKey)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::InvalidKey);
        }
        let caller = state
            .keys
            .verify(state.stores.records.as_ref(), secret.trim())
            .await?;
        if let Some(t) = parts.headers.get(TENANT_HEADER) {
            let named = t.to_str().map_err(|_| ApiError::InvalidHeader {
                header: TENANT_HEADER,
                message: "must be visible ASCII".into(),
            })?;
            if named != caller.tenant.as_str() {
                return Err(ApiError::WrongTenant(crate::error::clip(named)));
            }
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use affinity_store::{Stores, generate_api_key};

    #[tokio::test]
    async fn keys_verify_by_hash_and_revocation_counts() {
        let stores = Stores::memory().unwrap();
        let t = TenantId::parse("shop").unwrap();
        let k = generate_api_key(&t, [Scope::Recommend].into(), None, chrono::Utc::now()).unwrap();
        stores.records.create_key(&k.record).await.unwrap();
        let cache = KeyCache::new(Duration::ZERO);
        let c = cache
            .verify(stores.records.as_ref(), &k.secret)
            .await
            .unwrap();
        assert_eq!(c.tenant, t);
        assert!(c.require(Scope::Recommend).is_ok());
        assert!(matches!(
            c.require(Scope::Ingest),
            Err(ApiError::MissingScope(_))
        ));
        let wrong = format!("{}x", k.secret);
        assert!(matches!(
            cache.verify(stores.records.as_ref(), &wrong).await,
            Err(ApiError::InvalidKey)
        ));
        stores
            .records
            .revoke_key(&t, &k.record.key_id)
            .await
            .unwrap();
        assert!(matches!(
            cache.verify(stores.records.as_ref(), &k.secret).await,
            Err(ApiError::InvalidKey)
        ));
    }

    #[tokio::test]
    async fn cached_keys_skip_the_store_until_the_ttl() {
        let stores = Stores::memory().unwrap();
        let t = TenantId::default();
        let k = generate_api_key(&t, [Scope::Recommend].into(), None, chrono::Utc::now()).unwrap();
        stores.records.create_key(&k.record).await.unwrap();
        let cache = KeyCache::new(Duration::from_secs(3600));
        cache
            .verify(stores.records.as_ref(), &k.secret)
            .await
            .unwrap();
        stores
            .records
            .revoke_key(&t, &k.record.key_id)
            .await
            .unwrap();
        // Within the TTL the cached verification stands (documented revocation delay).
        assert!(
            cache
                .verify(stores.records.as_ref(), &k.secret)
                .await
                .is_ok()
        );
    }
}
