//! Where the ACME account and the issued certificates are kept, behind one trait: the state
//! folder for a single edge ([`FolderStore`]), etcd for a fleet (the etcd source implements
//! [`CertStore`], so every edge serves what one ordered).

use crate::state::{write_atomically, Folder};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// An issued certificate as kept: the chain and its key, as PEM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCert {
    /// The chain, leaf first.
    pub chain_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// Where an edge keeps its ACME account and certificates, and shares its challenges.
#[async_trait]
pub trait CertStore: Send + Sync {
    /// The account's credentials (as `instant-acme` serializes them), if one was made.
    async fn account(&self) -> Result<Option<Vec<u8>>, String>;

    /// Keeps the account's credentials.
    async fn put_account(&self, credentials: &[u8]) -> Result<(), String>;

    /// The certificate kept for `host`.
    async fn cert(&self, host: &str) -> Result<Option<StoredCert>, String>;

    /// Keeps the certificate of `host`, replacing the one before.
    async fn put_cert(&self, host: &str, cert: &StoredCert) -> Result<(), String>;

    /// Takes the right to order for `host` for at most `ttl` (in a fleet, one edge at a time);
    /// false if another edge holds it.
    async fn lock(&self, host: &str, ttl: Duration) -> Result<bool, String>;

    /// Gives the right back.
    async fn unlock(&self, host: &str);

    /// Publishes an HTTP-01 answer, so whichever edge the CA reaches can give it.
    async fn put_challenge(&self, token: &str, key_authorization: &str) -> Result<(), String>;

    /// Withdraws an HTTP-01 answer.
    async fn remove_challenge(&self, token: &str);

    /// The HTTP-01 answer another edge published for `token`.
    async fn challenge(&self, token: &str) -> Option<String>;
}

/// The state folder's `acme/`: `account.json` and `certs/{host}.json` (one edge: no locks, and
/// challenges stay in memory).
pub struct FolderStore {
    folder: Arc<Folder>,
}

impl FolderStore {
    /// The store in `folder`.
    pub fn new(folder: Arc<Folder>) -> FolderStore {
        FolderStore { folder }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.folder.path().join("acme").join(name)
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        if !self.folder.writes() {
            return Err(format!(
                "{} is not written by this process",
                self.folder.path().display()
            ));
        }
        let path = self.path(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        write_atomically(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[async_trait]
impl CertStore for FolderStore {
    async fn account(&self) -> Result<Option<Vec<u8>>, String> {
        self.read("account.json")
    }

    async fn put_account(&self, credentials: &[u8]) -> Result<(), String> {
        self.write("account.json", credentials)
    }

    async fn cert(&self, host: &str) -> Result<Option<StoredCert>, String> {
        let name = format!("certs/{host}.json");
        match self.read(&name)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{} is not a kept certificate: {e}", self.path(&name).display())),
        }
    }

    async fn put_cert(&self, host: &str, cert: &StoredCert) -> Result<(), String> {
        let bytes = serde_json::to_vec(cert).map_err(|e| e.to_string())?;
        self.write(&format!("certs/{host}.json"), &bytes)
    }

    async fn lock(&self, _host: &str, _ttl: Duration) -> Result<bool, String> {
        Ok(true)
    }

    async fn unlock(&self, _host: &str) {}

    async fn put_challenge(&self, _token: &str, _key_authorization: &str) -> Result<(), String> {
        Ok(())
    }

    async fn remove_challenge(&self, _token: &str) {}

    async fn challenge(&self, _token: &str) -> Option<String> {
        None
    }
}
