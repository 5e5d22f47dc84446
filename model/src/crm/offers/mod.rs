//! The offer policy engine: offer documents parsed into checked types, eligibility, caps
//! and cooldowns, expected-net-value scoring with reasons, batch scoring and dry runs.
//!
//! # Offer document (JSON, stored as the offer record's `document`)
//!
//! ```json
//! {
//!   "kind": "discount",                 // discount | bundle | points_multiplier |
//!                                       // new_arrival | retention | replenishment
//!   "title": "10% off coffee",
//!   "items": ["sku-1", "sku-2"],        // promoted items (bundle: at least 2)
//!   "categories": ["coffee"],           // promoted categories
//!   "value": 6.0,                       // net value to the shop of one acceptance
//!   "cost": 0.05,                       // cost of one contact (sending / showing it)
//!   "eligibility": {
//!     "tiers": ["gold", "silver"],
//!     "rfm": {"recency": {"min": 1, "max": 2}, "frequency": {"min": 3}},
//!     "churn_risk": {"min": 0.5},
//!     "channels": ["email", "web"],
//!     "start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z"
//!   },
//!   "caps": {"max_per_customer": 3, "cooldown_days": 14, "budget": 500.0}
//! }
//! ```
//!
//! Every field but `kind` and `value` is optional; unknown fields are refused, and every
//! error names the field by its path (`eligibility.churn_risk.min`).
//!
//! # Scoring
//!
//! Expected net value (ENV) = `propensity x value - cost`; for retention offers the value
//! of an acceptance also includes the customer value it keeps, `churn risk x CLV if
//! retained` (`CLV / P(alive)`: the CLV already discounts a churned customer to ~0).
//!
//! Propensity = `sigmoid(intercept + slope x affinity + due_boost [due] + shift_offer)`,
//! where affinity is the cosine between the customer's folded-in vector and the offer's
//! vector (the normalised sum of its items' unit vectors and its categories' unit
//! centroids; 0 for store-wide offers). `shift_offer` calibrates each offer on its observed
//! response once it has been shown `min_shown` times: the acceptance rate is shrunk towards
//! the model's own mean prediction for the shown customers with a Beta prior of strength
//! `prior_strength` (empirical-Bayes Beta-binomial), and the logit of the shrunk rate
//! minus the logit of the mean prediction shifts every prediction of that offer. With few
//! events the shift is close to 0, so a lucky first acceptance does not swing the ranking.
//!
//! # Policy
//!
//! An offer is eligible when the request time is in `[start, end)`, the channel, tier, RFM
//! scores and churn risk are within bounds, its budget (`cost x contacts so far`) is not
//! spent, the customer's contacts with it (over all channels: `max(shown, accepted +
//! declined)`) are below `max_per_customer`, the last one is older than the cooldown, it
//! still promotes something the customer may buy (items already bought that are not
//! repurchasable are dropped; new arrivals drop every bought item), and, for
//! replenishment offers, the customer is due to buy one of its items or categories again.
//! The answer holds the eligible offers with a positive ENV, best first, at most one per
//! category unless the request allows more.

mod answers;
mod document;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::profile::CustomerProfile;
use super::repurchase::{self, Interval, RepurchaseConfig};
use crate::error::{Error, Result};
use crate::linalg::{dot, norm};
use crate::model::{Model, Purchase};

pub use answers::*;
pub use document::*;

/// Typical repurchase intervals per model item and category index: computed once per
/// model version (at retrain) from all purchases, then shared by every request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Intervals {
    /// By model item index.
    pub by_item: HashMap<u32, Interval>,
    /// By model category index.
    pub by_category: HashMap<u32, Interval>,
}

impl Intervals {
    /// Intervals from `(customer, item index, unix seconds)` of all customers.
    pub fn compute(
        model: &Model,
        purchases: &[(u32, u32, i64)],
        config: &RepurchaseConfig,
    ) -> Self {
        let by_item = repurchase::intervals(purchases.iter().copied(), config);
        let by_category = repurchase::intervals(
            purchases.iter().filter_map(|&(c, i, at)| {
                model
                    .item_category
                    .get(i as usize)
                    .copied()
                    .flatten()
                    .map(|cat| (c, cat, at))
            }),
            config,
        );
        Self {
            by_item,
            by_category,
        }
    }
}

struct Prepared {
    offer: Offer,
    /// Promoted items the model knows.
    items: Vec<u32>,
    /// Explicit categories the model knows.
    categories: Vec<u32>,
    /// Explicit categories plus those of the items: what "one offer per category" sees.
    conflict_categories: Vec<u32>,
    /// Unit offer vector (empty for store-wide offers).
    vector: Vec<f32>,
    /// Logit shift from calibration, and the contacts it rests on.
    shift: f64,
    calibrated_on: u64,
    budget_spent: bool,
}

/// Offers prepared against one model: vectors, categories, calibration and intervals.
pub struct OfferEngine<'m> {
    model: &'m Model,
    offers: Vec<Prepared>,
    by_id: HashMap<String, usize>,
    repurchasable: Vec<bool>,
    by_item: HashMap<u32, Interval>,
    by_category: HashMap<u32, Interval>,
    category_centroid: Vec<Vec<f32>>,
    config: EngineConfig,
}

/// What a retention offer may keep: churn risk x the customer's CLV if they stay.
///
/// The profile's CLV is an expectation over "still alive or not": under the BG/NBD the
/// expected purchases factor as `P(alive) x E[purchases | alive]`, so `CLV / P(alive)` is
/// the value of the customer if retained. Weighing the plain CLV instead would make a
/// churned customer worth ~0 (their CLV already counts them as gone) and retention offers
/// would never win where they matter most.
fn retained_value(prof: &CustomerProfile) -> f64 {
    let churn = prof.churn_risk.unwrap_or(0.0);
    let clv = prof.clv.unwrap_or(0.0).max(0.0);
    match prof.p_alive {
        Some(p) if p > 0.0 && clv > 0.0 => churn * clv / p,
        _ => churn * clv,
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    (p / (1.0 - p)).ln()
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = norm(&v);
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
        v
    } else {
        Vec::new()
    }
}

