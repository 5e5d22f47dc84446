//! Validated identifier newtypes ("parse, don't validate"): the core never sees an unchecked id.
//!
//! Rules (documented in docs/data-model.md):
//! - `TenantId`: 1..=64 chars of `[a-z0-9_-]`, starting with a letter or digit. It is the
//!   first component of composite keys, and because it cannot contain `#` the separator is
//!   unambiguous.
//! - Every other id (`CustomerId`, `ItemId`, `OrderId`, ...): 1..=128 Unicode scalar values,
//!   no leading or trailing white space, and none of the characters in [`FORBIDDEN_ID_CHARS`]
//!   anywhere: Unicode general categories Cc (control), Cf (format: zero-width characters
//!   U+200B..U+200F, bidi controls U+202A..U+202E and U+2066..U+2069, word joiner and
//!   invisible operators U+2060..U+2064, the BOM U+FEFF, tag characters, ...), Zl and Zp
//!   (line and paragraph separators), as of Unicode 16.0. Such characters are invisible or
//!   reorder text, so two ids that look the same on a screen could otherwise be different
//!   keys. Shops' own order numbers such as `#1001` or e-mail-like customer ids are accepted
//!   as they are. [`ID_PATTERN`] is the same rule as a regular expression (the OpenAPI
//!   document declares it); a test checks the two agree on every Unicode scalar value.
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

/// Characters no ordinary id may hold anywhere, as inclusive ranges: Unicode general
/// categories Cc, Cf, Zl and Zp (Unicode 16.0). A fixed table rather than a Unicode-database
/// lookup so that [`ID_PATTERN`] can spell exactly the same set.
pub const FORBIDDEN_ID_CHARS: &[(char, char)] = &[
    ('\u{0000}', '\u{001F}'),   // Cc: C0 controls
    ('\u{007F}', '\u{009F}'),   // Cc: DEL and C1 controls
    ('\u{00AD}', '\u{00AD}'),   // soft hyphen
    ('\u{0600}', '\u{0605}'),   // Arabic number signs
    ('\u{061C}', '\u{061C}'),   // Arabic letter mark (bidi)
    ('\u{06DD}', '\u{06DD}'),   // Arabic end of ayah
    ('\u{070F}', '\u{070F}'),   // Syriac abbreviation mark
    ('\u{0890}', '\u{0891}'),   // Arabic pound and piastre marks above
    ('\u{08E2}', '\u{08E2}'),   // Arabic disputed end of ayah
    ('\u{180E}', '\u{180E}'),   // Mongolian vowel separator
    ('\u{200B}', '\u{200F}'),   // zero-width space/non-joiner/joiner, LRM, RLM
    ('\u{2028}', '\u{202E}'),   // line and paragraph separators (Zl, Zp), bidi embeddings
    ('\u{2060}', '\u{2064}'),   // word joiner, invisible operators
    ('\u{2066}', '\u{206F}'),   // bidi isolates, deprecated format characters
    ('\u{FEFF}', '\u{FEFF}'),   // zero-width no-break space (BOM)
    ('\u{FFF9}', '\u{FFFB}'),   // interlinear annotation controls
    ('\u{110BD}', '\u{110BD}'), // Kaithi number sign
    ('\u{110CD}', '\u{110CD}'), // Kaithi number sign above
    ('\u{13430}', '\u{1343F}'), // Egyptian hieroglyph format controls
    ('\u{1BCA0}', '\u{1BCA3}'), // shorthand format controls
    ('\u{1D173}', '\u{1D17A}'), // musical symbol beam and slur controls
    ('\u{E0001}', '\u{E0001}'), // language tag
    ('\u{E0020}', '\u{E007F}'), // tag characters
];

/// White space an ordinary id may hold inside but not at either end: Unicode White_Space
/// (what `str::trim` removes) less the characters [`FORBIDDEN_ID_CHARS`] already refuses.
pub const EDGE_SPACE_CHARS: &[(char, char)] = &[
    (' ', ' '),
    ('\u{00A0}', '\u{00A0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200A}'),
    ('\u{202F}', '\u{202F}'),
    ('\u{205F}', '\u{205F}'),
    ('\u{3000}', '\u{3000}'),
];

/// [`FORBIDDEN_ID_CHARS`] as the inside of a regular-expression character class.
macro_rules! forbidden_class {
    () => {
        concat!(
            "\\u0000-\\u001F\\u007F-\\u009F\\u00AD\\u0600-\\u0605\\u061C\\u06DD\\u070F\\u0890-\\u0891",
            "\\u08E2\\u180E\\u200B-\\u200F\\u2028-\\u202E\\u2060-\\u2064\\u2066-\\u206F\\uFEFF",
            "\\uFFF9-\\uFFFB\u{110BD}\u{110CD}\u{13430}-\u{1343F}\u{1BCA0}-\u{1BCA3}",
            "\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}",
        )
    };
}

