//! Object storage of input images and overlays: an S3 bucket or a local folder, chosen by
//! URL. The API and the worker call the same methods whichever backend is configured.
//!
//! The folder backend maps a key to a path under its root by splitting it at `/`. Each part
//! must be non-empty, must not be `.` or `..` and must be at most 255 bytes, so no key can
//! name a path outside the root; a key that breaks these rules is rejected as `invalid_key`.
//! Objects are written to a temporary file beside the target and renamed over it, so a
//! reader never sees half an object.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::config::StorageUrl;
use crate::s3::{S3Settings, S3Store};

/// Metadata of an object found by [`ObjectStore::head`].
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub size: u64,
    pub etag: Option<String>,
}

/// Failure of an object store call.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no object at the key")]
    NotFound,
    /// The key cannot be stored by this backend; the message says why.
    #[error("{0}")]
    InvalidKey(String),
    #[error("the object is at least {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// The backend failed or timed out; retrying may succeed.
    #[error("object store request failed: {0}")]
    Unavailable(String),
}

impl StorageError {
    /// Whether retrying the same call can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }
}

/// A bucket or folder of objects.
#[derive(Debug, Clone)]
pub enum ObjectStore {
    S3(S3Store),
    File(FileStore),
}

impl ObjectStore {
    /// Opens the store named by `url`. An S3 store takes its endpoint, region and credentials
    /// from the AWS environment; a folder is created when missing.
    pub async fn open(
        url: &StorageUrl,
        settings: &S3Settings,
    ) -> Result<ObjectStore, StorageError> {
        match url {
            StorageUrl::S3 { bucket, prefix } => Ok(ObjectStore::S3(
                S3Store::new(settings, bucket.clone(), prefix.clone()).await,
            )),
            StorageUrl::File { root } => Ok(ObjectStore::File(FileStore::open(root)?)),
        }
    }

    /// Looks an object up without reading it.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError> {
        match self {
            ObjectStore::S3(s3) => s3.head(key).await,
            ObjectStore::File(file) => file.head(key).await,
        }
    }

    /// Reads a whole object, failing with [`StorageError::TooLarge`] as soon as it is known
    /// to exceed `limit` bytes.
    pub async fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>, StorageError> {
        match self {
            ObjectStore::S3(s3) => s3.get(key, limit).await,
            ObjectStore::File(file) => file.get(key, limit).await,
        }
    }

    /// Writes an object, replacing any object at the same key.
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        match self {
            ObjectStore::S3(s3) => s3.put(key, body, content_type).await,
            ObjectStore::File(file) => file.put(key, body).await,
        }
    }

    /// Checks that the bucket or folder can be reached, for readiness probes.
    pub async fn check(&self) -> Result<(), StorageError> {
        match self {
            ObjectStore::S3(s3) => s3.check().await,
            ObjectStore::File(file) => file.check().await,
        }
    }

    /// Describes where the objects live, for messages: `s3://bucket/prefix` or a path.
    pub fn location(&self) -> String {
        match self {
            ObjectStore::S3(s3) => s3.location(),
            ObjectStore::File(file) => file.root.display().to_string(),
        }
    }
}

/// Objects as files under a root folder.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

/// Longest file name most Linux file systems accept.
const MAX_NAME_BYTES: usize = 255;

impl FileStore {
    /// Opens the folder, creating it when missing.
    pub fn open(root: &Path) -> Result<FileStore, StorageError> {
        std::fs::create_dir_all(root).map_err(|e| {
            StorageError::Unavailable(format!("cannot create the folder {}: {e}", root.display()))
        })?;
        Ok(FileStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a key to its path under the root, following the rules in the module documentation.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        let mut path = self.root.clone();
        for part in key.split('/') {
            let problem = if part.is_empty() {
                Some("it has an empty path segment (a leading, trailing or doubled '/')")
            } else if part == "." || part == ".." {
                Some("it has a '.' or '..' path segment")
            } else if part.len() > MAX_NAME_BYTES {
                Some("one of its path segments is longer than 255 bytes")
            } else if part.contains('\0') {
                Some("it contains a NUL character")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(StorageError::InvalidKey(format!(
                    "the key cannot be stored in a folder because {problem}; use segments \
                     of 1 to 255 bytes separated by single '/'"
                )));
            }
            path.push(part);
        }
        Ok(path)
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(ObjectInfo {
                size: meta.len(),
                etag: None,
            }),
            Ok(_) => Err(StorageError::NotFound),
            Err(e) => Err(io_error(&self.root, e)),
        }
    }