/// Per-customer view of the events: contacts and last contact per offer index.
fn contacts(engine: &OfferEngine<'_>, events: &[PastEvent]) -> HashMap<usize, (u64, u64, i64)> {
    // (shown, accepted + declined, last at)
    let mut m: HashMap<usize, (u64, u64, i64)> = HashMap::new();
    for e in events {
        if let Some(&i) = engine.by_id.get(&e.offer) {
            let c = m.entry(i).or_insert((0, 0, i64::MIN));
            match e.kind {
                EventKind::Shown => c.0 += 1,
                EventKind::Accepted | EventKind::Declined => c.1 += 1,
            }
            c.2 = c.2.max(e.at);
        }
    }
    m
}

struct Scratch {
    vector: Option<Vec<f32>>,
    /// Last purchase time per bought item.
    bought: HashMap<u32, i64>,
    /// Last purchase time per bought category.
    category_last: HashMap<u32, i64>,
    contacts: HashMap<usize, (u64, u64, i64)>,
}

/// An eligible offer scored, before its reasons are spelled out (only the chosen ones are).
struct Candidate {
    idx: usize,
    env: f64,
    propensity: f64,
    affinity: f32,
    retained: Option<f64>,
    excluded: Vec<u32>,
    due: Vec<DueMatch>,
}

impl<'m> OfferEngine<'m> {
    /// Prepares `offers` (with their response so far) against `model`. `repurchasable`
    /// says per model item index whether buying it again makes sense; `intervals` are the
    /// typical repurchase intervals (see [`Intervals::compute`]).
    pub fn new(
        model: &'m Model,
        offers: Vec<(Offer, OfferStats)>,
        repurchasable: Vec<bool>,
        intervals: Intervals,
        config: EngineConfig,
    ) -> Result<Self> {
        let n = model.items.len();
        if repurchasable.len() != n {
            return Err(Error::InvalidParameter {
                name: "repurchasable",
                reason: format!("has {} flags for {n} items", repurchasable.len()),
            });
        }
        let d = model.factors();
        let vectors = model.vectors.as_slice();
        let unit_row = |i: u32| -> Vec<f32> {
            normalized(vectors[i as usize * d..(i as usize + 1) * d].to_vec())
        };
        let mut centroid_sum = vec![vec![0.0f32; d]; model.categories.len()];
        for (i, c) in model.item_category.iter().enumerate() {
            if let Some(c) = c {
                let u = unit_row(i as u32);
                if !u.is_empty() {
                    crate::linalg::axpy(1.0, &u, &mut centroid_sum[*c as usize]);
                }
            }
        }
        let category_centroid: Vec<Vec<f32>> = centroid_sum.into_iter().map(normalized).collect();
        let mut by_id = HashMap::with_capacity(offers.len());
        let mut prepared = Vec::with_capacity(offers.len());
        for (offer, stats) in offers {
            if by_id.insert(offer.id.clone(), prepared.len()).is_some() {
                return Err(invalid(
                    "offer_id",
                    format!("{:?} is given twice", offer.id),
                ));
            }
            let items: Vec<u32> = offer
                .items
                .iter()
                .filter_map(|i| model.item_index(i))
                .collect();
            let categories: Vec<u32> = offer
                .categories
                .iter()
                .filter_map(|c| model.category_index(c))
                .collect();
            let mut conflict: BTreeSet<u32> = categories.iter().copied().collect();
            conflict.extend(
                items
                    .iter()
                    .filter_map(|&i| model.item_category[i as usize]),
            );
            let mut sum = vec![0.0f32; d];
            for &i in &items {
                let u = unit_row(i);
                if !u.is_empty() {
                    crate::linalg::axpy(1.0, &u, &mut sum);
                }
            }
            for &c in &categories {
                let u = &category_centroid[c as usize];
                if !u.is_empty() {
                    crate::linalg::axpy(1.0, u, &mut sum);
                }
            }
            let budget_spent = offer
                .caps
                .budget
                .is_some_and(|b| offer.cost.get() * stats.shown as f64 >= b.get());
            let (shift, calibrated_on) = match stats.mean_predicted {
                Some(mean) if stats.shown >= config.min_shown && mean > 0.0 && mean < 1.0 => {
                    let m = config.prior_strength;
                    let rate = (stats.accepted.min(stats.shown) as f64 + m * mean)
                        / (stats.shown as f64 + m);
                    (logit(rate) - logit(mean), stats.shown)
                }
                _ => (0.0, 0),
            };
            prepared.push(Prepared {
                offer,
                items,
                categories,
                conflict_categories: conflict.into_iter().collect(),
                vector: normalized(sum),
                shift,
                calibrated_on,
                budget_spent,
            });
        }
        let Intervals {
            by_item,
            by_category,
        } = intervals;
        Ok(Self {
            model,
            offers: prepared,
            by_id,
            repurchasable,
            by_item,
            by_category,
            category_centroid,
            config,
        })
    }

    /// The offers, in engine order.
    pub fn offers(&self) -> impl Iterator<Item = &Offer> {
        self.offers.iter().map(|p| &p.offer)
    }

    /// Engine index of an offer id.
    pub fn offer_index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Typical repurchase interval of an item (model index), if it has one.
    pub fn item_interval(&self, item: u32) -> Option<&Interval> {
        self.by_item.get(&item)
    }

    /// Typical repurchase interval of a category (model index), if it has one.
    pub fn category_interval(&self, category: u32) -> Option<&Interval> {
        self.by_category.get(&category)
    }

    fn scratch(&self, c: &CustomerView<'_>) -> Scratch {
        let weights = self.model.weigh(c.purchases);
        let vector = (!weights.is_empty()).then(|| normalized(self.model.fold_in(&weights)));
        let mut bought: HashMap<u32, i64> = HashMap::new();
        let mut category_last: HashMap<u32, i64> = HashMap::new();
        for p in c.purchases {
            if (p.item as usize) < self.repurchasable.len() {
                let e = bought.entry(p.item).or_insert(i64::MIN);
                *e = (*e).max(p.at);
                if let Some(cat) = self.model.item_category[p.item as usize] {
                    let e = category_last.entry(cat).or_insert(i64::MIN);
                    *e = (*e).max(p.at);
                }
            }
        }
        Scratch {
            vector: vector.filter(|v| !v.is_empty()),
            bought,
            category_last,
            contacts: contacts(self, c.events),
        }
    }

