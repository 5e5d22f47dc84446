//! Affinity's application layer: it joins the store and the model.
//!
//! Main pieces: [`training`] reads a tenant's purchases and catalog from any
//! [`affinity_store::RecordStore`] and trains an [`affinity_model::model::Model`];
//! [`demo`] fills a store with a seeded, realistic demo shop; [`crm`] computes customer
//! profiles and answers next best offers from store data; [`clv`] fits BG/NBD and
//! Gamma-Gamma on any transactions CSV for the data team. The HTTP router, settings
//! and the retrain pipeline build on these.
#![deny(missing_docs)]

pub mod clv;
pub mod crm;
pub mod demo;
pub mod error;
pub mod training;

pub use error::{Error, Result};
