//! The store the engine uses: a [`Backend`] plus a schema version with
//! migrations, and an optional passphrase lock.
//!
//! **Schema**: the `kith-meta` tree holds `schema` (u32, big-endian). Opening
//! a store written by an older schema runs each [`Migration`] from that
//! version up, in one batch each; a store from a newer Kith is refused
//! untouched.
//!
//! **Lock**: with a passphrase, a 32-byte key is derived with Argon2id (salt
//! and cost parameters kept in `kith-meta/lock`, with a sealed verifier so a
//! wrong passphrase is recognised without touching anything). Every value
//! outside `kith-meta` is then sealed with XChaCha20-Poly1305 under a random
//! nonce, with the tree name and key as associated data, so values cannot be
//! swapped between keys. Keys stay in the clear (they must sort); the engine
//! builds them from [`Store::opaque_id`] rather than from account keys.
//! Values start with a tag byte: `0` plain, `1` sealed.

use std::ops::Bound;
use std::sync::Arc;

use hmac::digest::KeyInit as MacKeyInit;
use hmac::{Hmac, Mac};
use kith_proto::random_bytes;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::backend::{Backend, BackendError, Direction, Entries, Op};
use crate::seal::{Cipher, DeriveError, NONCE_LEN, SALT_LEN, TAG_LEN};
pub use crate::seal::{KdfParams, MAX_PASSPHRASE_BYTES, Passphrase};

/// The tree that holds the schema version and the lock record.
pub const META_TREE: &str = "kith-meta";
const SCHEMA_KEY: &[u8] = b"schema";
const LOCK_KEY: &[u8] = b"lock";
const ID_SECRET_KEY: &[u8] = b"id-secret";
const VERIFIER: &[u8] = b"kith store passphrase verifier v1";
const TAG_PLAIN: u8 = 0;
const TAG_SEALED: u8 = 1;
/// A step from one schema version to the next.
pub struct Migration {
    /// The version it upgrades from (to `from + 1`).
    pub from: u32,
    /// Returns the ops that perform the upgrade, reading through the store.
    pub run: fn(&Store) -> Result<Vec<Op>, StoreError>,
}

/// Why a store could not be opened. Nothing on disk changes in any of these
/// cases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The storage itself failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The store is locked and no passphrase was given.
    #[error("this profile is locked with a passphrase")]
    Locked,
    /// The passphrase does not open the store.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The passphrase is too long.
    #[error("the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes")]
    PassphraseTooLong,
    /// The store was written by a newer Kith.
    #[error(
        "this profile was written by a newer Kith (schema {found}; this one knows {supported}): update Kith"
    )]
    NewerSchema {
        /// The store's schema.
        found: u32,
        /// The newest this build knows.
        supported: u32,
    },
    /// No migration is known from an older schema.
    #[error("no migration from schema {from}")]
    NoMigration {
        /// The version with no way forward.
        from: u32,
    },
    /// A migration failed.
    #[error("upgrading the profile from schema {from} failed: {source}")]
    Migration {
        /// The version it started from.
        from: u32,
        /// Why.
        source: Box<StoreError>,
    },
    /// The meta records are damaged.
    #[error("the profile's store is damaged: {0}")]
    Corrupt(String),
}

/// Why a read or write failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage itself failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A sealed value did not open: damaged, or moved from another key.
    #[error("a stored value in {tree} is damaged")]
    Damaged {
        /// The tree.
        tree: String,
    },
    /// A write to the reserved meta tree.
    #[error("the {META_TREE} tree is reserved")]
    Reserved,
}

#[derive(Serialize, Deserialize)]
struct LockRecord {
    salt: [u8; SALT_LEN],
    params: KdfParams,
    nonce: [u8; NONCE_LEN],
    verifier: Vec<u8>,
}

