//! API keys: scopes, hashed secrets, bearer and storefront keys and their generation.

use super::*;

/// What an API key may do. Each scope is named by what it allows, and one route needs
/// exactly one scope (docs/api.md has the route x scope table, tested in full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Similar items, baskets and customer recommendations.
    #[serde(rename = "recommend")]
    Recommend,
    /// A customer's insight profile (spend, RFM, tier, churn risk, CLV): kept apart from
    /// `recommend` because it is personal data no storefront page needs.
    #[serde(rename = "profiles-read")]
    ProfilesRead,
    /// Decide offers (one customer, batches, an item's audience) and record offer events.
    #[serde(rename = "offers-decide")]
    OffersDecide,
    /// Create, change, pause and list offers; their reports and dry runs.
    #[serde(rename = "offers-manage")]
    OffersManage,
    /// Write purchases and catalog items.
    #[serde(rename = "ingest")]
    Ingest,
    /// Customers' data rights: consent and erasure.
    #[serde(rename = "customers-manage")]
    CustomersManage,
    /// Retrain, inspect, promote and roll back models; read jobs and model reports.
    #[serde(rename = "models-admin")]
    ModelsAdmin,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 7] = [
        Scope::Recommend,
        Scope::ProfilesRead,
        Scope::OffersDecide,
        Scope::OffersManage,
        Scope::Ingest,
        Scope::CustomersManage,
        Scope::ModelsAdmin,
    ];

    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Recommend => "recommend",
            Scope::ProfilesRead => "profiles-read",
            Scope::OffersDecide => "offers-decide",
            Scope::OffersManage => "offers-manage",
            Scope::Ingest => "ingest",
            Scope::CustomersManage => "customers-manage",
            Scope::ModelsAdmin => "models-admin",
        }
    }

    /// Reads a stored scope name, including the retired `offers` scope of keys created
    /// before scopes were split: it allowed deciding and managing offers, so it reads as
    /// both (it never reads as `profiles-read`).
    pub fn from_stored(s: &str) -> Result<Vec<Scope>> {
        if s == LEGACY_OFFERS_SCOPE {
            return Ok(vec![Scope::OffersDecide, Scope::OffersManage]);
        }
        Ok(vec![s.parse()?])
    }
}

/// The retired scope name that allowed deciding and managing offers alike.
pub const LEGACY_OFFERS_SCOPE: &str = "offers";

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(scope) = Scope::ALL.into_iter().find(|x| x.as_str() == s) {
            return Ok(scope);
        }
        let names: Vec<&str> = Scope::ALL.iter().map(|x| x.as_str()).collect();
        let hint = if s == LEGACY_OFFERS_SCOPE {
            " (the `offers` scope was split into offers-decide and offers-manage)"
        } else {
            ""
        };
        Err(Error::invalid(
            "scope",
            format!("{:?} is not one of {}{hint}", truncate(s), names.join("|")),
        ))
    }
}

/// SHA-256 of an API key secret: what is stored and looked up, never the secret itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a presented secret for lookup.
    pub fn of_secret(secret: &str) -> Self {
        let d = Sha256::digest(secret.as_bytes());
        let mut b = [0u8; 32];
        b.copy_from_slice(&d);
        Self(b)
    }

    /// Parses the 64-char lowercase hex form used as the stored key.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b)
            .map_err(|_| Error::invalid("key_hash", "must be 64 hex characters"))?;
        Ok(Self(b))
    }

    /// Lowercase hex form (the storage key).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A freshly generated API key: the secret is shown once to the user and then forgotten.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The secret to hand to the user (`aff_<key id>_<random>`).
    pub secret: String,
    /// The record to store (holds only the hash).
    pub record: ApiKeyRecord,
}

/// Generates a new random key for a tenant with the given scopes.
pub fn generate_api_key(
    tenant: &TenantId,
    scopes: BTreeSet<Scope>,
    label: Option<String>,
    now: DateTime<Utc>,
) -> Result<NewApiKey> {
    use rand::RngCore;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 24];
    let mut rng = rand::rng(); // ChaCha-based CSPRNG seeded from the OS
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let key_id = KeyId::parse(hex::encode(id))?;
    let secret = format!("aff_{}_{}", key_id, hex::encode(secret));
    let record = ApiKeyRecord {
        key_id: key_id.clone(),
        tenant: tenant.clone(),
        hash: KeyHash::of_secret(&secret),
        prefix: format!("aff_{key_id}"),
        scopes,
        label,
        created_at: normalize_time(now),
        revoked: false,
        kind: KeyKind::Server,
        signing_key: None,
    };
    record.validate()?;
    Ok(NewApiKey { secret, record })
}

