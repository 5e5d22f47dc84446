//! Record types stored by the backends, and the per-row results of batch writes.

mod catalog;
mod customers;
mod keys;
mod offers;
mod purchases;
mod registry;

use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, truncate};
use crate::ids::{
    Category, Channel, Currency, CustomerId, EventId, ItemId, JobId, KeyId, ModelVersionId,
    OfferId, OrderId, RecommendationId, TenantId,
};

pub use catalog::*;
pub use customers::*;
pub use keys::*;
pub use offers::*;
pub use purchases::*;
pub use registry::*;

/// Largest stored timestamp (9999-12-31T23:59:59.999Z), so sort keys stay fixed width.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Largest free-text field (titles, messages, reasons) in characters.
pub const MAX_TEXT_CHARS: usize = 2048;

/// Largest JSON document (offer, params, metrics, attributes) in serialized bytes.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// Largest quantity of one purchase line. Far above any real order line; its purpose is
/// that `quantity x unit price` always fits in an `i64` (see [`MAX_PRICE_MINOR`]).
pub const MAX_QUANTITY: u32 = 1_000_000;

/// Largest price in minor units (10^12: ten billion in a two-decimal currency). With
/// [`MAX_QUANTITY`] a line total is at most 10^18 minor units, below `i64::MAX` (~9.2 x 10^18),
/// so sums of spend cannot overflow on one line; a larger value is a unit mistake (a price
/// sent in micro-units, a timestamp in the price column), not a price.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;

/// How far after the time of ingestion a purchase or offer event may be dated, in
/// milliseconds (one day): room for clock skew and time zones, not for a mistyped year
/// that would make the customer look active for years and put the data watermark ahead.
pub const MAX_FUTURE_MS: i64 = 86_400_000;

/// Truncates a timestamp to millisecond precision, the precision every backend stores.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Builds a UTC timestamp from stored milliseconds; corrupt values become a backend error.
pub fn from_millis(ms: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| Error::backend_msg("codec", "decode timestamp", format!("bad millis {ms}")))
}

/// Truncates to millisecond precision so values compare equal after a round trip.
pub fn normalize_time(t: DateTime<Utc>) -> DateTime<Utc> {
    from_millis(t.timestamp_millis()).unwrap_or(t)
}

/// Checks a timestamp lies in 1970-01-01 ..= 9999-12-31 (fixed-width sort keys need that).
pub fn validate_time(field: &str, t: DateTime<Utc>) -> Result<()> {
    let ms = t.timestamp_millis();
    if !(0..=MAX_TIMESTAMP_MS).contains(&ms) {
        return Err(Error::invalid(
            field,
            format!("{t} is outside 1970-01-01..=9999-12-31"),
        ));
    }
    Ok(())
}

/// Checks a user-supplied time is at most [`MAX_FUTURE_MS`] after `now` (the time of
/// ingestion, passed in so the rule stays a pure function of its inputs).
pub fn validate_not_future(field: &str, t: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
    if t.timestamp_millis() > now.timestamp_millis().saturating_add(MAX_FUTURE_MS) {
        return Err(Error::invalid(
            field,
            format!("{t} is more than one day after the time of ingestion ({now})"),
        ));
    }
    Ok(())
}

/// Checks a price lies in 0..=[`MAX_PRICE_MINOR`].
fn validate_price(field: &str, v: i64) -> Result<()> {
    if v < 0 {
        return Err(Error::invalid(field, format!("{v} must not be negative")));
    }
    if v > MAX_PRICE_MINOR {
        return Err(Error::invalid(
            field,
            format!("{v} is above the largest accepted price, {MAX_PRICE_MINOR} minor units"),
        ));
    }
    Ok(())
}

fn validate_text(field: &str, s: &str) -> Result<()> {
    if s.chars().count() > MAX_TEXT_CHARS {
        return Err(Error::invalid(
            field,
            format!(
                "{:?} is longer than {MAX_TEXT_CHARS} characters",
                truncate(s)
            ),
        ));
    }
    Ok(())
}

