//! Who is calling: server keys and storefront tokens.
//!
//! - Server keys: `Authorization: Bearer <key>`. Keys belong to one tenant and carry
//!   scopes; the store holds only their SHA-256, found by hash and compared in constant
//!   time.
//! - Storefront tokens: `Authorization: Bearer aft1.<tenant>.<key id>.<customer>.<expiry>.<sig>`,
//!   signed by the shop's server with a storefront key's signing secret (HMAC-SHA256 over
//!   tenant, key id, customer id and expiry). A token answers only the recommendation
//!   routes, and the customer route only for the customer it names, until it expires (at
//!   most [`MAX_TOKEN_LIFETIME_SECS`] ahead), so it is safe to hand to a browser.
//!
//! A verified key is trusted for `key_cache` before it is looked up again (so a revocation
//! reaches every instance within that time).

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use affinity_store::{
    ApiKeyRecord, CustomerId, KeyHash, KeyId, KeyKind, KeyStore, Scope, TenantId,
    storefront_lookup_hash,
};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::http::state::AppState;

/// Longest bearer token accepted before any lookup (a storefront token with a 128-char
/// customer id fits).
const MAX_KEY_CHARS: usize = 400;
/// Entries kept in the verified-key cache before it is cleared.
const MAX_CACHED: usize = 10_000;
/// Header a caller may send to assert which tenant it means; a mismatch is a 403.
pub const TENANT_HEADER: &str = "x-affinity-tenant";
/// Version tag that starts every storefront token and its signed message.
pub const TOKEN_VERSION: &str = "aft1";
/// Longest life a storefront token may ask for: a token is meant for one page session.
pub const MAX_TOKEN_LIFETIME_SECS: i64 = 24 * 3600;

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The key's tenant: every read and write of the request is scoped to it.
    pub tenant: TenantId,
    /// The key's public id.
    pub key_id: KeyId,
    /// What the key may do.
    pub scopes: BTreeSet<Scope>,
    /// Set for a storefront token: the one customer it may ask about.
    pub customer: Option<CustomerId>,
}

impl Caller {
    /// 403 unless the caller may use `scope`. A storefront token asking for more than
    /// recommendations gets `server_key_required`, so the shop sees which key to use.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.customer.is_some() && scope != Scope::Recommend {
            return Err(ApiError::ServerKeyRequired);
        }
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::MissingScope(scope))
        }
    }

    /// As [`Caller::require`], for a route about one customer: a storefront token answers
    /// only for the customer it names.
    pub fn require_for(&self, scope: Scope, customer: &CustomerId) -> Result<(), ApiError> {
        self.require(scope)?;
        match &self.customer {
            Some(named) if named != customer => Err(ApiError::CustomerMismatch),
            _ => Ok(()),
        }
    }

    /// 403 for storefront tokens: routes any server key may call, whatever its scopes.
    pub fn require_server_key(&self) -> Result<(), ApiError> {
        if self.customer.is_some() {
            Err(ApiError::ServerKeyRequired)
        } else {
            Ok(())
        }
    }

    /// Who made the request, for audit records: the key id, never a secret.
    pub fn actor(&self) -> String {
        match &self.customer {
            Some(_) => format!("storefront:{}", self.key_id),
            None => format!("key:{}", self.key_id),
        }
    }
}

/// The parts of a storefront token, before its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorefrontToken {
    /// Tenant the token claims.
    pub tenant: TenantId,
    /// The storefront key that signed it.
    pub key_id: KeyId,
    /// The one customer it answers for.
    pub customer: CustomerId,
    /// Expiry, Unix seconds.
    pub expires: i64,
    signature: Vec<u8>,
}

impl StorefrontToken {
    /// Reads a token; `invalid_token` for anything that is not one.
    pub fn parse(token: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::InvalidToken(why.to_owned());
        let parts: Vec<&str> = token.split('.').collect();
        let [version, tenant, key_id, customer, expires, signature] = parts[..] else {
            return Err(bad(
                "expected aft1.<tenant>.<key id>.<customer>.<expiry>.<signature>",
            ));
        };
        if version != TOKEN_VERSION {
            return Err(bad("unknown token version"));
        }
        let tenant = TenantId::parse(tenant).map_err(|_| bad("malformed tenant"))?;
        let key_id = KeyId::parse(key_id).map_err(|_| bad("malformed key id"))?;
        let customer = URL_SAFE_NO_PAD
            .decode(customer)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|c| CustomerId::parse(c).ok())
            .ok_or_else(|| bad("the customer part is not a base64url customer id"))?;
        let expires = expires
            .parse::<i64>()
            .map_err(|_| bad("the expiry is not Unix seconds"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| bad("the signature is not base64url"))?;
        Ok(Self {
            tenant,
            key_id,
            customer,
            expires,
            signature,
        })
    }

