//! The offer document a CRM team writes: its kinds, money, eligibility bounds and caps,
//! parsed from JSON and validated field by field (each refusal names its field's path).

use super::*;

pub(crate) const DAY: i64 = 86_400;

pub(crate) const MAX_NAME: usize = 128;

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidOffer {
        field: field.into(),
        reason: reason.into(),
    }
}

// ------------------------------------------------------------------ the document

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOffer {
    kind: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    items: Vec<String>,
    #[serde(default)]
    categories: Vec<String>,
    value: f64,
    #[serde(default)]
    cost: f64,
    #[serde(default)]
    eligibility: RawEligibility,
    #[serde(default)]
    caps: RawCaps,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRange<T> {
    #[serde(default)]
    min: Option<T>,
    #[serde(default)]
    max: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRfm {
    #[serde(default)]
    recency: RawRange<u8>,
    #[serde(default)]
    frequency: RawRange<u8>,
    #[serde(default)]
    monetary: RawRange<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEligibility {
    #[serde(default)]
    tiers: Option<Vec<String>>,
    #[serde(default)]
    rfm: RawRfm,
    #[serde(default)]
    churn_risk: RawRange<f64>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCaps {
    #[serde(default)]
    max_per_customer: Option<u32>,
    #[serde(default)]
    cooldown_days: Option<f64>,
    #[serde(default)]
    budget: Option<f64>,
}

// ------------------------------------------------------------------ checked types

/// What an offer is; decides how it is scored and which extra rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferKind {
    /// Money off promoted items or categories.
    Discount,
    /// Items sold together (at least two).
    Bundle,
    /// Extra loyalty points.
    PointsMultiplier,
    /// New items; customers who bought one already are not offered it.
    NewArrival,
    /// Win-back offer; its value includes the churn risk x CLV-if-retained it may keep.
    Retention,
    /// "Time to buy again": only for customers due to repurchase a promoted item/category.
    Replenishment,
}

impl OfferKind {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "discount" => Self::Discount,
            "bundle" => Self::Bundle,
            "points_multiplier" => Self::PointsMultiplier,
            "new_arrival" => Self::NewArrival,
            "retention" => Self::Retention,
            "replenishment" => Self::Replenishment,
            other => {
                return Err(invalid(
                    "kind",
                    format!(
                        "{other:?} is not one of discount, bundle, points_multiplier, \
                         new_arrival, retention, replenishment"
                    ),
                ));
            }
        })
    }
}

/// A non-negative, finite amount of money.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
pub struct Money(f64);

impl Money {
    fn parse(field: &str, v: f64) -> Result<Self> {
        if v.is_finite() && v >= 0.0 {
            Ok(Self(v))
        } else {
            Err(invalid(field, format!("{v} must be a finite number >= 0")))
        }
    }

    /// The amount.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// An inclusive range; a missing end is open.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds<T> {
    /// Lowest allowed value.
    pub min: T,
    /// Highest allowed value.
    pub max: T,
}

impl<T: PartialOrd + Copy> Bounds<T> {
    /// Whether `v` is inside.
    pub fn contains(&self, v: T) -> bool {
        self.min <= v && v <= self.max
    }
}

pub(crate) fn bounds<T: PartialOrd + Copy + std::fmt::Display>(
    field: &str,
    raw: &RawRange<T>,
    lo: T,
    hi: T,
    ok: impl Fn(T) -> bool,
) -> Result<Bounds<T>> {
    let check = |name: &str, v: Option<T>, default: T| -> Result<T> {
        match v {
            Some(v) if !(ok(v) && lo <= v && v <= hi) => Err(invalid(
                format!("{field}.{name}"),
                format!("{v} must be within {lo}..={hi}"),
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    };
    let b = Bounds {
        min: check("min", raw.min, lo)?,
        max: check("max", raw.max, hi)?,
    };
    if b.min > b.max {
        return Err(invalid(
            format!("{field}.min"),
            format!("{} is above max {}", b.min, b.max),
        ));
    }
    Ok(b)
}

/// RFM score bounds, each within 1..=5.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RfmBounds {
    /// Recency score bounds.
    pub recency: Bounds<u8>,
    /// Frequency score bounds.
    pub frequency: Bounds<u8>,
    /// Monetary score bounds.
    pub monetary: Bounds<u8>,
}

/// Who may receive an offer, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eligibility {
    /// Allowed tiers (None: all).
    pub tiers: Option<BTreeSet<String>>,
    /// RFM score bounds.
    pub rfm: RfmBounds,
    /// Churn-risk bounds (0..=1); customers without a churn estimate pass only the full range.
    pub churn_risk: Bounds<f64>,
    /// Allowed channels (None: all).
    pub channels: Option<BTreeSet<String>>,
    /// First instant (unix seconds) the offer may be shown.
    pub start: Option<i64>,
    /// Instant (unix seconds) from which it may no longer be shown.
    pub end: Option<i64>,
}

/// Contact limits of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Caps {
    /// Most contacts per customer over all channels (None: unlimited).
    pub max_per_customer: Option<NonZeroU32>,
    /// Seconds after a contact before the same customer may get the offer again.
    pub cooldown_secs: i64,
    /// Most total contact cost (`cost x contacts`) over all customers (None: unlimited).
    pub budget: Option<Money>,
}