    fn row(&self, i: u32) -> &[f32] {
        let d = self.model.factors();
        &self.model.vectors.as_slice()[i as usize * d..(i as usize + 1) * d]
    }

    /// Due items/categories among an offer's promotions.
    fn due(&self, p: &Prepared, s: &Scratch, now: i64) -> Vec<DueMatch> {
        let cfg = &self.config.repurchase;
        let mut out = Vec::new();
        for &i in &p.items {
            if let (Some(&last), Some(iv)) = (s.bought.get(&i), self.by_item.get(&i))
                && let Some(d) = repurchase::due(last, now, iv, cfg)
            {
                out.push(DueMatch {
                    item: Some(i),
                    category: None,
                    days_since: d.days_since,
                    typical_days: d.typical_days,
                });
            }
        }
        for &c in &p.categories {
            let last = s.category_last.get(&c).copied();
            if let (Some(last), Some(iv)) = (last, self.by_category.get(&c))
                && let Some(d) = repurchase::due(last, now, iv, cfg)
            {
                out.push(DueMatch {
                    item: None,
                    category: Some(c),
                    days_since: d.days_since,
                    typical_days: d.typical_days,
                });
            }
        }
        out
    }

    /// Rule checks in order; on success the excluded items and due matches.
    fn check(
        &self,
        idx: usize,
        c: &CustomerView<'_>,
        s: &Scratch,
        req: &OfferRequest,
    ) -> std::result::Result<(Vec<u32>, Vec<DueMatch>), Ineligible> {
        let p = &self.offers[idx];
        let o = &p.offer;
        let e = &o.eligibility;
        if e.start.is_some_and(|t| req.now < t) || e.end.is_some_and(|t| req.now >= t) {
            return Err(Ineligible::OutsideWindow);
        }
        if e.channels
            .as_ref()
            .is_some_and(|ch| !ch.contains(&req.channel))
        {
            return Err(Ineligible::Channel);
        }
        if e.tiers
            .as_ref()
            .is_some_and(|t| !t.contains(&c.profile.tier))
        {
            return Err(Ineligible::Tier);
        }
        let rfm = c.profile.rfm;
        if !(e.rfm.recency.contains(rfm.r)
            && e.rfm.frequency.contains(rfm.f)
            && e.rfm.monetary.contains(rfm.m))
        {
            return Err(Ineligible::Rfm);
        }
        let full = e.churn_risk.min <= 0.0 && e.churn_risk.max >= 1.0;
        match c.profile.churn_risk {
            Some(r) if !e.churn_risk.contains(r) => return Err(Ineligible::ChurnRisk),
            None if !full => return Err(Ineligible::ChurnRisk),
            _ => {}
        }
        if p.budget_spent {
            return Err(Ineligible::Budget);
        }
        if let Some(&(shown, answered, last)) = s.contacts.get(&idx) {
            if o.caps
                .max_per_customer
                .is_some_and(|m| shown.max(answered) >= u64::from(m.get()))
            {
                return Err(Ineligible::MaxPerCustomer);
            }
            if o.caps.cooldown_secs > 0 && req.now < last.saturating_add(o.caps.cooldown_secs) {
                return Err(Ineligible::Cooldown);
            }
        }
        let excluded: Vec<u32> = p
            .items
            .iter()
            .copied()
            .filter(|i| {
                s.bought.contains_key(i)
                    && (o.kind == OfferKind::NewArrival || !self.repurchasable[*i as usize])
            })
            .collect();
        if !o.items.is_empty()
            && o.categories.is_empty()
            && excluded.len() == p.items.len()
            && !p.items.is_empty()
        {
            return Err(Ineligible::AlreadyOwned);
        }
        let due = self.due(p, s, req.now);
        if o.kind == OfferKind::Replenishment && due.is_empty() {
            return Err(Ineligible::NotDue);
        }
        Ok((excluded, due))
    }

    /// Propensity before calibration, from affinity and due state.
    fn raw_logit(&self, affinity: f32, due: bool) -> f64 {
        self.config.intercept
            + self.config.slope * f64::from(affinity)
            + if due { self.config.due_boost } else { 0.0 }
    }