fn derive(
    passphrase: &Passphrase,
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Result<Cipher, OpenError> {
    Cipher::derive(passphrase, salt, params).map_err(|e| match e {
        DeriveError::PassphraseTooLong => OpenError::PassphraseTooLong,
        DeriveError::Params(e) => OpenError::Corrupt(format!("argon2 parameters: {e}")),
        DeriveError::Argon2(e) => OpenError::Corrupt(format!("argon2: {e}")),
    })
}

fn schema_op(version: u32) -> Op {
    Op::put(META_TREE, SCHEMA_KEY, version.to_be_bytes())
}

fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tree.len() + 1 + key.len());
    out.extend_from_slice(tree.as_bytes());
    out.push(0);
    out.extend_from_slice(key);
    out
}

/// A profile's store.
pub struct Store {
    backend: Arc<dyn Backend>,
    cipher: Option<Cipher>,
    id_secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("locked", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store at schema `schema`, running `migrations` from older
    /// versions; `passphrase` must be given if and only if it is locked.
    /// A new, empty store is initialised at `schema`, unlocked.
    pub fn open(
        backend: Arc<dyn Backend>,
        passphrase: Option<&Passphrase>,
        schema: u32,
        migrations: &[Migration],
    ) -> Result<Self, OpenError> {
        let cipher = match backend.get(META_TREE, LOCK_KEY)? {
            None => None,
            Some(bytes) => {
                let lock: LockRecord = postcard::from_bytes(&bytes)
                    .map_err(|e| OpenError::Corrupt(format!("lock record: {e}")))?;
                let passphrase = passphrase.ok_or(OpenError::Locked)?;
                let cipher = derive(passphrase, &lock.salt, lock.params)?;
                match cipher.open(&lock.nonce, &aad(META_TREE, LOCK_KEY), &lock.verifier) {
                    Some(v) if v == VERIFIER => Some(cipher),
                    _ => return Err(OpenError::WrongPassphrase),
                }
            }
        };
        let found = match backend.get(META_TREE, SCHEMA_KEY)? {
            None => None,
            Some(bytes) => Some(u32::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| OpenError::Corrupt("schema version".into()))?,
            )),
        };
        let mut fresh_ops = Vec::new();
        let id_secret = match backend.get(META_TREE, ID_SECRET_KEY)? {
            Some(bytes) => {
                let plain = match &cipher {
                    Some(c) => bytes
                        .split_first()
                        .filter(|(tag, _)| **tag == TAG_SEALED)
                        .and_then(|(_, b)| c.open_random(&aad(META_TREE, ID_SECRET_KEY), b)),
                    None => bytes
                        .split_first()
                        .filter(|(tag, _)| **tag == TAG_PLAIN)
                        .map(|(_, b)| b.to_vec()),
                }
                .ok_or_else(|| OpenError::Corrupt("id secret".into()))?;
                let mut secret = Zeroizing::new([0u8; 32]);
                if plain.len() != 32 {
                    return Err(OpenError::Corrupt("id secret length".into()));
                }
                secret.copy_from_slice(&plain);
                secret
            }
            None => {
                let secret = Zeroizing::new(random_bytes::<32>());
                let mut value = vec![TAG_PLAIN];
                value.extend_from_slice(secret.as_slice());
                fresh_ops.push(Op::Put {
                    tree: META_TREE.into(),
                    key: ID_SECRET_KEY.to_vec(),
                    value,
                });
                secret
            }
        };
        let store = Self {
            backend,
            cipher,
            id_secret,
        };
        match found {
            None => {
                fresh_ops.push(schema_op(schema));
                store.backend.apply(&fresh_ops)?;
                store.backend.flush()?;
            }
            Some(found) if found > schema => {
                return Err(OpenError::NewerSchema {
                    found,
                    supported: schema,
                });
            }
            Some(mut version) => {
                while version < schema {
                    let step = migrations
                        .iter()
                        .find(|m| m.from == version)
                        .ok_or(OpenError::NoMigration { from: version })?;
                    let mut ops = (step.run)(&store).map_err(|e| OpenError::Migration {
                        from: version,
                        source: Box::new(e),
                    })?;
                    let ops = store.seal_ops(std::mem::take(&mut ops));
                    let mut ops = ops.map_err(|e| OpenError::Migration {
                        from: version,
                        source: Box::new(e),
                    })?;
                    version += 1;
                    ops.push(schema_op(version));
                    store.backend.apply(&ops)?;
                    store.backend.flush()?;
                }
            }
        }
        Ok(store)
    }

    /// Whether a passphrase protects the values.
    pub fn is_locked(&self) -> bool {
        self.cipher.is_some()
    }

    /// A 16-byte identifier for `data` in `domain`, stable for this store
    /// and meaningless outside it: build keys from this instead of from
    /// account keys or other names.
    pub fn opaque_id(&self, domain: &str, data: &[u8]) -> [u8; 16] {
        #[allow(clippy::expect_used)]
        let mut mac = <Hmac<Sha256> as MacKeyInit>::new_from_slice(self.id_secret.as_slice())
            .expect("HMAC takes keys of any length");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    fn seal_value(&self, tree: &str, key: &[u8], value: &[u8]) -> Vec<u8> {
        match &self.cipher {
            Some(cipher) => {
                let sealed = cipher.seal_random(&aad(tree, key), value);
                let mut out = Vec::with_capacity(1 + NONCE_LEN + value.len() + TAG_LEN);
                out.push(TAG_SEALED);
                // Encryption of an in-memory buffer cannot fail for these sizes.
                out.extend_from_slice(&sealed.unwrap_or_default());
                out
            }
            None => {
                let mut out = Vec::with_capacity(1 + value.len());
                out.push(TAG_PLAIN);
                out.extend_from_slice(value);
                out
            }
        }
    }

    fn open_value(&self, tree: &str, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let damaged = || StoreError::Damaged { tree: tree.into() };
        let (&tag, body) = stored.split_first().ok_or_else(damaged)?;
        match (tag, &self.cipher) {
            (TAG_PLAIN, None) => Ok(body.to_vec()),
            (TAG_SEALED, Some(cipher)) => cipher
                .open_random(&aad(tree, key), body)
                .ok_or_else(damaged),
            _ => Err(damaged()),
        }
    }

    fn seal_ops(&self, ops: Vec<Op>) -> Result<Vec<Op>, StoreError> {
        ops.into_iter()
            .map(|op| match op {
                Op::Put { tree, .. } | Op::Delete { tree, .. } if tree == META_TREE => {
                    Err(StoreError::Reserved)
                }
                Op::Put { tree, key, value } => {
                    let value = self.seal_value(&tree, &key, &value);
                    Ok(Op::Put { tree, key, value })
                }
                delete => Ok(delete),
            })
            .collect()
    }

    /// The value at `key` in `tree`.
    pub fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.backend.get(tree, key)? {
            Some(stored) => self.open_value(tree, key, &stored).map(Some),
            None => Ok(None),
        }
    }

    /// Applies `ops` atomically (not yet durable: see [`Self::flush`]).
    pub fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let ops = self.seal_ops(ops)?;
        self.backend.apply(&ops)?;
        Ok(())
    }

    /// Applies `ops` atomically and makes them durable before returning.
    pub fn apply_durable(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.apply(ops)?;
        self.flush()
    }

    /// Makes everything applied so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        Ok(self.backend.flush()?)
    }

    /// Up to `limit` entries of `tree` between the bounds, in `direction`.
    pub fn range(
        &self,
        tree: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.backend
            .range(tree, from, to, direction, limit)?
            .into_iter()
            .map(|(k, v)| {
                let v = self.open_value(tree, &k, &v)?;
                Ok((k, v))
            })
            .collect()
    }

    /// Locks the store with `passphrase` (or changes it), or unlocks it
    /// with `None`: every value is re-written under the new key in one
    /// atomic batch, then made durable. On failure nothing changes.
    pub fn set_passphrase(
        &mut self,
        passphrase: Option<&Passphrase>,
        params: KdfParams,
    ) -> Result<(), OpenError> {
        let mut entries = Vec::new();
        for tree in self.backend.trees()? {
            if tree == META_TREE {
                continue;
            }
            let all = self
                .range(
                    &tree,
                    Bound::Unbounded,
                    Bound::Unbounded,
                    Direction::Forward,
                    usize::MAX,
                )
                .map_err(|e| OpenError::Corrupt(e.to_string()))?;
            for (key, value) in all {
                entries.push((tree.clone(), key, Zeroizing::new(value)));
            }
        }
        let (cipher, lock) = match passphrase {
            Some(passphrase) => {
                let salt = random_bytes::<SALT_LEN>();
                let cipher = derive(passphrase, &salt, params)?;
                let nonce = random_bytes::<NONCE_LEN>();
                let verifier = cipher
                    .seal(&nonce, &aad(META_TREE, LOCK_KEY), VERIFIER)
                    .ok_or_else(|| OpenError::Corrupt("sealing the verifier failed".into()))?;
                let record = LockRecord {
                    salt,
                    params,
                    nonce,
                    verifier,
                };
                let bytes = postcard::to_allocvec(&record)
                    .map_err(|e| OpenError::Corrupt(e.to_string()))?;
                (Some(cipher), Some(bytes))
            }
            None => (None, None),
        };
        let previous = std::mem::replace(&mut self.cipher, cipher);
        let mut batch: Vec<Op> = entries
            .iter()
            .map(|(tree, key, value)| Op::Put {
                tree: tree.clone(),
                key: key.clone(),
                value: self.seal_value(tree, key, value),
            })
            .collect();
        batch.push(Op::Put {
            tree: META_TREE.into(),
            key: ID_SECRET_KEY.to_vec(),
            value: self.seal_value(META_TREE, ID_SECRET_KEY, self.id_secret.as_slice()),
        });
        batch.push(match lock {
            Some(value) => Op::Put {
                tree: META_TREE.into(),
                key: LOCK_KEY.to_vec(),
                value,
            },
            None => Op::Delete {
                tree: META_TREE.into(),
                key: LOCK_KEY.to_vec(),
            },
        });
        if let Err(e) = self
            .backend
            .apply(&batch)
            .and_then(|()| self.backend.flush())
        {
            self.cipher = previous;
            return Err(e.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{MemoryBackend, SledBackend};

    fn put(tree: &str, key: &[u8], value: &[u8]) -> Op {
        Op::put(tree, key, value)
    }

    /// Every raw byte the backend holds, for before/after comparisons.
    fn snapshot(backend: &dyn Backend) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let mut trees = backend.trees().unwrap();
        trees.push(META_TREE.into());
        trees.sort();
        trees.dedup();
        for tree in trees {
            for (k, v) in backend
                .range(
                    &tree,
                    Bound::Unbounded,
                    Bound::Unbounded,
                    Direction::Forward,
                    usize::MAX,
                )
                .unwrap()
            {
                out.push((tree.clone(), k, v));
            }
        }
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn values_round_trip_and_persist_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let backend = Arc::new(SledBackend::open(&path).unwrap());
            let store = Store::open(backend, None, 1, &[]).unwrap();
            store
                .apply_durable(vec![put("history", b"k", b"hello")])
                .unwrap();
        }
        let backend = Arc::new(SledBackend::open(&path).unwrap());
        let store = Store::open(backend, None, 1, &[]).unwrap();
        assert_eq!(store.get("history", b"k").unwrap(), Some(b"hello".to_vec()));
        assert!(!store.is_locked());
    }

    #[test]
    fn a_passphrase_seals_every_value_and_a_wrong_one_changes_nothing() {
        let backend = Arc::new(MemoryBackend::new());
        let mut store = Store::open(backend.clone(), None, 1, &[]).unwrap();
        store
            .apply(vec![put("history", b"m1", b"meet at the station at noon")])
            .unwrap();
        let pass = Passphrase::new("correct horse battery staple");
        store
            .set_passphrase(Some(&pass), KdfParams::TESTING)
            .unwrap();
        for (_, _, value) in snapshot(backend.as_ref()) {
            assert!(!contains(&value, b"station"), "plaintext left on disk");
        }
        assert_eq!(
            store.get("history", b"m1").unwrap(),
            Some(b"meet at the station at noon".to_vec())
        );
        let id = store.opaque_id("friend", b"bob");
        drop(store);

        let before = snapshot(backend.as_ref());
        assert!(matches!(
            Store::open(backend.clone(), None, 1, &[]),
            Err(OpenError::Locked)
        ));
        assert!(matches!(
            Store::open(backend.clone(), Some(&Passphrase::new("wrong")), 1, &[]),
            Err(OpenError::WrongPassphrase)
        ));
        assert!(matches!(
            Store::open(
                backend.clone(),
                Some(&Passphrase::new("x".repeat(2000))),
                1,
                &[]
            ),
            Err(OpenError::PassphraseTooLong)
        ));
        assert_eq!(
            snapshot(backend.as_ref()),
            before,
            "a failed open changed the store"
        );

        let mut store = Store::open(backend.clone(), Some(&pass), 1, &[]).unwrap();
        assert!(store.is_locked());
        assert_eq!(store.opaque_id("friend", b"bob"), id, "ids survive locking");
        store.set_passphrase(None, KdfParams::TESTING).unwrap();
        drop(store);
        let store = Store::open(backend, None, 1, &[]).unwrap();
        assert_eq!(
            store.get("history", b"m1").unwrap(),
            Some(b"meet at the station at noon".to_vec())
        );
    }

    #[test]
    fn sealed_values_cannot_be_moved_between_keys() {
        let backend = Arc::new(MemoryBackend::new());
        let mut store = Store::open(backend.clone(), None, 1, &[]).unwrap();
        store
            .set_passphrase(Some(&Passphrase::new("p")), KdfParams::TESTING)
            .unwrap();
        store
            .apply(vec![put("t", b"a", b"one"), put("t", b"b", b"two")])
            .unwrap();
        let a = backend.get("t", b"a").unwrap().unwrap();
        backend.apply(&[put("t", b"b", &a)]).unwrap();
        assert!(matches!(
            store.get("t", b"b"),
            Err(StoreError::Damaged { .. })
        ));
        assert_eq!(store.get("t", b"a").unwrap(), Some(b"one".to_vec()));
    }

    #[test]
    fn schema_migrations_run_in_order_and_newer_stores_are_refused() {
        let backend = Arc::new(MemoryBackend::new());
        let store = Store::open(backend.clone(), None, 1, &[]).unwrap();
        store.apply(vec![put("names", b"1", b"alice")]).unwrap();
        drop(store);

        fn upper(store: &Store) -> Result<Vec<Op>, StoreError> {
            let old = store.get("names", b"1")?.unwrap_or_default();
            Ok(vec![put("names", b"1", &old.to_ascii_uppercase())])
        }
        fn suffix(store: &Store) -> Result<Vec<Op>, StoreError> {
            let mut old = store.get("names", b"1")?.unwrap_or_default();
            old.extend_from_slice(b"!");
            Ok(vec![put("names", b"1", &old)])
        }
        let migrations = [
            Migration {
                from: 2,
                run: suffix,
            },
            Migration {
                from: 1,
                run: upper,
            },
        ];
        let store = Store::open(backend.clone(), None, 3, &migrations).unwrap();
        assert_eq!(store.get("names", b"1").unwrap(), Some(b"ALICE!".to_vec()));
        drop(store);

        let before = snapshot(backend.as_ref());
        assert!(matches!(
            Store::open(backend.clone(), None, 2, &[]),
            Err(OpenError::NewerSchema {
                found: 3,
                supported: 2
            })
        ));
        assert!(matches!(
            Store::open(backend.clone(), None, 5, &[]),
            Err(OpenError::NoMigration { from: 3 })
        ));
        assert_eq!(snapshot(backend.as_ref()), before);
    }

    #[test]
    fn the_meta_tree_is_reserved_and_ids_are_per_domain() {
        let store = Store::open(Arc::new(MemoryBackend::new()), None, 1, &[]).unwrap();
        assert!(matches!(
            store.apply(vec![put(META_TREE, b"schema", b"x")]),
            Err(StoreError::Reserved)
        ));
        assert_ne!(store.opaque_id("a", b"x"), store.opaque_id("b", b"x"));
        let other = Store::open(Arc::new(MemoryBackend::new()), None, 1, &[]).unwrap();
        assert_ne!(store.opaque_id("a", b"x"), other.opaque_id("a", b"x"));
    }
}