/// A checked offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// Offer id (the store's).
    pub id: String,
    /// Kind.
    pub kind: OfferKind,
    /// Display title.
    pub title: Option<String>,
    /// Promoted item ids.
    pub items: Vec<String>,
    /// Promoted category names.
    pub categories: Vec<String>,
    /// Net value to the shop of one acceptance.
    pub value: Money,
    /// Cost of one contact.
    pub cost: Money,
    /// Eligibility rules.
    pub eligibility: Eligibility,
    /// Contact caps.
    pub caps: Caps,
}

pub(crate) fn names(field: &str, v: Vec<String>) -> Result<Vec<String>> {
    let mut seen = BTreeSet::new();
    for (i, s) in v.iter().enumerate() {
        if s.trim().is_empty() || s.trim() != s || s.chars().count() > MAX_NAME {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!("{s:?} must be 1..={MAX_NAME} characters without surrounding spaces"),
            ));
        }
        if !seen.insert(s.as_str()) {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!("{s:?} is repeated"),
            ));
        }
    }
    Ok(v)
}

pub(crate) fn name_set(field: &str, v: Option<Vec<String>>) -> Result<Option<BTreeSet<String>>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_empty() => Err(invalid(
            field,
            "must list at least one value (leave it out to allow all)",
        )),
        Some(v) => Ok(Some(names(field, v)?.into_iter().collect())),
    }
}

pub(crate) fn time(field: &str, v: Option<String>) -> Result<Option<i64>> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp())
            .map_err(|e| invalid(field, format!("{s:?} is not an RFC 3339 timestamp: {e}")))
    })
    .transpose()
}

impl Offer {
    /// Parses and checks an offer document; errors name the offending field.
    pub fn parse(id: &str, document: &serde_json::Value) -> Result<Self> {
        let raw: RawOffer = serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "document".to_owned()
            } else {
                path
            };
            invalid(field, e.inner().to_string())
        })?;
        Self::from_raw(id, raw)
    }

    fn from_raw(id: &str, raw: RawOffer) -> Result<Self> {
        if id.trim().is_empty() || id.chars().count() > MAX_NAME {
            return Err(invalid(
                "offer_id",
                format!("{id:?} must be 1..={MAX_NAME} characters"),
            ));
        }
        let kind = OfferKind::parse(&raw.kind)?;
        if let Some(t) = &raw.title
            && t.chars().count() > 2048
        {
            return Err(invalid("title", "must be at most 2048 characters"));
        }
        let items = names("items", raw.items)?;
        let categories = names("categories", raw.categories)?;
        match kind {
            OfferKind::Bundle if items.len() < 2 => {
                return Err(invalid("items", "a bundle needs at least 2 items"));
            }
            OfferKind::NewArrival | OfferKind::Replenishment
                if items.is_empty() && categories.is_empty() =>
            {
                return Err(invalid(
                    "items",
                    "this kind needs at least one item or category",
                ));
            }
            _ => {}
        }
        let value = Money::parse("value", raw.value)?;
        let cost = Money::parse("cost", raw.cost)?;
        let e = raw.eligibility;
        let any = |_: u8| true;
        let rfm = RfmBounds {
            recency: bounds("eligibility.rfm.recency", &e.rfm.recency, 1, 5, any)?,
            frequency: bounds("eligibility.rfm.frequency", &e.rfm.frequency, 1, 5, any)?,
            monetary: bounds("eligibility.rfm.monetary", &e.rfm.monetary, 1, 5, any)?,
        };
        let churn_risk = bounds(
            "eligibility.churn_risk",
            &e.churn_risk,
            0.0,
            1.0,
            f64::is_finite,
        )?;
        let start = time("eligibility.start", e.start)?;
        let end = time("eligibility.end", e.end)?;
        if let (Some(s), Some(t)) = (start, end)
            && s >= t
        {
            return Err(invalid(
                "eligibility.end",
                "must be after eligibility.start",
            ));
        }
        let eligibility = Eligibility {
            tiers: name_set("eligibility.tiers", e.tiers)?,
            rfm,
            churn_risk,
            channels: name_set("eligibility.channels", e.channels)?,
            start,
            end,
        };
        let c = raw.caps;
        let max_per_customer = match c.max_per_customer {
            None => None,
            Some(n) => Some(
                NonZeroU32::new(n)
                    .ok_or_else(|| invalid("caps.max_per_customer", "must be at least 1"))?,
            ),
        };
        let cooldown_secs = match c.cooldown_days {
            None => 0,
            Some(d) if d.is_finite() && (0.0..=3650.0).contains(&d) => (d * DAY as f64) as i64,
            Some(d) => {
                return Err(invalid(
                    "caps.cooldown_days",
                    format!("{d} must be within 0..=3650"),
                ));
            }
        };
        let budget = c
            .budget
            .map(|b| Money::parse("caps.budget", b))
            .transpose()?;
        if budget.is_some() && cost.get() == 0.0 {
            return Err(invalid(
                "caps.budget",
                "a budget is spent by the contact cost, so `cost` must be above 0",
            ));
        }
        Ok(Self {
            id: id.to_owned(),
            kind,
            title: raw.title,
            items,
            categories,
            value,
            cost,
            eligibility,
            caps: Caps {
                max_per_customer,
                cooldown_secs,
                budget,
            },
        })
    }
}

// ------------------------------------------------------------------ engine inputs
