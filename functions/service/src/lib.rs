//! Affinity's application layer: it joins the store and the model.
//!
//! Main pieces: [`training`] reads a tenant's purchases and catalog from any
//! [`affinity_store::RecordStore`] and trains an [`affinity_model::model::Model`];
//! [`demo`] fills a store with a seeded, realistic demo shop. The HTTP router, settings
//! and the retrain pipeline build on these.
#![deny(missing_docs)]

pub mod demo;
pub mod error;
pub mod training;

pub use error::{Error, Result};
