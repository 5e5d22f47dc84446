//! What the engine is asked and what it answers: the request, the customer's view, past
//! contacts and statistics, scored offers with their reasons, refusals and dry runs.

use super::*;

/// What happened to an offer, as the engine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Shown or sent.
    Shown,
    /// Taken.
    Accepted,
    /// Turned down.
    Declined,
}

/// One past offer event of a customer, on any channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastEvent {
    /// Offer id.
    pub offer: String,
    /// What happened.
    pub kind: EventKind,
    /// Unix seconds.
    pub at: i64,
}

/// An offer's response so far, over all customers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct OfferStats {
    /// Contacts so far (spend the budget).
    pub shown: u64,
    /// Acceptances among them.
    pub accepted: u64,
    /// The engine's mean uncalibrated propensity for the customers shown it, if computed.
    pub mean_predicted: Option<f64>,
}

/// Tunables of the engine (defaults documented on each field).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Logit of the propensity at affinity 0 (default `logit(0.03)`).
    pub intercept: f64,
    /// Logit change per unit of cosine affinity (default 4).
    pub slope: f64,
    /// Logit boost when the customer is due to repurchase a promoted item (default 1).
    pub due_boost: f64,
    /// Contacts before an offer's response calibrates it (default 30).
    pub min_shown: u64,
    /// Strength of the Beta prior, in pseudo-contacts (default 50).
    pub prior_strength: f64,
    /// Offers need an ENV above this to be returned (default 0).
    pub min_net_value: f64,
    /// Repurchase interval thresholds.
    pub repurchase: RepurchaseConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            intercept: (0.03_f64 / 0.97).ln(),
            slope: 4.0,
            due_boost: 1.0,
            min_shown: 30,
            prior_strength: 50.0,
            min_net_value: 0.0,
            repurchase: RepurchaseConfig::default(),
        }
    }
}

/// One request: where, when, how many, and whether two offers may share a category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferRequest {
    /// Channel asking (email, web, app, ...).
    pub channel: String,
    /// Unix seconds.
    pub now: i64,
    /// Most offers to return.
    pub k: usize,
    /// Allow several offers of the same category.
    pub allow_same_category: bool,
}

/// A customer as the engine sees them.
#[derive(Debug, Clone, Copy)]
pub struct CustomerView<'a> {
    /// Profile (tier, RFM, churn risk, CLV).
    pub profile: &'a CustomerProfile,
    /// Purchases with model item indices (unknown items already dropped).
    pub purchases: &'a [Purchase],
    /// Offer events over all channels.
    pub events: &'a [PastEvent],
}

// ------------------------------------------------------------------ engine outputs

/// A past purchase that made an offer relevant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MatchedPurchase {
    /// Model item index of the purchase.
    pub item: u32,
    /// Cosine between the purchase and the offer vector.
    pub similarity: f32,
    /// The item is itself promoted or in a promoted category.
    pub direct: bool,
}

/// A promoted item or category the customer is due to buy again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DueMatch {
    /// Model item index, when due for an item.
    pub item: Option<u32>,
    /// Model category index, when due for a category.
    pub category: Option<u32>,
    /// Days since the last purchase of it.
    pub days_since: f64,
    /// Its typical repurchase interval in days.
    pub typical_days: f64,
}

/// Why an offer was chosen, in terms the shop can check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferReasons {
    /// Kind of the offer.
    pub kind: OfferKind,
    /// Customer's tier.
    pub tier: String,
    /// Cosine affinity between the customer and the offer.
    pub affinity: f32,
    /// Contacts whose response calibrated the propensity (0: not calibrated yet).
    pub calibrated_on: u64,
    /// Customer's churn risk.
    pub churn_risk: Option<f64>,
    /// Customer's CLV.
    pub clv: Option<f64>,
    /// Retention offers: churn risk x CLV if retained (`CLV / P(alive)`) counted in the value.
    pub retained_value: Option<f64>,
    /// Past purchases closest to the offer (at most 3).
    pub matched_purchases: Vec<MatchedPurchase>,
    /// Promoted items or categories the customer is due to buy again.
    pub due: Vec<DueMatch>,
    /// Promoted items dropped because the customer already owns them.
    pub excluded_items: Vec<u32>,
}

/// One ranked offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredOffer {
    /// Offer id.
    pub offer_id: String,
    /// `propensity x value - cost` (plus retained value for retention).
    pub expected_net_value: f64,
    /// Acceptance probability.
    pub propensity: f64,
    /// Why.
    pub reasons: OfferReasons,
}

/// Why an offer is not eligible (first failing rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ineligible {
    /// Before start or at/after end.
    OutsideWindow,
    /// Channel not allowed.
    Channel,
    /// Tier not allowed.
    Tier,
    /// RFM scores out of bounds.
    Rfm,
    /// Churn risk out of bounds or unknown.
    ChurnRisk,
    /// Budget spent.
    Budget,
    /// Max contacts per customer reached.
    MaxPerCustomer,
    /// Within the cooldown after a contact.
    Cooldown,
    /// Nothing left to promote (all owned).
    AlreadyOwned,
    /// Replenishment without anything due.
    NotDue,
}

/// Dry-run counts for one offer, overall and by tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    /// Customers examined.
    pub customers: u64,
    /// Customers eligible.
    pub eligible: u64,
    /// Customers whose best offer it would be.
    pub first: u64,
    /// Eligible customers per tier.
    pub eligible_by_tier: BTreeMap<String, u64>,
    /// First-offer customers per tier.
    pub first_by_tier: BTreeMap<String, u64>,
}

// ------------------------------------------------------------------ the engine
