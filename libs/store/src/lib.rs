//! Affinity's storage layer: record and blob traits with two real backends.
//!
//! Main types: the record traits ([`PurchaseStore`], [`CatalogStore`], [`CustomerStore`],
//! [`OfferStore`], [`KeyStore`], [`ModelRegistry`], [`RetrainLock`], bundled as
//! [`RecordStore`]) and [`BlobStore`]; their implementations [`SqliteStore`] (embedded, the
//! local default), [`DynamoStore`] (DynamoDB), [`LocalBlobStore`], [`S3BlobStore`] and
//! [`MemoryBlobStore`]; and [`Stores`], built from a [`Backend`] read from the environment.
//!
//! Data flow: the edge parses raw input into validated ids ([`ids`]) and records
//! ([`types`]); the service calls the traits through `Arc<dyn ...>`; every key starts with
//! the [`TenantId`]. Bulk loads go through [`import`]. Errors are one enum, [`Error`].
//!
//! Only `dynamo/` imports the DynamoDB SDK and only `s3.rs` the S3 SDK; the table schema
//! lives once in [`dynamo::schema`]. See docs/data-model.md for tables and access patterns.

#![deny(missing_docs)]

mod config;
pub mod dynamo;
mod error;
pub mod ids;
pub mod import;
mod local_blobs;
pub mod retry;
mod s3;
mod sqlite;
mod traits;
pub mod types;

pub use config::{Backend, MemoryBlobStore, Stores, parse_retention_days, peer_sdk_config};
pub use dynamo::{DynamoOptions, DynamoStore};
pub use error::{BadRow, BoxError, Conflict, Error, Result};
pub use ids::{
    BlobKey, Category, Channel, Currency, CustomerId, EventId, ItemId, JobId, KeyId,
    ModelVersionId, OfferId, OrderId, RecommendationId, TenantId,
};
pub use local_blobs::LocalBlobStore;
pub use retry::RetryPolicy;
pub use s3::{PART_BYTES as S3_PART_BYTES, S3BlobStore};
pub use sqlite::SqliteStore;
pub use traits::{
    BlobStore, CatalogStore, CustomerStore, KeyStore, ModelRegistry, OfferStore, PurchaseStore,
    RecordStore, RetrainLock,
};
pub use types::*;