/// [`EDGE_SPACE_CHARS`] as the inside of a regular-expression character class.
macro_rules! edge_space_class {
    () => {
        "\\u0020\\u00A0\\u1680\\u2000-\\u200A\\u202F\\u205F\\u3000"
    };
}

/// The ordinary-id rule (without its length, which depends on the id) as an ECMA-262 /
/// JSON Schema regular expression: a first character that is neither forbidden nor white
/// space, then optionally any allowed characters ending in one that is not white space.
/// Built from [`FORBIDDEN_ID_CHARS`] and [`EDGE_SPACE_CHARS`] (a test checks it). Code points
/// of the Basic Multilingual Plane are written `\uXXXX`; those above it appear as the
/// characters themselves, because ECMA-262 spells them `\u{...}` only in its `u` mode and
/// Python's `re` (which test generators such as schemathesis use) does not read that form.
pub const ID_PATTERN: &str = concat!(
    "^[^",
    forbidden_class!(),
    edge_space_class!(),
    "](?:[^",
    forbidden_class!(),
    "]*[^",
    forbidden_class!(),
    edge_space_class!(),
    "])?$"
);

fn in_ranges(table: &[(char, char)], c: char) -> bool {
    table.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

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
    if let Some(c) = s.chars().find(|&c| in_ranges(FORBIDDEN_ID_CHARS, c)) {
        let kind = if c.is_control() {
            "a control character"
        } else {
            "an invisible formatting or separator character"
        };
        return Err(Error::invalid(
            what,
            format!("{:?} contains U+{:04X}, {kind}", truncate(s), u32::from(c)),
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
    fn ordinary_ids_reject_invisible_and_bidi_characters() {
        for bad in [
            "a\u{200B}b", // zero-width space
            "a\u{200D}b", // zero-width joiner
            "a\u{200E}b", // left-to-right mark
            "a\u{202E}b", // right-to-left override
            "a\u{2060}b", // word joiner
            "a\u{2066}b", // left-to-right isolate
            "a\u{2069}b", // pop directional isolate
            "\u{FEFF}ab", // byte order mark
            "a\u{00AD}b", // soft hyphen
            "a\u{2028}b", // line separator
            "a\u{E0041}", // tag letter A
            "a\u{0085}b", // next line (C1 control)
        ] {
            let err = ItemId::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("item_id") && err.contains("U+"),
                "{bad:?}: {err}"
            );
        }
        // Visible non-ASCII text, joiners inside emoji excepted, stays valid.
        assert!(CustomerId::parse("Zoë Ω 北京 🙂").is_ok());
        assert!(ItemId::parse("a\u{00A0}b").is_ok());
        assert!(ItemId::parse("\u{00A0}ab").is_err());
        assert!(ItemId::parse("ab\u{3000}").is_err());
    }

    /// The inside of a character class spelling `table`, as [`ID_PATTERN`] does.
    fn class_of(table: &[(char, char)]) -> String {
        let one = |c: char| {
            if u32::from(c) <= 0xFFFF {
                format!("\\u{:04X}", u32::from(c))
            } else {
                c.to_string()
            }
        };
        table
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    one(lo)
                } else {
                    format!("{}-{}", one(lo), one(hi))
                }
            })
            .collect()
    }

    #[test]
    fn id_pattern_is_built_from_the_tables() {
        let f = class_of(FORBIDDEN_ID_CHARS);
        let w = class_of(EDGE_SPACE_CHARS);
        assert_eq!(ID_PATTERN, format!("^[^{f}{w}](?:[^{f}]*[^{f}{w}])?$"));
        // The edge table is exactly White_Space (what `trim` removes) minus the forbidden set.
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            let edge = c.is_whitespace() && !in_ranges(FORBIDDEN_ID_CHARS, c);
            assert_eq!(
                in_ranges(EDGE_SPACE_CHARS, c),
                edge,
                "U+{:04X}",
                u32::from(c)
            );
        }
    }

    #[test]
    fn id_pattern_agrees_with_validate_id() {
        let re = regex::Regex::new(ID_PATTERN).unwrap();
        let agrees = |s: &str| {
            let by_rule = validate_id("id", s, usize::MAX).is_ok();
            assert_eq!(re.is_match(s), by_rule, "{s:?}: validate_id says {by_rule}");
        };
        for sample in [
            "a",
            "#1001",
            "jane+shop@example.com",
            "SKU 12/β",
            "a b",
            " a",
            "a ",
            "\u{3000}a",
            "a\u{2029}",
            "",
            "a\nb",
            "\u{200B}",
            "a\u{202A}b",
            "🙂",
            "👩\u{200D}💻",
        ] {
            agrees(sample);
        }
        // Every Unicode scalar value alone, inside and at both ends of an id.
        let mut buf = String::new();
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            for (pre, post) in [("", ""), ("a", "b"), ("a", ""), ("", "b")] {
                buf.clear();
                buf.push_str(pre);
                buf.push(c);
                buf.push_str(post);
                agrees(&buf);
            }
        }
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
