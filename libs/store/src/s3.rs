//! S3 blob store. The only module that imports `aws_sdk_s3`.
//!
//! Path-style addressing (`http://host/bucket/key`) so loopback peers such as moto work
//! without wildcard DNS; AWS accepts it too. Object key: `<prefix><tenant>/<blob key>`.
//! The SDK's standard retry (throttling, 5xx, transport errors) covers these idempotent calls.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use crate::error::{Error, Result};
use crate::ids::{BlobKey, TenantId};
use crate::traits::BlobStore;
use crate::types::BlobMeta;

const BACKEND: &str = "s3";

/// Blobs in one S3 bucket under an optional key prefix.
#[derive(Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn s3_err<E, R>(op: &str, e: SdkError<E, R>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = DisplayErrorContext(&e).to_string();
    Error::Backend {
        backend: BACKEND,
        operation: op.to_string(),
        message,
        source: Some(Box::new(e)),
    }
}

impl S3BlobStore {
    /// Builds the store from an SDK config; forces path-style addressing.
    /// `prefix` is prepended to every object key (use "" or something like `affinity/`).
    pub fn new(
        sdk: &aws_config::SdkConfig,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Result<Self> {
        let bucket = bucket.into();
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid {
            return Err(Error::invalid(
                "bucket",
                format!("{bucket:?} is not a valid S3 bucket name"),
            ));
        }
        let prefix = prefix.into();
        if !prefix.is_empty() {
            BlobKey::parse_prefix(&prefix)?;
        }
        let conf = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build();
        Ok(Self {
            client: Client::from_conf(conf),
            bucket,
            prefix,
        })
    }

    /// Creates the bucket if missing (local setup and tests; deployments create it in infra).
    pub async fn create_bucket(&self) -> Result<()> {
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(s3_err("CreateBucket", e)),
        }
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn tenant_prefix(&self, tenant: &TenantId) -> String {
        format!("{}{}/", self.prefix, tenant.as_str())
    }

    fn object_key(&self, tenant: &TenantId, key: &BlobKey) -> String {
        format!("{}{}", self.tenant_prefix(tenant), key.as_str())
    }
}

/// Size of one ranged read of a blob.
pub const PART_BYTES: u64 = 8 << 20;
/// Ranged reads of one blob in flight at once.
pub const PARTS_IN_FLIGHT: usize = 8;

/// One ranged read: its bytes, the object's whole size and its ETag.
struct Range {
    bytes: Vec<u8>,
    total: u64,
    etag: Option<String>,
}

enum RangeError {
    NoSuchKey,
    /// The range starts past the end (a zero-byte object), or the object changed (its
    /// ETag no longer matches).
    Unsatisfiable,
    Other(Error),
}

impl S3BlobStore {
    /// Reads `[start, start + PART_BYTES)` of `object`, only if its ETag is still
    /// `if_match` when given.
    async fn get_range(
        &self,
        object: &str,
        start: u64,
        if_match: Option<&str>,
    ) -> std::result::Result<Range, RangeError> {
        let res = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .range(format!("bytes={start}-{}", start + PART_BYTES - 1))
            .set_if_match(if_match.map(str::to_owned))
            .send()
            .await;
        let out = match res {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(RangeError::NoSuchKey);
            }
            Err(e)
                if matches!(
                    e.raw_response().map(|r| r.status().as_u16()),
                    Some(412 | 416)
                ) =>
            {
                return Err(RangeError::Unsatisfiable);
            }
            Err(e) => return Err(RangeError::Other(s3_err("GetObject", e))),
        };
        // "bytes <first>-<last>/<total>"
        let total = out
            .content_range()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse::<u64>().ok());
        let etag = out.e_tag().map(str::to_owned);
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| RangeError::Other(Error::backend(BACKEND, "GetObject body", e)))?
            .into_bytes()
            .to_vec();
        // A server that ignores ranges sends the whole object without a Content-Range.
        let total = total.unwrap_or(start + bytes.len() as u64);
        Ok(Range { bytes, total, etag })
    }

    /// Reads `object` in one request (a zero-byte blob).
    async fn get_whole(&self, object: &str, key: &BlobKey) -> Result<Vec<u8>> {
        let res = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await;
        let out = match res {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(Error::not_found("blob", key.to_string()));
            }
            Err(e) => return Err(s3_err("GetObject", e)),
        };
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| Error::backend(BACKEND, "GetObject body", e))?;
        Ok(data.into_bytes().to_vec())
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, tenant: &TenantId, key: &BlobKey, bytes: Vec<u8>) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(tenant, key))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| s3_err("PutObject", e))?;
        Ok(())
    }

    /// Reads a blob in [`PART_BYTES`] ranges, [`PARTS_IN_FLIGHT`] at a time: one GET
    /// stream from S3 tops out well below what a Lambda's network gives, and a model
    /// artifact is read on every cold start. The first range tells the size and the ETag;
    /// the others are conditional on that ETag, so a blob replaced mid-read is an error,
    /// never a mix of two versions. A blob of one part costs one request, as before.
    async fn get(&self, tenant: &TenantId, key: &BlobKey) -> Result<Vec<u8>> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let object = self.object_key(tenant, key);
        let first = match self.get_range(&object, 0, None).await {
            Ok(r) => r,
            Err(RangeError::NoSuchKey) => return Err(Error::not_found("blob", key.to_string())),
            // A zero-byte object has no range to read: read it whole.
            Err(RangeError::Unsatisfiable) => return self.get_whole(&object, key).await,
            Err(RangeError::Other(e)) => return Err(e),
        };
        let total = first.total;
        let mut bytes = first.bytes;
        if bytes.len() as u64 >= total {
            return Ok(bytes);
        }
        let etag = first.etag.ok_or_else(|| {
            Error::backend_msg(BACKEND, "GetObject", "a ranged read without an ETag")
        })?;
        bytes.reserve(
            usize::try_from(total)
                .unwrap_or(0)
                .saturating_sub(bytes.len()),
        );
        let starts: Vec<u64> = (bytes.len() as u64..total)
            .step_by(PART_BYTES as usize)
            .collect();
        let parts: Vec<Vec<u8>> = stream::iter(starts.into_iter().map(|start| {
            let (object, etag) = (&object, &etag);
            async move {
                match self.get_range(object, start, Some(etag)).await {
                    Ok(r) => Ok(r.bytes),
                    Err(RangeError::NoSuchKey | RangeError::Unsatisfiable) => {
                        Err(Error::backend_msg(
                            BACKEND,
                            "GetObject",
                            format!("blob {key} changed or vanished while it was read"),
                        ))
                    }
                    Err(RangeError::Other(e)) => Err(e),
                }
            }
        }))
        .buffered(PARTS_IN_FLIGHT)
        .try_collect()
        .await?;
        for p in parts {
            bytes.extend_from_slice(&p);
        }
        if bytes.len() as u64 != total {
            return Err(Error::backend_msg(
                BACKEND,
                "GetObject",
                format!("blob {key}: read {} of {total} bytes", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    async fn head(&self, tenant: &TenantId, key: &BlobKey) -> Result<Option<BlobMeta>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(tenant, key))
            .send()
            .await
        {
            Ok(o) => Ok(Some(BlobMeta {
                key: key.clone(),
                size: o
                    .content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .unwrap_or(0),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(s3_err("HeadObject", e)),
        }
    }

    async fn delete(&self, tenant: &TenantId, key: &BlobKey) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object_key(tenant, key))
            .send()
            .await
            .map_err(|e| s3_err("DeleteObject", e))?;
        Ok(())
    }

    async fn list(&self, tenant: &TenantId, prefix: &str) -> Result<Vec<BlobMeta>> {
        let prefix = BlobKey::parse_prefix(prefix)?;
        let base = self.tenant_prefix(tenant);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let res = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(format!("{base}{prefix}"))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_err("ListObjectsV2", e))?;
            for obj in res.contents() {
                let Some(k) = obj.key().and_then(|k| k.strip_prefix(&base)) else {
                    continue;
                };
                if let Ok(key) = BlobKey::parse(k) {
                    out.push(BlobMeta {
                        key,
                        size: obj.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    });
                }
            }
            match res.next_continuation_token() {
                Some(t) if res.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
