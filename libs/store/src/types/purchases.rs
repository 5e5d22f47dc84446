//! Purchases: the order line, the per-row results of batch writes, and what a training
//! scan hands over (rows, watermark).

use super::*;

/// One purchased order line; identity is (tenant, order_id, line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    /// Order number from the shop.
    pub order_id: OrderId,
    /// Line number within the order.
    pub line: u32,
    /// Who bought.
    pub customer_id: CustomerId,
    /// What was bought.
    pub item_id: ItemId,
    /// How many units (at least one, enforced by the type).
    pub quantity: NonZeroU32,
    /// Unit price in integer minor units (cents), never a float, so sums are exact.
    pub unit_price_minor: i64,
    /// Currency of the price, when known.
    pub currency: Option<Currency>,
    /// When the purchase happened (UTC, stored at millisecond precision).
    pub purchased_at: DateTime<Utc>,
}

impl Purchase {
    /// Checks the rules types cannot express and that hold whenever the row was written:
    /// quantity at most [`MAX_QUANTITY`], price in 0..=[`MAX_PRICE_MINOR`], timestamp range.
    pub fn validate(&self) -> Result<()> {
        if self.quantity.get() > MAX_QUANTITY {
            return Err(Error::invalid(
                "quantity",
                format!(
                    "{} is above the largest accepted quantity, {MAX_QUANTITY}",
                    self.quantity
                ),
            ));
        }
        validate_price("unit_price_minor", self.unit_price_minor)?;
        validate_time("purchased_at", self.purchased_at)
    }

    /// [`Purchase::validate`] plus the rule of new rows: dated at most one day after `now`,
    /// the time of ingestion.
    pub fn validate_at(&self, now: DateTime<Utc>) -> Result<()> {
        self.validate()?;
        validate_not_future("purchased_at", self.purchased_at, now)
    }

    /// Copy with the timestamp truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut p = self.clone();
        p.purchased_at = normalize_time(p.purchased_at);
        p
    }
}

/// Per-row result of an idempotent insert (purchases, offer events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "snake_case")]
pub enum WriteOutcome {
    /// The row was new and is now stored.
    Inserted,
    /// An identical row was already stored (a retry or duplicate); nothing changed.
    Duplicate,
    /// A different row with the same identity is stored; it was not overwritten.
    Conflict,
    /// The row broke a rule; it was not written.
    Invalid(String),
}

/// Per-row result of an upsert (catalog items, offers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "snake_case")]
pub enum UpsertOutcome {
    /// The row is stored (created or replaced).
    Written,
    /// The row broke a rule; it was not written.
    Invalid(String),
}

/// Counts of a batch of per-row results, for reports and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteSummary {
    /// Rows newly stored.
    pub inserted: u64,
    /// Rows already present, identical.
    pub duplicates: u64,
    /// Rows refused because a different row holds the identity.
    pub conflicts: u64,
    /// Rows refused by validation.
    pub invalid: u64,
}

impl WriteSummary {
    /// Tallies a slice of outcomes.
    pub fn of(outcomes: &[WriteOutcome]) -> Self {
        let mut s = Self::default();
        for o in outcomes {
            match o {
                WriteOutcome::Inserted => s.inserted += 1,
                WriteOutcome::Duplicate => s.duplicates += 1,
                WriteOutcome::Conflict => s.conflicts += 1,
                WriteOutcome::Invalid(_) => s.invalid += 1,
            }
        }
        s
    }
}

/// What a training scan saw: lets an artifact record the data it was built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Number of purchases scanned.
    pub count: u64,
    /// Latest purchase time seen (None for an empty tenant).
    pub max_purchased_at: Option<DateTime<Utc>>,
}

impl Watermark {
    /// Folds one purchase into the watermark.
    pub fn observe(&mut self, p: &Purchase) {
        self.count += 1;
        if self.max_purchased_at.is_none_or(|m| p.purchased_at > m) {
            self.max_purchased_at = Some(p.purchased_at);
        }
    }
}

/// All purchases of a tenant plus the watermark, as returned by a training scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurchaseScan {
    /// Every purchase of the tenant, in no particular order.
    pub purchases: Vec<Purchase>,
    /// Count and max timestamp of `purchases`.
    pub watermark: Watermark,
}

/// One purchase as the streaming training scan hands it over: borrowed ids and nothing
/// allocated per row, because a large shop's history does not fit in memory as `Purchase`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseRow<'a> {
    /// Who bought.
    pub customer_id: &'a str,
    /// What was bought.
    pub item_id: &'a str,
    /// Units (at least one).
    pub quantity: u32,
    /// When, in Unix milliseconds.
    pub purchased_at_ms: i64,
    /// Price of one unit in minor currency units (spend and customer value need it).
    pub unit_price_minor: i64,
}

impl<'a> PurchaseRow<'a> {
    /// The streamed view of a stored purchase.
    pub fn of(p: &'a Purchase) -> Self {
        Self {
            customer_id: p.customer_id.as_str(),
            item_id: p.item_id.as_str(),
            quantity: p.quantity.get(),
            purchased_at_ms: to_millis(p.purchased_at),
            unit_price_minor: p.unit_price_minor,
        }
    }
}

/// Receives the streaming scan's rows, on whichever thread the backend reads them.
pub type PurchaseSink = Box<dyn FnMut(PurchaseRow<'_>) + Send>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::tests::purchase;

    #[test]
    fn purchase_validation() {
        assert!(purchase().validate().is_ok());
        let mut p = purchase();
        p.unit_price_minor = -1;
        assert!(p.validate().is_err());
        let mut p = purchase();
        p.purchased_at = Utc.with_ymd_and_hms(1969, 12, 31, 0, 0, 0).unwrap();
        assert!(p.validate().is_err());
    }

    #[test]
    fn purchase_quantity_and_price_are_bounded() {
        let mut p = purchase();
        p.quantity = NonZeroU32::new(MAX_QUANTITY).unwrap();
        p.unit_price_minor = MAX_PRICE_MINOR;
        assert!(p.validate().is_ok());
        // The bounds keep a line total inside i64.
        assert!(
            i64::from(MAX_QUANTITY)
                .checked_mul(MAX_PRICE_MINOR)
                .is_some()
        );
        let mut q = p.clone();
        q.quantity = NonZeroU32::new(MAX_QUANTITY + 1).unwrap();
        let err = q.validate().unwrap_err().to_string();
        assert!(err.contains("quantity"), "{err}");
        let mut q = p;
        q.unit_price_minor = MAX_PRICE_MINOR + 1;
        let err = q.validate().unwrap_err().to_string();
        assert!(err.contains("unit_price_minor"), "{err}");
    }

    #[test]
    fn summary_counts_each_outcome() {
        let s = WriteSummary::of(&[
            WriteOutcome::Inserted,
            WriteOutcome::Inserted,
            WriteOutcome::Duplicate,
            WriteOutcome::Conflict,
            WriteOutcome::Invalid("x".into()),
        ]);
        assert_eq!(
            (s.inserted, s.duplicates, s.conflicts, s.invalid),
            (2, 1, 1, 1)
        );
    }
}
