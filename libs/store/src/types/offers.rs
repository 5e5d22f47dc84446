//! Offers and what happened to them: the stored offer, its status and its events.

use super::*;

/// Lifecycle status of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferStatus {
    /// Can be shown.
    Active,
    /// Temporarily not shown.
    Paused,
    /// Retired for good; kept for reports.
    Archived,
}

impl OfferStatus {
    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            OfferStatus::Active => "active",
            OfferStatus::Paused => "paused",
            OfferStatus::Archived => "archived",
        }
    }
}

impl FromStr for OfferStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(Self::Active),
            "paused" => Ok(Self::Paused),
            "archived" => Ok(Self::Archived),
            other => Err(Error::invalid(
                "status",
                format!("{:?} is not one of active|paused|archived", truncate(other)),
            )),
        }
    }
}

/// An offer: the rules document is validated by the offer engine, stored here as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferRecord {
    /// Offer id.
    pub offer_id: OfferId,
    /// Status.
    pub status: OfferStatus,
    /// The offer definition (JSON).
    pub document: serde_json::Value,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl OfferRecord {
    /// Checks document size and timestamp range.
    pub fn validate(&self) -> Result<()> {
        validate_json("document", &self.document)?;
        validate_time("updated_at", self.updated_at)
    }

    /// Copy with timestamps truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut o = self.clone();
        o.updated_at = normalize_time(o.updated_at);
        o
    }
}

/// What happened to an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferEventKind {
    /// The offer was shown / sent.
    Shown,
    /// The customer took it.
    Accepted,
    /// The customer declined it.
    Declined,
}

impl OfferEventKind {
    /// Stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            OfferEventKind::Shown => "shown",
            OfferEventKind::Accepted => "accepted",
            OfferEventKind::Declined => "declined",
        }
    }
}

impl FromStr for OfferEventKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "shown" => Ok(Self::Shown),
            "accepted" => Ok(Self::Accepted),
            "declined" => Ok(Self::Declined),
            other => Err(Error::invalid(
                "kind",
                format!(
                    "{:?} is not one of shown|accepted|declined",
                    truncate(other)
                ),
            )),
        }
    }
}

/// One offer event; `event_id` is the sender's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferEvent {
    /// Idempotency key.
    pub event_id: EventId,
    /// Customer concerned.
    pub customer_id: CustomerId,
    /// Offer concerned.
    pub offer_id: OfferId,
    /// What happened.
    pub kind: OfferEventKind,
    /// Where it happened.
    pub channel: Channel,
    /// Recommendation response this came from, if any.
    pub recommendation_id: Option<RecommendationId>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl OfferEvent {
    /// Checks the timestamp range.
    pub fn validate(&self) -> Result<()> {
        validate_time("at", self.at)
    }

    /// [`OfferEvent::validate`] plus the rule of new events: dated at most one day after
    /// `now`, the time of ingestion.
    pub fn validate_at(&self, now: DateTime<Utc>) -> Result<()> {
        self.validate()?;
        validate_not_future("at", self.at, now)
    }

    /// Copy with timestamps truncated to stored precision.
    pub fn normalized(&self) -> Self {
        let mut e = self.clone();
        e.at = normalize_time(e.at);
        e
    }
}
