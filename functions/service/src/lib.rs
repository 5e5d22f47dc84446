//! Affinity's application layer: it joins the store and the model.
//!
//! Main pieces: [`training`] reads a tenant's purchases and catalog from any
//! [`affinity_store::RecordStore`] and trains an [`affinity_model::model::Model`];
//! [`demo`] fills a store with a seeded, realistic demo shop; [`retrain`] is the retrain
//! pipeline (lock, scan, fit, evaluate, gate, artifact, registry, pointer flip) and the
//! model-version operations (list, show, promote, roll back, job status). The HTTP router
//! and settings build on these.
#![deny(missing_docs)]

pub mod demo;
pub mod error;
pub mod retrain;
pub mod training;

pub use error::{Error, Result};
