//! Affinity's math, with no I/O beyond artifact bytes.
//!
//! Data flow: purchases ([`interactions::Event`]) -> [`interactions::Interactions`]
//! (interned ids, decayed weights, CSR both ways) -> [`als::fit`] (implicit ALS with
//! conjugate gradient) -> [`model::Model`] (item factors, Gram matrix, neighbour lists,
//! popularity, vector index) -> [`artifact`] bytes with a verified manifest. At request
//! time a [`model::Model`] folds a customer's current purchases into a vector
//! ([`als::fold_in`]) and searches the [`index`]. [`eval`] measures all of it offline.
#![deny(missing_docs)]

pub mod als;
pub mod artifact;
pub mod crm;
pub mod csr;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod ids;
pub mod index;
pub mod interactions;
pub mod linalg;
pub mod model;
pub mod neighbours;
pub mod popularity;
pub mod topk;
pub mod train;
pub mod tune;

pub use error::{Error, Result};

#[cfg(test)]
pub(crate) mod testdata;
