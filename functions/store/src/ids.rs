//! Validated identifier newtypes ("parse, don't validate"): the core never sees an unchecked id.
//!
//! Rules (documented in docs/data-model.md):
//! - `TenantId`: 1..=64 chars of `[a-z0-9_-]`, starting with a letter or digit. It is the
//!   first component of composite keys, and because it cannot contain `#` the separator is
//!   unambiguous.
//! - Every other id (`CustomerId`, `ItemId`, `OrderId`, ...): 1..=128 Unicode scalar values,
//!   no control characters, no leading or trailing whitespace. Shops' own order numbers
//!   such as `#1001` or e-mail-like customer ids are accepted as they are.
//! - `BlobKey`: 1..=512 chars, `/`-separated segments of `[A-Za-z0-9._=-]`, no `.`/`..`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, truncate};

/// Maximum length, in characters, of ordinary ids.
pub const MAX_ID_CHARS: usize = 128;
/// Maximum length of a tenant id.
pub const MAX_TENANT_CHARS: usize = 64;
/// Maximum length of a blob key.
pub const MAX_BLOB_KEY_CHARS: usize = 512;

/// Checks the ordinary-id rules; `what` names the field in the error.
pub(crate) fn validate_id(what: &str, s: &str, max: usize) -> Result<()> {
    let n = s.chars().count();
    if n == 0 {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if n > max {
        return Err(Error::invalid(
            what,
            format!("{:?} is {n} characters, at most {max} allowed", truncate(s)),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(
            what,
            format!("{:?} contains a control character", truncate(s)),
        ));
    }
    if s.trim() != s {
        return Err(Error::invalid(
            what,
            format!("{:?} has leading or trailing whitespace", truncate(s)),
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps the value; the only way to build one.
            pub fn parse(s: impl Into<String>) -> Result<Self> {
                let s = s.into();
                validate_id($what, &s, $max)?;
                Ok(Self(s))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A shop's customer identifier (opaque to us; may be an e-mail-like string).
    CustomerId, "customer_id", MAX_ID_CHARS
);
id_type!(
    /// A catalog item (SKU / product) identifier.
    ItemId, "item_id", MAX_ID_CHARS
);
id_type!(
    /// An order number; with the line number it identifies one purchase.
    OrderId, "order_id", MAX_ID_CHARS
);
id_type!(
    /// An offer identifier.
    OfferId, "offer_id", MAX_ID_CHARS
);
id_type!(
    /// An offer event's idempotency key, chosen by the sender.
    EventId, "event_id", MAX_ID_CHARS
);
id_type!(
    /// A model version identifier (e.g. a timestamp-based string).
    ModelVersionId, "model_version", MAX_ID_CHARS
);
id_type!(
    /// A retrain job identifier; a retried invocation reuses it.
    JobId, "job_id", MAX_ID_CHARS
);
id_type!(
    /// The public, displayable id of an API key (never the secret).
    KeyId, "key_id", MAX_ID_CHARS
);
id_type!(
    /// A catalog category label.
    Category, "category", MAX_ID_CHARS
);
id_type!(
    /// The channel an offer event happened on (email, sms, web, ...).
    Channel, "channel", 64
);
id_type!(
    /// The id of a recommendation response, linking events back to what was shown.
    RecommendationId, "recommendation_id", MAX_ID_CHARS
);

/// A tenant (shop) namespace; every stored key starts with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Name of the tenant used when a deployment serves a single shop.
    pub const DEFAULT: &'static str = "default";

    /// Validates a tenant id: 1..=64 of `[a-z0-9_-]`, first char a letter or digit.
    pub fn parse(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let n = s.chars().count();
        if n == 0 || n > MAX_TENANT_CHARS {
            return Err(Error::invalid(
                "tenant",
                format!(
                    "{:?} must be 1..={MAX_TENANT_CHARS} characters",
                    truncate(&s)
                ),
            ));
        }
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        let first_ok = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !first_ok || !s.chars().all(ok_char) {
            return Err(Error::invalid(
                "tenant",
                format!(
                    "{:?} must be lowercase letters, digits, '-' or '_', starting with a letter or digit",
                    truncate(&s)
                ),
            ));
        }
        Ok(Self(s))
    }

    /// The single-shop default tenant, `default`.
    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_string())
    }

    /// The validated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::default_tenant()
    }
}

impl TryFrom<String> for TenantId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(s)
    }
}