    async fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>, StorageError> {
        let size = self.head(key).await?.size;
        if size > limit {
            return Err(StorageError::TooLarge { size, limit });
        }
        let path = self.path_of(key)?;
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| io_error(&self.root, e))?;
        // The file may have grown between the two calls.
        if bytes.len() as u64 > limit {
            return Err(StorageError::TooLarge {
                size: bytes.len() as u64,
                limit,
            });
        }
        Ok(bytes)
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| io_error(&self.root, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let temporary = parent.join(format!(
            ".{name}.{}.{}.partial",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        let written = tokio::fs::write(&temporary, &body).await;
        let renamed = match written {
            Ok(()) => tokio::fs::rename(&temporary, &path).await,
            Err(e) => Err(e),
        };
        if let Err(e) = renamed {
            let _ = tokio::fs::remove_file(&temporary).await;
            return Err(io_error(&self.root, e));
        }
        Ok(())
    }

    async fn check(&self) -> Result<(), StorageError> {
        match tokio::fs::metadata(&self.root).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(StorageError::Unavailable(format!(
                "{} is not a folder",
                self.root.display()
            ))),
            Err(e) => Err(io_error(&self.root, e)),
        }
    }
}

/// Maps a file system error to a storage error. The message names the root, never the path
/// under it, because that path is made of the key and errors are logged.
fn io_error(root: &Path, error: std::io::Error) -> StorageError {
    match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => StorageError::NotFound,
        std::io::ErrorKind::InvalidFilename => StorageError::InvalidKey(format!(
            "the key cannot be stored as a file name in {}: {error}",
            root.display()
        )),
        _ => StorageError::Unavailable(format!(
            "file operation under {} failed: {error}",
            root.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (FileStore, PathBuf) {
        let root = std::env::temp_dir().join(format!("rfo-storage-{}", uuid::Uuid::now_v7()));
        (FileStore::open(&root).unwrap(), root)
    }

    #[test]
    fn keys_map_under_the_root() {
        let (store, root) = store();
        assert_eq!(store.path_of("a.png").unwrap(), root.join("a.png"));
        assert_eq!(
            store.path_of("x/y z.png").unwrap(),
            root.join("x").join("y z.png")
        );
        assert_eq!(store.path_of(" .png").unwrap(), root.join(" .png"));
        assert_eq!(store.path_of("...").unwrap(), root.join("..."));
    }

    #[test]
    fn escaping_keys_rejected() {
        let (store, _) = store();
        for key in [
            "../a.png",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "a/",
            ".",
            "a/./b",
            "a\0b",
        ] {
            let result = store.path_of(key);
            assert!(
                matches!(result, Err(StorageError::InvalidKey(_))),
                "{key:?}: {result:?}"
            );
        }
        assert!(store.path_of(&"n".repeat(256)).is_err());
        assert!(store.path_of(&"n".repeat(255)).is_ok());
    }

    #[tokio::test]
    async fn put_get_head_round_trip() {
        let (store, root) = store();
        let key = "dir/Снимок ё+%2B?#.png";
        store.put(key, Bytes::from_static(b"pixels")).await.unwrap();
        assert_eq!(store.head(key).await.unwrap().size, 6);
        assert_eq!(store.get(key, 100).await.unwrap(), b"pixels");
        assert!(matches!(
            store.get(key, 5).await,
            Err(StorageError::TooLarge { size: 6, limit: 5 })
        ));
        assert!(matches!(
            store.head("dir/other.png").await,
            Err(StorageError::NotFound)
        ));
        assert!(matches!(
            store.head("dir").await,
            Err(StorageError::NotFound)
        ));
        let leftovers: Vec<_> = std::fs::read_dir(root.join("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            1,
            "no temporary file is left: {leftovers:?}"
        );
    }
}
