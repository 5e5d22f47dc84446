//! `affinity keys create|revoke|list`: API keys per tenant, stored hashed.

use std::collections::BTreeSet;

use affinity_service::http::auth::{MAX_TOKEN_LIFETIME_SECS, StorefrontToken};
use affinity_store::{
    CustomerId, KeyId, Scope, Stores, TenantId, generate_api_key, generate_storefront_key,
};
use anyhow::{Context, Result, bail};

/// Creates a key and prints its secret once.
pub async fn create(
    stores: &Stores,
    tenant: &TenantId,
    scopes: &[String],
    label: Option<String>,
    json: bool,
) -> Result<()> {
    let mut set = BTreeSet::new();
    for s in scopes
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        set.insert(
            s.parse::<Scope>()
                .with_context(|| format!("--scopes {s:?}"))?,
        );
    }
    if set.is_empty() {
        let names: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        bail!("--scopes needs at least one of {}", names.join(", "));
    }
    let key = generate_api_key(tenant, set, label, chrono::Utc::now())?;
    stores
        .records
        .create_key(&key.record)
        .await
        .context("store the key")?;
    let scopes: Vec<&str> = key.record.scopes.iter().map(|s| s.as_str()).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"key_id": key.record.key_id.as_str(), "tenant": tenant.as_str(), "scopes": scopes, "secret": key.secret})
        );
    } else {
        println!(
            "key {} for tenant {} with scopes {}",
            key.record.key_id,
            tenant,
            scopes.join(",")
        );
        println!(
            "secret (shown once; send as `Authorization: Bearer <secret>`):\n{}",
            key.secret
        );
    }
    Ok(())
}

/// Creates a storefront key and prints its signing secret once.
pub async fn create_storefront(
    stores: &Stores,
    tenant: &TenantId,
    label: Option<String>,
    json: bool,
) -> Result<()> {
    let key = generate_storefront_key(tenant, label, chrono::Utc::now())?;
    stores
        .records
        .create_key(&key.record)
        .await
        .context("store the key")?;
    if json {
        println!(
            "{}",
            serde_json::json!({"key_id": key.record.key_id.as_str(), "tenant": tenant.as_str(), "kind": "storefront", "signing_secret": key.signing_secret})
        );
    } else {
        println!(
            "storefront key {} for tenant {} (recommendations only, one customer per token)",
            key.record.key_id, tenant
        );
        println!(
            "signing secret (shown once; keep it on the shop's server, never in a browser):\n{}",
            key.signing_secret
        );
        println!(
            "sign a token: affinity --tenant {tenant} keys sign --key-id {} --customer <id> (secret in AFFINITY_SIGNING_SECRET)",
            key.record.key_id
        );
    }
    Ok(())
}

/// Prints a storefront token for one customer, valid `ttl` seconds from now.
pub fn sign(
    tenant: &TenantId,
    key_id: &str,
    secret: &str,
    customer: &str,
    ttl: i64,
    json: bool,
) -> Result<()> {
    if !(1..=MAX_TOKEN_LIFETIME_SECS).contains(&ttl) {
        bail!("--ttl must be 1..={MAX_TOKEN_LIFETIME_SECS} seconds");
    }
    let key_id = KeyId::parse(key_id).context("--key-id")?;
    let customer = CustomerId::parse(customer).context("--customer")?;
    let expires = chrono::Utc::now().timestamp() + ttl;
    let token = StorefrontToken::sign(tenant, &key_id, secret, &customer, expires)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"token": token, "customer_id": customer.as_str(), "expires": expires})
        );
    } else {
        println!("{token}");
    }
    Ok(())
}

/// Revokes a key by id.
pub async fn revoke(stores: &Stores, tenant: &TenantId, key_id: &str, json: bool) -> Result<()> {
    let id = KeyId::parse(key_id).context("key id")?;
    stores
        .records
        .revoke_key(tenant, &id)
        .await
        .with_context(|| format!("revoke key {key_id} of tenant {tenant}"))?;
    if json {
        println!("{}", serde_json::json!({"key_id": key_id, "revoked": true}));
    } else {
        println!(
            "key {key_id} revoked (instances stop accepting it within AFFINITY_KEY_CACHE_SECS)"
        );
    }
    Ok(())
}

/// Lists the tenant's keys (never their secrets).
pub async fn list(stores: &Stores, tenant: &TenantId, json: bool) -> Result<()> {
    let keys = stores.records.list_keys(tenant).await?;
    for k in keys {
        let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
        if json {
            println!(
                "{}",
                serde_json::json!({"key_id": k.key_id.as_str(), "kind": k.kind.as_str(), "prefix": k.prefix, "scopes": scopes, "label": k.label, "created_at": k.created_at, "revoked": k.revoked})
            );
        } else {
            println!(
                "{}  {}  {:<10} {:<40} {}{}",
                k.key_id,
                k.created_at.format("%Y-%m-%d %H:%M"),
                k.kind.as_str(),
                scopes.join(","),
                k.label.unwrap_or_default(),
                if k.revoked { "  (revoked)" } else { "" }
            );
        }
    }
    Ok(())
}