impl FromStr for TenantId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl From<TenantId> for String {
    fn from(v: TenantId) -> String {
        v.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant-relative blob key such as `models/v42/artifact.bin`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlobKey(String);

impl BlobKey {
    /// Validates a key: safe as both an S3 key and a relative file path on any OS.
    pub fn parse(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let n = s.chars().count();
        if n == 0 || n > MAX_BLOB_KEY_CHARS {
            return Err(Error::invalid(
                "blob_key",
                format!(
                    "{:?} must be 1..={MAX_BLOB_KEY_CHARS} characters",
                    truncate(&s)
                ),
            ));
        }
        for seg in s.split('/') {
            let ok = !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '='));
            if !ok {
                return Err(Error::invalid(
                    "blob_key",
                    format!(
                        "{:?}: segments must be non-empty [A-Za-z0-9._=-], not '.' or '..'",
                        truncate(&s)
                    ),
                ));
            }
        }
        Ok(Self(s))
    }

    /// Validates a prefix for listing: empty, or a key optionally ending in `/`.
    pub fn parse_prefix(s: &str) -> Result<String> {
        if s.is_empty() {
            return Ok(String::new());
        }
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        BlobKey::parse(trimmed)?;
        Ok(s.to_string())
    }

    /// The validated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BlobKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(s)
    }
}

impl From<BlobKey> for String {
    fn from(v: BlobKey) -> String {
        v.0
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ISO 4217 currency code: exactly three uppercase ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Parses `EUR`, `USD`, ...; lowercase is rejected to keep stored values canonical.
    pub fn parse(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Self([b[0], b[1], b[2]]))
        } else {
            Err(Error::invalid(
                "currency",
                format!(
                    "{:?} must be a 3-letter uppercase ISO 4217 code",
                    truncate(s)
                ),
            ))
        }
    }

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase bytes are ever stored, so this cannot fail; fall back defensively.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(v: Currency) -> String {
        v.as_str().to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_accept_shop_formats() {
        assert!(OrderId::parse("#1001").is_ok());
        assert!(CustomerId::parse("jane+shop@example.com").is_ok());
        assert!(ItemId::parse("SKU 12/β").is_ok());
        assert!(ItemId::parse("x".repeat(128)).is_ok());
    }

    #[test]
    fn ordinary_ids_reject_bad_values() {
        assert!(ItemId::parse("").is_err());
        assert!(ItemId::parse("x".repeat(129)).is_err());
        assert!(ItemId::parse("a\nb").is_err());
        assert!(ItemId::parse(" padded").is_err());
        assert!(ItemId::parse("padded ").is_err());
        let err = CustomerId::parse("a\u{0}").unwrap_err().to_string();
        assert!(err.contains("customer_id"), "{err}");
    }

    #[test]
    fn tenant_rules() {
        assert_eq!(TenantId::default().as_str(), "default");
        assert!(TenantId::parse("shop-1_eu").is_ok());
        assert!(TenantId::parse("Shop").is_err());
        assert!(TenantId::parse("-shop").is_err());
        assert!(TenantId::parse("a#b").is_err());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("a".repeat(65)).is_err());
    }

    #[test]
    fn blob_key_rules() {
        assert!(BlobKey::parse("models/v1/artifact.bin").is_ok());
        assert!(BlobKey::parse("../etc/passwd").is_err());
        assert!(BlobKey::parse("/abs").is_err());
        assert!(BlobKey::parse("a//b").is_err());
        assert!(BlobKey::parse("a/./b").is_err());
        assert!(BlobKey::parse("a b").is_err());
        assert_eq!(BlobKey::parse_prefix("models/").unwrap(), "models/");
        assert_eq!(BlobKey::parse_prefix("").unwrap(), "");
        assert!(BlobKey::parse_prefix("../").is_err());
    }

    #[test]
    fn currency_rules() {
        assert_eq!(Currency::parse("EUR").unwrap().as_str(), "EUR");
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: ItemId = serde_json::from_str("\"sku-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"sku-1\"");
        assert!(serde_json::from_str::<ItemId>("\"\"").is_err());
        assert!(serde_json::from_str::<TenantId>("\"UP\"").is_err());
    }
}
