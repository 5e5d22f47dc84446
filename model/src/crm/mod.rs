//! Customer insight and offers: the CRM half of the model crate, pure math with no I/O.
//!
//! Data flow: transactions -> [`summary`] (lifetimes' frequency / recency / T) ->
//! [`bgnbd`] (P(alive), expected purchases) and [`gamma_gamma`] (spend, CLV) fitted by
//! maximum likelihood ([`optimize`] keeps argmin private) -> [`profile`] (plus [`rfm`]
//! scores and value [`tiers`]) -> [`offers`], which ranks a customer's eligible offers by
//! expected net value using the ALS model's vectors, the profile, [`repurchase`] intervals
//! and the offer event history.

pub mod bgnbd;
pub mod gamma_gamma;
pub mod offers;
mod optimize;
pub mod profile;
pub mod repurchase;
pub mod rfm;
pub mod special;
pub mod summary;
pub mod tiers;
