//! Blob store in a local folder: `<root>/<tenant>/<key>`, the local default for artifacts.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::ids::{BlobKey, TenantId};
use crate::traits::BlobStore;
use crate::types::BlobMeta;

const BACKEND: &str = "local-blobs";
/// Marker in temporary file names; `~` is not allowed in blob keys so temp files never list.
const TMP_MARK: &str = "~tmp-";

/// Blobs as files under a root folder; writes go through a temp file and a rename (atomic).
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// Uses (and creates on first write) the folder `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, tenant: &TenantId, key: &BlobKey) -> PathBuf {
        let mut p = self.root.join(tenant.as_str());
        for seg in key.as_str().split('/') {
            p.push(seg);
        }
        p
    }
}

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::backend(BACKEND, op, e)
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, tenant: &TenantId, key: &BlobKey, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(tenant, key);
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::io::Write;
            let dir = path
                .parent()
                .ok_or_else(|| Error::backend_msg(BACKEND, "put", "blob path has no parent"))?;
            std::fs::create_dir_all(dir).map_err(io_err("create directory"))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = dir.join(format!("{name}{TMP_MARK}{:016x}", rand::random::<u64>()));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            if let Err(e) = write() {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::backend(BACKEND, "put", e));
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::backend(BACKEND, "put", e))?
    }

    async fn get(&self, tenant: &TenantId, key: &BlobKey) -> Result<Vec<u8>> {
        match tokio::fs::read(self.path(tenant, key)).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found("blob", key.to_string()))
            }
            Err(e) => Err(Error::backend(BACKEND, "get", e)),
        }
    }

    async fn head(&self, tenant: &TenantId, key: &BlobKey) -> Result<Option<BlobMeta>> {
        match tokio::fs::metadata(self.path(tenant, key)).await {
            Ok(m) if m.is_file() => Ok(Some(BlobMeta {
                key: key.clone(),
                size: m.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::backend(BACKEND, "head", e)),
        }
    }

    async fn delete(&self, tenant: &TenantId, key: &BlobKey) -> Result<()> {
        match tokio::fs::remove_file(self.path(tenant, key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::backend(BACKEND, "delete", e)),
        }
    }

    async fn list(&self, tenant: &TenantId, prefix: &str) -> Result<Vec<BlobMeta>> {
        let prefix = BlobKey::parse_prefix(prefix)?;
        let base = self.root.join(tenant.as_str());
        tokio::task::spawn_blocking(move || -> Result<Vec<BlobMeta>> {
            let mut out = Vec::new();
            let mut stack = vec![(base, String::new())];
            while let Some((dir, rel)) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::backend(BACKEND, "list", e)),
                };
                for entry in entries {
                    let entry = entry.map_err(io_err("list"))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.contains(TMP_MARK) {
                        continue;
                    }
                    let key = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    let ft = entry.file_type().map_err(io_err("list"))?;
                    if ft.is_dir() {
                        // Only descend where the prefix can still match.
                        if key.starts_with(&prefix) || prefix.starts_with(&format!("{key}/")) {
                            stack.push((entry.path(), key));
                        }
                    } else if ft.is_file() && key.starts_with(&prefix) {
                        // Files not named like keys were not written by us; skip them.
                        if let Ok(k) = BlobKey::parse(key) {
                            let size = entry.metadata().map_err(io_err("list"))?.len();
                            out.push(BlobMeta { key: k, size });
                        }
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| Error::backend(BACKEND, "list", e))?
    }
}