fn validate_json(field: &str, v: &serde_json::Value) -> Result<()> {
    let n = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if n > MAX_JSON_BYTES {
        return Err(Error::invalid(
            field,
            format!("document is {n} bytes, at most {MAX_JSON_BYTES} allowed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn purchase() -> Purchase {
        Purchase {
            order_id: OrderId::parse("o1").unwrap(),
            line: 1,
            customer_id: CustomerId::parse("c1").unwrap(),
            item_id: ItemId::parse("i1").unwrap(),
            quantity: NonZeroU32::new(2).unwrap(),
            unit_price_minor: 1999,
            currency: Some(Currency::parse("EUR").unwrap()),
            purchased_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap(),
        }
    }

    #[test]
    fn new_rows_may_be_dated_at_most_one_day_ahead() {
        let p = purchase();
        let day = chrono::Duration::milliseconds(MAX_FUTURE_MS);
        // Exactly one day ahead of ingestion is accepted, a millisecond more is not.
        assert!(p.validate_at(p.purchased_at - day).is_ok());
        let late = p.purchased_at - day - chrono::Duration::milliseconds(1);
        let err = p.validate_at(late).unwrap_err().to_string();
        assert!(err.contains("purchased_at"), "{err}");
        // Past purchases are fine; stored rows are not judged against a clock.
        assert!(p.validate_at(p.purchased_at + day * 365).is_ok());
        assert!(p.validate().is_ok());

        let e = OfferEvent {
            event_id: EventId::parse("e1").unwrap(),
            customer_id: CustomerId::parse("c1").unwrap(),
            offer_id: OfferId::parse("o1").unwrap(),
            kind: OfferEventKind::Shown,
            channel: Channel::parse("email").unwrap(),
            recommendation_id: None,
            at: p.purchased_at,
        };
        assert!(e.validate_at(e.at).is_ok());
        let err = e.validate_at(e.at - day * 2).unwrap_err().to_string();
        assert!(err.starts_with("invalid at:"), "{err}");
    }

    #[test]
    fn normalization_truncates_to_millis() {
        let mut p = purchase();
        p.purchased_at += chrono::Duration::nanoseconds(1_234_567);
        let n = p.normalized();
        assert_eq!(n.purchased_at.timestamp_subsec_nanos(), 1_000_000);
    }

    #[test]
    fn key_hash_is_sha256_hex() {
        let h = KeyHash::of_secret("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(KeyHash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(KeyHash::from_hex("zz").is_err());
        assert!(!format!("{h:?}").contains(&h.to_hex()));
    }

    #[test]
    fn enums_round_trip_through_strings() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), s);
            assert_eq!(Scope::from_stored(s.as_str()).unwrap(), vec![s]);
        }
        // The retired `offers` scope is refused for new keys, read as both halves when stored.
        let err = "offers".parse::<Scope>().unwrap_err().to_string();
        assert!(err.contains("offers-decide"), "{err}");
        assert_eq!(
            Scope::from_stored("offers").unwrap(),
            vec![Scope::OffersDecide, Scope::OffersManage]
        );
        for k in [KeyKind::Server, KeyKind::Storefront] {
            assert_eq!(k.as_str().parse::<KeyKind>().unwrap(), k);
        }
        for s in [
            ModelStatus::Candidate,
            ModelStatus::Live,
            ModelStatus::Rejected,
            ModelStatus::Retired,
        ] {
            assert_eq!(s.as_str().parse::<ModelStatus>().unwrap(), s);
        }
        for s in [
            OfferEventKind::Shown,
            OfferEventKind::Accepted,
            OfferEventKind::Declined,
        ] {
            assert_eq!(s.as_str().parse::<OfferEventKind>().unwrap(), s);
        }
        assert!("bogus".parse::<OfferStatus>().is_err());
    }
}