    /// The bytes the shop's server signs.
    pub fn message(
        tenant: &TenantId,
        key_id: &KeyId,
        customer: &CustomerId,
        expires: i64,
    ) -> String {
        format!("{TOKEN_VERSION}\n{tenant}\n{key_id}\n{customer}\n{expires}")
    }

    /// Signs a token with a storefront key's signing secret (hex): what the shop's server
    /// does (and `affinity keys sign`); kept here so the format has one definition.
    pub fn sign(
        tenant: &TenantId,
        key_id: &KeyId,
        signing_secret_hex: &str,
        customer: &CustomerId,
        expires: i64,
    ) -> Result<String, ApiError> {
        let key = hex::decode(signing_secret_hex)
            .map_err(|_| ApiError::field("signing_secret", "must be hex"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key)
            .map_err(|_| ApiError::field("signing_secret", "unusable HMAC key"))?;
        mac.update(Self::message(tenant, key_id, customer, expires).as_bytes());
        let sig = mac.finalize().into_bytes();
        Ok(format!(
            "{TOKEN_VERSION}.{tenant}.{key_id}.{}.{expires}.{}",
            URL_SAFE_NO_PAD.encode(customer.as_str()),
            URL_SAFE_NO_PAD.encode(sig)
        ))
    }

    /// Checks the token against its key record at `now` (Unix seconds), in this order:
    /// signature (`invalid_signature`), tenant (`wrong_tenant`), expiry (`token_expired`),
    /// lifetime (`invalid_token`).
    fn check(&self, record: &ApiKeyRecord, now: i64) -> Result<Caller, ApiError> {
        let key = record
            .signing_key
            .as_deref()
            .and_then(|k| hex::decode(k).ok())
            .ok_or_else(|| ApiError::InvalidToken("the key cannot sign tokens".into()))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key)
            .map_err(|_| ApiError::InvalidToken("the key cannot sign tokens".into()))?;
        mac.update(
            Self::message(&self.tenant, &self.key_id, &self.customer, self.expires).as_bytes(),
        );
        mac.verify_slice(&self.signature)
            .map_err(|_| ApiError::BadSignature)?;
        if record.tenant != self.tenant {
            return Err(ApiError::WrongTenant(crate::error::clip(
                self.tenant.as_str(),
            )));
        }
        if self.expires <= now {
            let at = chrono::DateTime::from_timestamp(self.expires, 0)
                .map_or_else(|| self.expires.to_string(), |t| t.to_rfc3339());
            return Err(ApiError::TokenExpired(at));
        }
        if self.expires - now > MAX_TOKEN_LIFETIME_SECS {
            return Err(ApiError::InvalidToken(format!(
                "expires more than {MAX_TOKEN_LIFETIME_SECS} s ahead"
            )));
        }
        Ok(Caller {
            tenant: record.tenant.clone(),
            key_id: record.key_id.clone(),
            scopes: record.scopes.clone(),
            customer: Some(self.customer.clone()),
        })
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
        // Server keys start `aff_`; anything starting `aft` is read as a storefront token.
        if secret.starts_with("aft") {
            let token = StorefrontToken::parse(secret)?;
            let record = self
                .record(keys, &storefront_lookup_hash(&token.key_id))
                .await?
                .filter(|r| r.kind == KeyKind::Storefront && !r.revoked)
                .ok_or_else(|| {
                    ApiError::InvalidToken("unknown or revoked storefront key".into())
                })?;
            return token.check(&record, chrono::Utc::now().timestamp());
        }
        let hash = KeyHash::of_secret(secret);
        let record = self
            .record(keys, &hash)
            .await?
            .ok_or(ApiError::InvalidKey)?;
        accept(&record, &hash)
    }

    /// The key record under `hash`, from the cache while fresh, else from the store.
    async fn record(
        &self,
        keys: &dyn KeyStore,
        hash: &KeyHash,
    ) -> Result<Option<ApiKeyRecord>, ApiError> {
        if !self.ttl.is_zero() {
            let cached = self
                .entries
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(hash)
                .filter(|(_, at)| at.elapsed() < self.ttl)
                .map(|(r, _)| r.clone());
            if let Some(record) = cached {
                return Ok(Some(record));
            }
        }
        let Some(record) = keys.find_key(hash).await.map_err(ApiError::from)? else {
            return Ok(None);
        };
        if !self.ttl.is_zero() {
            let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_CACHED {
                map.clear();
            }
            map.insert(*hash, (record.clone(), Instant::now()));
        }
        Ok(Some(record))
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
    // A storefront key's record is found by a hash anyone can derive from its public id:
    // it is never a bearer key.
    if !same || record.revoked || record.kind != KeyKind::Server {
        return Err(ApiError::InvalidKey);
    }
    Ok(Caller {
        tenant: record.tenant.clone(),
        key_id: record.key_id.clone(),
        scopes: record.scopes.clone(),
        customer: None,
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