/// A stored API key (hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id, for display and revocation.
    pub key_id: KeyId,
    /// Tenant the key belongs to.
    pub tenant: TenantId,
    /// SHA-256 of the secret; the lookup key.
    pub hash: KeyHash,
    /// Displayable prefix of the secret so users can tell keys apart.
    pub prefix: String,
    /// What the key may do.
    pub scopes: BTreeSet<Scope>,
    /// Optional human label.
    pub label: Option<String>,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// Revoked keys stay stored (audit) but authenticate nothing.
    pub revoked: bool,
    /// Server key (a bearer secret) or storefront key (signs customer tokens).
    pub kind: KeyKind,
    /// A storefront key's HMAC key (hex), which the shop's server also holds to sign
    /// customer tokens; the service must hold it to check them. None for server keys.
    pub signing_key: Option<String>,
}

/// Where a key may live, which decides how it authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// On the shop's servers: the secret is the bearer token.
    #[default]
    Server,
    /// Safe for browsers: never a bearer itself; the shop's server signs short-lived
    /// tokens naming one customer with it, and only those tokens are presented.
    Storefront,
}

impl KeyKind {
    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Server => "server",
            KeyKind::Storefront => "storefront",
        }
    }
}

impl FromStr for KeyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "server" => Ok(Self::Server),
            "storefront" => Ok(Self::Storefront),
            other => Err(Error::invalid(
                "kind",
                format!("{:?} is not one of server|storefront", truncate(other)),
            )),
        }
    }
}

/// The lookup hash of a storefront key: derived from its public id, so a token naming the
/// key finds its record through the same hash index as a bearer key. Bearer
/// authentication refuses storefront records, so knowing the id grants nothing.
pub fn storefront_lookup_hash(key_id: &KeyId) -> KeyHash {
    KeyHash::of_secret(&format!("storefront-key:{key_id}"))
}

/// A freshly generated storefront key: the signing secret is shown once, to be kept on the
/// shop's server.
#[derive(Debug, Clone)]
pub struct NewStorefrontKey {
    /// HMAC-SHA256 key (64 hex characters) the shop's server signs customer tokens with.
    pub signing_secret: String,
    /// The record to store.
    pub record: ApiKeyRecord,
}

/// Generates a storefront key for a tenant: it answers recommendation routes only, and
/// customer routes only for the customer a token names.
pub fn generate_storefront_key(
    tenant: &TenantId,
    label: Option<String>,
    now: DateTime<Utc>,
) -> Result<NewStorefrontKey> {
    use rand::RngCore;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    let mut rng = rand::rng(); // ChaCha-based CSPRNG seeded from the OS
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let key_id = KeyId::parse(hex::encode(id))?;
    let signing_secret = hex::encode(secret);
    let record = ApiKeyRecord {
        hash: storefront_lookup_hash(&key_id),
        prefix: format!("aft_{key_id}"),
        key_id,
        tenant: tenant.clone(),
        scopes: BTreeSet::from([Scope::Recommend]),
        label,
        created_at: normalize_time(now),
        revoked: false,
        kind: KeyKind::Storefront,
        signing_key: Some(signing_secret.clone()),
    };
    record.validate()?;
    Ok(NewStorefrontKey {
        signing_secret,
        record,
    })
}

impl ApiKeyRecord {
    /// Checks prefix/label length and timestamp range.
    pub fn validate(&self) -> Result<()> {
        crate::ids::validate_id("prefix", &self.prefix, 64)?;
        if let Some(l) = &self.label {
            validate_text("label", l)?;
        }
        match (self.kind, &self.signing_key) {
            (KeyKind::Server, None) => {}
            (KeyKind::Storefront, Some(k))
                if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) => {}
            (KeyKind::Server, Some(_)) => {
                return Err(Error::invalid("signing_key", "a server key has none"));
            }
            (KeyKind::Storefront, _) => {
                return Err(Error::invalid(
                    "signing_key",
                    "a storefront key needs 64 hex characters",
                ));
            }
        }
        validate_time("created_at", self.created_at)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to correlate, not enough to matter.
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_hash_their_secret() {
        let t = TenantId::default();
        let k = generate_api_key(&t, BTreeSet::from([Scope::Recommend]), None, Utc::now()).unwrap();
        assert_eq!(k.record.hash, KeyHash::of_secret(&k.secret));
        assert!(k.secret.starts_with(&k.record.prefix));
        let k2 = generate_api_key(&t, BTreeSet::new(), None, Utc::now()).unwrap();
        assert_ne!(k.secret, k2.secret);
    }

    #[test]
    fn storefront_keys_hold_a_signing_key_and_only_recommend() {
        let t = TenantId::default();
        let k = generate_storefront_key(&t, None, Utc::now()).unwrap();
        assert_eq!(k.record.kind, KeyKind::Storefront);
        assert_eq!(k.record.scopes, BTreeSet::from([Scope::Recommend]));
        assert_eq!(k.record.hash, storefront_lookup_hash(&k.record.key_id));
        assert_eq!(
            k.record.signing_key.as_deref(),
            Some(k.signing_secret.as_str())
        );
        // A server record must not carry a signing key, a storefront one must.
        let mut bad = k.record.clone();
        bad.kind = KeyKind::Server;
        assert!(bad.validate().is_err());
        let mut bad = k.record.clone();
        bad.signing_key = None;
        assert!(bad.validate().is_err());
    }
}
