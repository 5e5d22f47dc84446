//! Affinity's application layer: it joins the store and the model behind one HTTP router.
//!
//! Main pieces: [`settings::Settings`] (read from the environment), [`telemetry`] (JSON or
//! pretty logs, customer ids as keyed hashes), [`state::AppState`] (stores, live models,
//! verified keys), [`routes::router`] (every `/v1` route, one module per group, with its
//! OpenAPI description), [`error::ApiError`] (the one status mapping), [`loader::ModelCache`]
//! (per-tenant live model in an arc-swap, re-checked against the registry's pointer),
//! [`answers`] (the storefront queries with filters, fallbacks and reasons) and
//! [`host::serve`] (Lambda or TCP). [`training`] reads a tenant's purchases and trains a
//! model; [`retrain`] is the retrain pipeline (lock, scan, fit, evaluate, gate, artifact,
//! registry, pointer flip) and the model-version operations; [`crm`] computes customer
//! profiles and answers next best offers; [`clv`] fits BG/NBD and Gamma-Gamma on any
//! transactions CSV for the data team; [`demo`] fills a store with a seeded, realistic
//! demo shop.
//!
//! Request flow: host -> router -> [`auth::Caller`] (bearer key, scopes) -> validated
//! extractors ([`extract`]) -> handler -> live model + store (history, catalog snapshot) ->
//! JSON answer with recommendation id, model version and a reason per item.
#![deny(missing_docs)]

pub mod answers;
pub mod catalog;
pub mod config;
pub mod crm;
pub mod customer_data;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod fallback;
pub mod http;
pub mod loader;
pub mod metrics;
pub mod report;
pub mod retrain;
pub mod settings;
pub mod training;

pub use error::{ApiError, Error, Result};