    /// The offer's vector for this customer: re-centred on what is still on offer when
    /// owned items were dropped (rare), else the prepared one.
    fn offer_vector<'a>(&self, p: &'a Prepared, excluded: &[u32]) -> std::borrow::Cow<'a, [f32]> {
        if excluded.is_empty() {
            return std::borrow::Cow::Borrowed(&p.vector);
        }
        let d = self.model.factors();
        let mut sum = vec![0.0f32; d];
        for &i in p.items.iter().filter(|i| !excluded.contains(i)) {
            let u = normalized(self.row(i).to_vec());
            if !u.is_empty() {
                crate::linalg::axpy(1.0, &u, &mut sum);
            }
        }
        for &c in &p.categories {
            let u = &self.category_centroid[c as usize];
            if !u.is_empty() {
                crate::linalg::axpy(1.0, u, &mut sum);
            }
        }
        std::borrow::Cow::Owned(normalized(sum))
    }

    fn affinity(&self, p: &Prepared, s: &Scratch, excluded: &[u32]) -> f32 {
        match &s.vector {
            Some(x) => {
                let v = self.offer_vector(p, excluded);
                if v.is_empty() {
                    0.0
                } else {
                    dot(x, &v).clamp(-1.0, 1.0)
                }
            }
            None => 0.0,
        }
    }

    fn matched(&self, p: &Prepared, s: &Scratch, v: &[f32]) -> Vec<MatchedPurchase> {
        let mut m: Vec<MatchedPurchase> = s
            .bought
            .keys()
            .map(|&i| {
                let row = self.row(i);
                let n = norm(row);
                let similarity = if v.is_empty() || n == 0.0 {
                    0.0
                } else {
                    dot(row, v) / n
                };
                let direct = p.items.contains(&i)
                    || self.model.item_category[i as usize]
                        .is_some_and(|c| p.categories.contains(&c));
                MatchedPurchase {
                    item: i,
                    similarity,
                    direct,
                }
            })
            .filter(|m| m.direct || m.similarity > 0.0)
            .collect();
        m.sort_by(|a, b| {
            b.direct
                .cmp(&a.direct)
                .then(b.similarity.total_cmp(&a.similarity))
                .then(a.item.cmp(&b.item))
        });
        m.truncate(3);
        m
    }

    fn candidate(
        &self,
        idx: usize,
        c: &CustomerView<'_>,
        s: &Scratch,
        req: &OfferRequest,
    ) -> Option<Candidate> {
        let (excluded, due) = self.check(idx, c, s, req).ok()?;
        let p = &self.offers[idx];
        let affinity = self.affinity(p, s, &excluded);
        let propensity = sigmoid(self.raw_logit(affinity, !due.is_empty()) + p.shift);
        let prof = c.profile;
        let retained = (p.offer.kind == OfferKind::Retention).then(|| retained_value(prof));
        let env = propensity * (p.offer.value.get() + retained.unwrap_or(0.0)) - p.offer.cost.get();
        Some(Candidate {
            idx,
            env,
            propensity,
            affinity,
            retained,
            excluded,
            due,
        })
    }

    fn explain(&self, cand: Candidate, c: &CustomerView<'_>, s: &Scratch) -> ScoredOffer {
        let p = &self.offers[cand.idx];
        let prof = c.profile;
        let v = self.offer_vector(p, &cand.excluded);
        ScoredOffer {
            offer_id: p.offer.id.clone(),
            expected_net_value: cand.env,
            propensity: cand.propensity,
            reasons: OfferReasons {
                kind: p.offer.kind,
                tier: prof.tier.clone(),
                affinity: cand.affinity,
                calibrated_on: p.calibrated_on,
                churn_risk: prof.churn_risk,
                clv: prof.clv,
                retained_value: cand.retained,
                matched_purchases: self.matched(p, s, &v),
                due: cand.due,
                excluded_items: cand.excluded,
            },
        }
    }

    /// Why offer `idx` is or is not eligible for the customer (None: eligible).
    pub fn ineligibility(
        &self,
        idx: usize,
        c: &CustomerView<'_>,
        req: &OfferRequest,
    ) -> Option<Ineligible> {
        let s = self.scratch(c);
        self.check(idx, c, &s, req).err()
    }

    /// The model's uncalibrated propensity of offer `idx` for a customer (eligibility
    /// ignored): what calibration compares observed acceptance rates against.
    pub fn uncalibrated_propensity(&self, idx: usize, c: &CustomerView<'_>, now: i64) -> f64 {
        let s = self.scratch(c);
        let p = &self.offers[idx];
        let affinity = self.affinity(p, &s, &[]);
        let due = !self.due(p, &s, now).is_empty();
        sigmoid(self.raw_logit(affinity, due))
    }

    /// The customer's best offers: eligible, positive ENV, best first (ties by offer id),
    /// at most one per category unless the request allows more.
    pub fn next_best_offers(&self, c: &CustomerView<'_>, req: &OfferRequest) -> Vec<ScoredOffer> {
        let s = self.scratch(c);
        self.rank(c, &s, req)
    }

    fn rank(&self, c: &CustomerView<'_>, s: &Scratch, req: &OfferRequest) -> Vec<ScoredOffer> {
        let mut scored: Vec<Candidate> = (0..self.offers.len())
            .filter_map(|i| self.candidate(i, c, s, req))
            .filter(|o| o.env > self.config.min_net_value)
            .collect();
        scored.sort_by(|a, b| {
            b.env.total_cmp(&a.env).then_with(|| {
                self.offers[a.idx]
                    .offer
                    .id
                    .cmp(&self.offers[b.idx].offer.id)
            })
        });
        let mut taken: Vec<u32> = Vec::new();
        let mut out = Vec::with_capacity(req.k.min(scored.len()));
        for cand in scored {
            if out.len() >= req.k {
                break;
            }
            let cats = &self.offers[cand.idx].conflict_categories;
            if !req.allow_same_category && cats.iter().any(|c| taken.contains(c)) {
                continue;
            }
            taken.extend(cats.iter().copied());
            out.push(self.explain(cand, c, s));
        }
        out
    }

    /// [`Self::next_best_offers`] for many customers in parallel; the same answers as
    /// one call per customer, in input order.
    pub fn batch(
        &self,
        customers: &[CustomerView<'_>],
        req: &OfferRequest,
    ) -> Vec<Vec<ScoredOffer>> {
        customers
            .par_iter()
            .map(|c| self.next_best_offers(c, req))
            .collect()
    }

    /// How many of `customers` are eligible for offer `idx`, and how many would get it as
    /// their first offer, overall and per tier. Build the engine with the live offers plus
    /// the draft to try a draft before it goes live.
    pub fn dry_run(
        &self,
        idx: usize,
        customers: &[CustomerView<'_>],
        req: &OfferRequest,
    ) -> DryRun {
        let one = OfferRequest {
            k: 1,
            ..req.clone()
        };
        let per: Vec<(bool, bool, &str)> = customers
            .par_iter()
            .map(|c| {
                let s = self.scratch(c);
                let eligible = self.check(idx, c, &s, req).is_ok();
                let first = eligible
                    && self
                        .rank(c, &s, &one)
                        .first()
                        .is_some_and(|o| o.offer_id == self.offers[idx].offer.id);
                (eligible, first, c.profile.tier.as_str())
            })
            .collect();
        let mut d = DryRun {
            customers: customers.len() as u64,
            ..DryRun::default()
        };
        for (eligible, first, tier) in per {
            if eligible {
                d.eligible += 1;
                *d.eligible_by_tier.entry(tier.to_owned()).or_default() += 1;
            }
            if first {
                d.first += 1;
                *d.first_by_tier.entry(tier.to_owned()).or_default() += 1;
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::AlsParams;
    use crate::crm::rfm::RfmScore;
    use crate::model::{IndexChoice, TrainConfig, Trainer};
    use crate::testdata::shop;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn model() -> Model {
        let (data, cats) = shop(600, 6, 20, 1);
        let config = TrainConfig {
            als: AlsParams {
                factors: 16,
                iterations: 8,
                regularization: 1.0,
                alpha: 5.0,
                ..AlsParams::default()
            },
            neighbours: 10,
            index: IndexChoice::Exact,
            ..TrainConfig::default()
        };
        Trainer::new(&config)
            .version("v1")
            .trained_at(NOW)
            .train(&data, &cats)
            .unwrap()
    }

    fn offer(id: &str, doc: serde_json::Value) -> Offer {
        Offer::parse(id, &doc).unwrap()
    }

    fn profile(tier: &str, churn: f64, clv: f64) -> CustomerProfile {
        CustomerProfile {
            frequency: 3,
            recency: 100.0,
            t: 200.0,
            days_since_last: 100.0,
            total_spend: 300.0,
            monetary_value: 100.0,
            rfm: RfmScore { r: 3, f: 4, m: 5 },
            tier: tier.into(),
            p_alive: Some(1.0 - churn),
            churn_risk: Some(churn),
            expected_purchases: Some(0.5),
            clv: Some(clv),
        }
    }

    fn buys(m: &Model, items: &[&str], at: i64) -> Vec<Purchase> {
        items
            .iter()
            .map(|i| Purchase {
                item: m.item_index(i).unwrap(),
                quantity: 1.0,
                at,
            })
            .collect()
    }

    fn cv<'a>(
        profile: &'a CustomerProfile,
        purchases: &'a [Purchase],
        events: &'a [PastEvent],
    ) -> CustomerView<'a> {
        CustomerView {
            profile,
            purchases,
            events,
        }
    }

    fn req(channel: &str) -> OfferRequest {
        OfferRequest {
            channel: channel.into(),
            now: NOW,
            k: 5,
            allow_same_category: false,
        }
    }

    fn engine<'m>(m: &'m Model, offers: Vec<Offer>) -> OfferEngine<'m> {
        let n = m.items.len();
        OfferEngine::new(
            m,
            offers
                .into_iter()
                .map(|o| (o, OfferStats::default()))
                .collect(),
            vec![false; n],
            Intervals::default(),
            EngineConfig::default(),
        )
        .unwrap()
    }

    fn field_of(doc: serde_json::Value) -> String {
        match Offer::parse("o", &doc) {
            Err(Error::InvalidOffer { field, .. }) => field,
            other => panic!("expected an offer error, got {other:?}"),
        }
    }

    #[test]
    fn invalid_offers_are_refused_naming_the_field() {
        assert_eq!(field_of(json!({"kind": "coupon", "value": 1})), "kind");
        assert_eq!(field_of(json!({"kind": "discount", "value": "x"})), "value");
        assert_eq!(field_of(json!({"kind": "discount", "value": -1})), "value");
        assert_eq!(field_of(json!({"kind": "discount"})), "document");
        assert_eq!(
            field_of(json!({"kind": "discount", "value": 1, "colour": 1})),
            "colour"
        );
        assert_eq!(
            field_of(
                json!({"kind": "discount", "value": 1, "eligibility": {"churn_risk": {"max": 1.5}}})
            ),
            "eligibility.churn_risk.max"
        );
        assert_eq!(
            field_of(
                json!({"kind": "discount", "value": 1, "eligibility": {"rfm": {"recency": {"min": 4, "max": 2}}}})
            ),
            "eligibility.rfm.recency.min"
        );
        assert_eq!(
            field_of(json!({"kind": "discount", "value": 1, "eligibility": {"tirs": []}})),
            "eligibility.tirs"
        );
        assert_eq!(
            field_of(
                json!({"kind": "discount", "value": 1, "eligibility": {"rfm": {"recency": {"min": "a"}}}})
            ),
            "eligibility.rfm.recency.min"
        );
        assert_eq!(
            field_of(
                json!({"kind": "discount", "value": 1, "eligibility": {"start": "2025-02-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}})
            ),
            "eligibility.end"
        );
        assert_eq!(
            field_of(
                json!({"kind": "discount", "value": 1, "eligibility": {"start": "yesterday"}})
            ),
            "eligibility.start"
        );
        assert_eq!(
            field_of(json!({"kind": "bundle", "value": 1, "items": ["a"]})),
            "items"
        );
        assert_eq!(
            field_of(json!({"kind": "discount", "value": 1, "items": ["a", "a"]})),
            "items[1]"
        );
        assert_eq!(
            field_of(json!({"kind": "replenishment", "value": 1})),
            "items"
        );
        assert_eq!(
            field_of(json!({"kind": "discount", "value": 1, "caps": {"budget": 10}})),
            "caps.budget"
        );
        assert_eq!(
            field_of(json!({"kind": "discount", "value": 1, "caps": {"max_per_customer": 0}})),
            "caps.max_per_customer"
        );
        assert_eq!(
            field_of(json!({"kind": "discount", "value": 1, "caps": {"cooldown_days": -2}})),
            "caps.cooldown_days"
        );
        assert_eq!(
            field_of(json!({"kind": "discount", "value": 1, "eligibility": {"channels": []}})),
            "eligibility.channels"
        );
        // A full, valid document.
        let o = offer(
            "full",
            json!({"kind": "discount", "title": "t", "items": ["g0-1"], "categories": ["cat0"], "value": 5, "cost": 0.1,
                   "eligibility": {"tiers": ["gold"], "rfm": {"frequency": {"min": 2}}, "churn_risk": {"max": 0.5},
                                   "channels": ["email"], "start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00+01:00"},
                   "caps": {"max_per_customer": 2, "cooldown_days": 1.5, "budget": 100}}),
        );
        assert_eq!(o.caps.cooldown_secs, 129_600);
        assert_eq!(o.eligibility.rfm.frequency, Bounds { min: 2, max: 5 });
        assert_eq!(o.eligibility.end, Some(1_767_222_000));
    }

    #[test]
    fn caps_and_cooldowns_count_every_channel() {
        let m = model();
        let o = offer(
            "d",
            json!({"kind": "discount", "categories": ["cat2"], "value": 20, "caps": {"max_per_customer": 2, "cooldown_days": 7}}),
        );
        let e = engine(&m, vec![o]);
        let p = profile("gold", 0.1, 100.0);
        let purchases = buys(&m, &["g2-0", "g2-1"], NOW - 50 * DAY);
        let ev = |kind, days_ago: i64| PastEvent {
            offer: "d".into(),
            kind,
            at: NOW - days_ago * DAY,
        };
        assert_eq!(
            e.next_best_offers(&cv(&p, &purchases, &[]), &req("web"))
                .len(),
            1
        );
        // Shown by email 3 days ago: the web is in cooldown too.
        let h = [ev(EventKind::Shown, 3)];
        assert!(
            e.next_best_offers(&cv(&p, &purchases, &h), &req("web"))
                .is_empty()
        );
        assert_eq!(
            e.ineligibility(0, &cv(&p, &purchases, &h), &req("web")),
            Some(Ineligible::Cooldown)
        );
        // After the cooldown it is back.
        let h = [ev(EventKind::Shown, 8)];
        assert_eq!(
            e.next_best_offers(&cv(&p, &purchases, &h), &req("app"))
                .len(),
            1
        );
        // Two contacts on two channels reach the cap of 2 for good.
        let h = [ev(EventKind::Shown, 30), ev(EventKind::Declined, 20)];
        assert_eq!(
            e.ineligibility(0, &cv(&p, &purchases, &h), &req("web")),
            None
        );
        let h = [ev(EventKind::Shown, 30), ev(EventKind::Shown, 20)];
        assert_eq!(
            e.ineligibility(0, &cv(&p, &purchases, &h), &req("sms")),
            Some(Ineligible::MaxPerCustomer)
        );
        // Answers without logged shows still count as contacts.
        let h = [ev(EventKind::Accepted, 30), ev(EventKind::Declined, 20)];
        assert_eq!(
            e.ineligibility(0, &cv(&p, &purchases, &h), &req("sms")),
            Some(Ineligible::MaxPerCustomer)
        );
        // Another offer's events do not count.
        let h = [PastEvent {
            offer: "other".into(),
            kind: EventKind::Shown,
            at: NOW - DAY,
        }];
        assert_eq!(
            e.ineligibility(0, &cv(&p, &purchases, &h), &req("web")),
            None
        );
    }

    #[test]
    fn budget_is_spent_by_contacts() {
        let m = model();
        let o = offer(
            "d",
            json!({"kind": "discount", "value": 20, "cost": 1, "caps": {"budget": 10}}),
        );
        let n = m.items.len();
        let mk = |shown| {
            OfferEngine::new(
                &m,
                vec![(
                    o.clone(),
                    OfferStats {
                        shown,
                        accepted: 0,
                        mean_predicted: None,
                    },
                )],
                vec![false; n],
                Intervals::default(),
                EngineConfig::default(),
            )
            .unwrap()
        };
        let p = profile("gold", 0.1, 100.0);
        let v = CustomerView {
            profile: &p,
            purchases: &[],
            events: &[],
        };
        assert_eq!(mk(9).ineligibility(0, &v, &req("web")), None);
        assert_eq!(
            mk(10).ineligibility(0, &v, &req("web")),
            Some(Ineligible::Budget)
        );
    }

    #[test]
    fn eligibility_windows_channels_tiers_and_bounds() {
        let m = model();
        let o = offer(
            "w",
            json!({"kind": "discount", "value": 20, "eligibility": {
                "start": "2027-01-15T08:00:00Z", "end": "2027-01-16T08:00:00Z",
                "channels": ["email"], "tiers": ["gold", "silver"],
                "rfm": {"monetary": {"min": 4}}, "churn_risk": {"max": 0.5}}}),
        );
        let start = o.eligibility.start.unwrap();
        let end = o.eligibility.end.unwrap();
        let e = engine(&m, vec![o]);
        let p = profile("gold", 0.1, 100.0);
        let v = CustomerView {
            profile: &p,
            purchases: &[],
            events: &[],
        };
        let at = |now| OfferRequest {
            now,
            ..req("email")
        };
        assert_eq!(
            e.ineligibility(0, &v, &at(start - 1)),
            Some(Ineligible::OutsideWindow)
        );
        assert_eq!(e.ineligibility(0, &v, &at(start)), None);
        assert_eq!(e.ineligibility(0, &v, &at(end - 1)), None);
        assert_eq!(
            e.ineligibility(0, &v, &at(end)),
            Some(Ineligible::OutsideWindow)
        );
        assert_eq!(
            e.ineligibility(
                0,
                &v,
                &OfferRequest {
                    now: start,
                    ..req("web")
                }
            ),
            Some(Ineligible::Channel)
        );
        let bronze = profile("bronze", 0.1, 100.0);
        let vb = CustomerView {
            profile: &bronze,
            ..v
        };
        assert_eq!(e.ineligibility(0, &vb, &at(start)), Some(Ineligible::Tier));
        let mut low = profile("gold", 0.1, 100.0);
        low.rfm.m = 3;
        assert_eq!(
            e.ineligibility(0, &CustomerView { profile: &low, ..v }, &at(start)),
            Some(Ineligible::Rfm)
        );
        let risky = profile("gold", 0.7, 100.0);
        assert_eq!(
            e.ineligibility(
                0,
                &CustomerView {
                    profile: &risky,
                    ..v
                },
                &at(start)
            ),
            Some(Ineligible::ChurnRisk)
        );
        let mut unknown = profile("gold", 0.1, 100.0);
        unknown.churn_risk = None;
        assert_eq!(
            e.ineligibility(
                0,
                &CustomerView {
                    profile: &unknown,
                    ..v
                },
                &at(start)
            ),
            Some(Ineligible::ChurnRisk)
        );
    }

    #[test]
    fn a_churned_high_value_customer_gets_retention_over_a_discount() {
        let m = model();
        let discount = offer(
            "discount",
            json!({"kind": "discount", "categories": ["cat2"], "value": 15, "cost": 0.1}),
        );
        let retention = offer(
            "winback",
            json!({"kind": "retention", "value": 5, "cost": 0.5}),
        );
        let e = engine(&m, vec![discount, retention]);
        let purchases = buys(&m, &["g2-0", "g2-1", "g2-2"], NOW - 200 * DAY);
        let churned = profile("gold", 0.9, 800.0);
        let v = CustomerView {
            profile: &churned,
            purchases: &purchases,
            events: &[],
        };
        let got = e.next_best_offers(&v, &req("email"));
        assert_eq!(got[0].offer_id, "winback", "{got:#?}");
        let r = &got[0].reasons;
        // CLV if retained = CLV / P(alive) = 800 / 0.1.
        let kept = r.retained_value.unwrap();
        assert!((kept - 0.9 * 800.0 / 0.1).abs() < 1e-9, "{kept}");
        assert_eq!(
            (r.tier.as_str(), r.churn_risk, r.clv),
            ("gold", Some(0.9), Some(800.0))
        );
        // The same customer while active prefers the discount on what they like.
        let active = profile("gold", 0.01, 800.0);
        let v = CustomerView {
            profile: &active,
            ..v
        };
        let got = e.next_best_offers(&v, &req("email"));
        assert_eq!(got[0].offer_id, "discount", "{got:#?}");
        assert!(got[0].reasons.matched_purchases.iter().any(|p| p.direct));
    }

    #[test]
    fn owned_items_one_per_category_and_affinity_order() {
        let m = model();
        let n = m.items.len();
        let tv = offer(
            "tv",
            json!({"kind": "discount", "items": ["g2-0"], "value": 30}),
        );
        let near = offer(
            "near",
            json!({"kind": "discount", "items": ["g2-3", "g2-4"], "value": 20}),
        );
        let far = offer(
            "far",
            json!({"kind": "discount", "items": ["g4-3", "g4-4"], "value": 20}),
        );
        let e = OfferEngine::new(
            &m,
            vec![tv, near, far]
                .into_iter()
                .map(|o| (o, OfferStats::default()))
                .collect(),
            vec![false; n],
            Intervals::default(),
            EngineConfig::default(),
        )
        .unwrap();
        let purchases = buys(&m, &["g2-0", "g2-1", "g2-2"], NOW - 10 * DAY);
        let p = profile("gold", 0.1, 100.0);
        let v = CustomerView {
            profile: &p,
            purchases: &purchases,
            events: &[],
        };
        assert_eq!(
            e.ineligibility(0, &v, &req("web")),
            Some(Ineligible::AlreadyOwned)
        );
        let got = e.next_best_offers(
            &v,
            &OfferRequest {
                allow_same_category: true,
                ..req("web")
            },
        );
        let ids: Vec<&str> = got.iter().map(|o| o.offer_id.as_str()).collect();
        assert_eq!(ids, ["near", "far"], "{got:#?}");
        assert!(got[0].reasons.affinity > got[1].reasons.affinity);
        // Repurchasable items stay on offer.
        let e2 = OfferEngine::new(
            &m,
            vec![(
                offer(
                    "tv",
                    json!({"kind": "discount", "items": ["g2-0"], "value": 30}),
                ),
                OfferStats::default(),
            )],
            vec![true; n],
            Intervals::default(),
            EngineConfig::default(),
        )
        .unwrap();
        assert_eq!(e2.ineligibility(0, &v, &req("web")), None);
        // Two offers on the same category: only the better one unless asked.
        let a = offer(
            "a",
            json!({"kind": "discount", "items": ["g2-3"], "value": 20}),
        );
        let b = offer(
            "b",
            json!({"kind": "points_multiplier", "categories": ["cat2"], "value": 10}),
        );
        let e3 = engine(&m, vec![a, b]);
        assert_eq!(e3.next_best_offers(&v, &req("web")).len(), 1);
        assert_eq!(
            e3.next_best_offers(
                &v,
                &OfferRequest {
                    allow_same_category: true,
                    ..req("web")
                }
            )
            .len(),
            2
        );
    }

    #[test]
    fn replenishment_needs_the_customer_to_be_due() {
        let m = model();
        let n = m.items.len();
        let coffee = m.item_index("g1-0").unwrap();
        // Everyone rebuys g1-0 every 10 days.
        let history: Vec<(u32, u32, i64)> = (0..20u32)
            .flat_map(|c| (0..5).map(move |k| (c, coffee, NOW - 400 * DAY + k * 10 * DAY)))
            .collect();
        let o = offer(
            "refill",
            json!({"kind": "replenishment", "items": ["g1-0"], "value": 8}),
        );
        let e = OfferEngine::new(
            &m,
            vec![(o, OfferStats::default())],
            vec![true; n],
            Intervals::compute(&m, &history, &RepurchaseConfig::default()),
            EngineConfig::default(),
        )
        .unwrap();
        assert_eq!(e.item_interval(coffee).map(|i| i.median_days), Some(10.0));
        let p = profile("silver", 0.1, 100.0);
        let recent = buys(&m, &["g1-0"], NOW - 2 * DAY);
        let due = buys(&m, &["g1-0"], NOW - 11 * DAY);
        assert_eq!(
            e.ineligibility(0, &cv(&p, &recent, &[]), &req("web")),
            Some(Ineligible::NotDue)
        );
        let got = e.next_best_offers(&cv(&p, &due, &[]), &req("web"));
        assert_eq!(got.len(), 1);
        let d = got[0].reasons.due[0];
        assert_eq!((d.item, d.typical_days), (Some(coffee), 10.0));
        assert!((d.days_since - 11.0).abs() < 1e-9);
    }

    #[test]
    fn calibration_shrinks_towards_the_model_until_there_is_evidence() {
        let m = model();
        let n = m.items.len();
        let o = offer(
            "d",
            json!({"kind": "discount", "categories": ["cat2"], "value": 20}),
        );
        let p = profile("gold", 0.1, 100.0);
        let purchases = buys(&m, &["g2-0"], NOW - 5 * DAY);
        let v = CustomerView {
            profile: &p,
            purchases: &purchases,
            events: &[],
        };
        let with = |shown, accepted| {
            let e = OfferEngine::new(
                &m,
                vec![(
                    o.clone(),
                    OfferStats {
                        shown,
                        accepted,
                        mean_predicted: Some(0.2),
                    },
                )],
                vec![false; n],
                Intervals::default(),
                EngineConfig::default(),
            )
            .unwrap();
            let r = e.next_best_offers(&v, &req("web"));
            (
                r.first().map_or(0.0, |s| s.propensity),
                r.first().map_or(0, |s| s.reasons.calibrated_on),
            )
        };
        let (base, _) = with(0, 0);
        let (few, on) = with(10, 0);
        assert_eq!((few, on), (base, 0), "below min_shown nothing changes");
        let (cold, on) = with(1000, 0);
        assert!(cold < base && on == 1000);
        let (hot, _) = with(1000, 600);
        assert!(hot > base);
        // Matching the model's mean leaves predictions alone.
        let (same, _) = with(1000, 200);
        assert!((same - base).abs() < 1e-9);
    }

    fn population(
        m: &Model,
        seed: u64,
    ) -> (
        Vec<CustomerProfile>,
        Vec<Vec<Purchase>>,
        Vec<Vec<PastEvent>>,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let tiers = ["gold", "silver", "bronze"];
        let mut profiles = Vec::new();
        let mut purchases = Vec::new();
        let mut events = Vec::new();
        for _ in 0..300 {
            let churn: f64 = rng.random();
            let mut p = profile(
                tiers[rng.random_range(0..3)],
                churn,
                rng.random_range(0.0..1000.0),
            );
            p.rfm = RfmScore {
                r: rng.random_range(1..=5),
                f: rng.random_range(1..=5),
                m: rng.random_range(1..=5),
            };
            profiles.push(p);
            let g = rng.random_range(0..6);
            let k = rng.random_range(0..6);
            purchases.push(
                (0..k)
                    .map(|_| Purchase {
                        item: m
                            .item_index(&format!("g{g}-{}", rng.random_range(0..20)))
                            .unwrap(),
                        quantity: 1.0,
                        at: NOW - rng.random_range(0..300) * DAY,
                    })
                    .collect(),
            );
            let ids = ["o0", "o1", "o2", "o3", "o4"];
            events.push(
                (0..rng.random_range(0..4))
                    .map(|_| PastEvent {
                        offer: ids[rng.random_range(0..5)].into(),
                        kind: [EventKind::Shown, EventKind::Accepted, EventKind::Declined]
                            [rng.random_range(0..3)],
                        at: NOW - rng.random_range(0..30) * DAY,
                    })
                    .collect(),
            );
        }
        (profiles, purchases, events)
    }

    fn mixed_offers() -> Vec<Offer> {
        vec![
            offer(
                "o0",
                json!({"kind": "discount", "categories": ["cat0"], "value": 12, "cost": 0.2, "caps": {"cooldown_days": 10}}),
            ),
            offer(
                "o1",
                json!({"kind": "retention", "value": 4, "cost": 1, "eligibility": {"churn_risk": {"min": 0.6}}}),
            ),
            offer(
                "o2",
                json!({"kind": "bundle", "items": ["g1-0", "g1-1"], "value": 25, "cost": 0.5, "eligibility": {"tiers": ["gold", "silver"]}}),
            ),
            offer(
                "o3",
                json!({"kind": "new_arrival", "items": ["g3-19", "g4-19"], "value": 10, "caps": {"max_per_customer": 1}}),
            ),
            offer(
                "o4",
                json!({"kind": "points_multiplier", "categories": ["cat5", "cat2"], "value": 8, "eligibility": {"rfm": {"frequency": {"min": 3}}}}),
            ),
        ]
    }

    #[test]
    fn batch_equals_one_at_a_time() {
        let m = model();
        let e = engine(&m, mixed_offers());
        let (profiles, purchases, events) = population(&m, 9);
        let views: Vec<CustomerView<'_>> = (0..profiles.len())
            .map(|i| CustomerView {
                profile: &profiles[i],
                purchases: &purchases[i],
                events: &events[i],
            })
            .collect();
        let r = req("email");
        let batch = e.batch(&views, &r);
        assert_eq!(batch.len(), views.len());
        for (v, b) in views.iter().zip(&batch) {
            assert_eq!(&e.next_best_offers(v, &r), b);
        }
        assert!(
            batch.iter().filter(|b| !b.is_empty()).count() > 100,
            "the test population gets offers"
        );
        let kinds: BTreeSet<String> = batch.iter().flatten().map(|o| o.offer_id.clone()).collect();
        assert!(kinds.len() >= 4, "{kinds:?}");
    }

    #[test]
    fn dry_run_counts_equal_a_brute_force_count() {
        let m = model();
        let e = engine(&m, mixed_offers());
        let (profiles, purchases, events) = population(&m, 10);
        let views: Vec<CustomerView<'_>> = (0..profiles.len())
            .map(|i| CustomerView {
                profile: &profiles[i],
                purchases: &purchases[i],
                events: &events[i],
            })
            .collect();
        let r = req("email");
        for idx in 0..5 {
            let d = e.dry_run(idx, &views, &r);
            let id = e.offers().nth(idx).unwrap().id.clone();
            let mut want = DryRun {
                customers: views.len() as u64,
                ..DryRun::default()
            };
            for v in &views {
                if e.ineligibility(idx, v, &r).is_none() {
                    want.eligible += 1;
                    *want
                        .eligible_by_tier
                        .entry(v.profile.tier.clone())
                        .or_default() += 1;
                }
                if e.next_best_offers(v, &r)
                    .first()
                    .is_some_and(|o| o.offer_id == id)
                {
                    want.first += 1;
                    *want
                        .first_by_tier
                        .entry(v.profile.tier.clone())
                        .or_default() += 1;
                }
            }
            assert_eq!(d, want, "offer {id}");
        }
    }
}
