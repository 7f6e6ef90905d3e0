//! Where bytes live: an ordered key-value store of named trees, with atomic
//! multi-tree batches. [`SledBackend`] keeps them on disk; [`MemoryBackend`]
//! is its in-memory twin for tests and benchmarks, with the same behaviour.
//!
//! Backends see only bytes: sealing values under a passphrase happens a
//! layer up, in [`crate::Store`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` in `tree` to `value`.
    Put {
        /// The tree.
        tree: String,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` from `tree` (no error if absent).
    Delete {
        /// The tree.
        tree: String,
        /// The key.
        key: Vec<u8>,
    },
}

impl Op {
    /// A put of `value` at `key` in `tree`.
    pub fn put(tree: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            tree: tree.to_owned(),
            key: key.into(),
            value: value.into(),
        }
    }

    fn tree(&self) -> &str {
        match self {
            Op::Put { tree, .. } | Op::Delete { tree, .. } => tree,
        }
    }
}

/// Which way a range scan walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending keys.
    Forward,
    /// Descending keys.
    Reverse,
}

/// Key-value pairs returned by a range scan, in scan order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

type Trees = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A failure of the underlying storage.
#[derive(Debug, thiserror::Error)]
#[error("storage failed: {0}")]
pub struct BackendError(pub String);

/// An ordered key-value store of named trees.
pub trait Backend: Send + Sync + 'static {
    /// The value at `key` in `tree`.
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// Applies every op, all or none.
    fn apply(&self, ops: &[Op]) -> Result<(), BackendError>;

    /// Up to `limit` entries of `tree` between `from` and `to`, in
    /// `direction` order.
    fn range(
        &self,
        tree: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Entries, BackendError>;

    /// The names of the trees that hold data.
    fn trees(&self) -> Result<Vec<String>, BackendError>;

    /// Makes everything applied so far durable (survives a crash or power
    /// loss).
    fn flush(&self) -> Result<(), BackendError>;
}

fn owned(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(b) => Bound::Included(b.to_vec()),
        Bound::Excluded(b) => Bound::Excluded(b.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The in-memory twin.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    trees: Mutex<Trees>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Trees>, BackendError> {
        self.trees
            .lock()
            .map_err(|_| BackendError("memory store poisoned by a panic".into()))
    }
}

impl Backend for MemoryBackend {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.lock()?.get(tree).and_then(|t| t.get(key)).cloned())
    }

    fn apply(&self, ops: &[Op]) -> Result<(), BackendError> {
        let mut trees = self.lock()?;
        for op in ops {
            match op {
                Op::Put { tree, key, value } => {
                    trees
                        .entry(tree.clone())
                        .or_default()
                        .insert(key.clone(), value.clone());
                }
                Op::Delete { tree, key } => {
                    if let Some(t) = trees.get_mut(tree) {
                        t.remove(key);
                    }
                }
            }
        }
        Ok(())
    }

    fn range(
        &self,
        tree: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Entries, BackendError> {
        let trees = self.lock()?;
        let Some(t) = trees.get(tree) else {
            return Ok(Vec::new());
        };
        let range = t.range::<Vec<u8>, _>((owned(from), owned(to)));
        let pick = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(match direction {
            Direction::Forward => range.take(limit).map(pick).collect(),
            Direction::Reverse => range.rev().take(limit).map(pick).collect(),
        })
    }

    fn trees(&self) -> Result<Vec<String>, BackendError> {
        Ok(self
            .lock()?
            .iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// The on-disk store, in one sled database folder.
///
/// All named trees share sled's default tree, each key prefixed with its
/// tree's name (`name length (1) | name | key`): a batch touching several
/// trees is then one sled batch, atomic and far cheaper than sled's
/// multi-tree transactions. Tree names are at most 255 bytes.
pub struct SledBackend {
    db: sled::Db,
}

impl std::fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledBackend").finish_non_exhaustive()
    }
}

fn sled_error(e: impl std::fmt::Display) -> BackendError {
    BackendError(e.to_string())
}

/// `name length | name`, the prefix of every key of tree `name`.
fn tree_prefix(name: &str) -> Result<Vec<u8>, BackendError> {
    let len = u8::try_from(name.len())
        .map_err(|_| BackendError(format!("tree name of {} bytes is too long", name.len())))?;
    let mut prefix = Vec::with_capacity(1 + name.len());
    prefix.push(len);
    prefix.extend_from_slice(name.as_bytes());
    Ok(prefix)
}

fn prefixed(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(key);
    out
}

/// The smallest key above every key that starts with `prefix`, or `None`
/// when the prefix is all 0xff (nothing sorts above it): the exclusive end
/// of a prefix scan.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        crate::private::create_dir(dir).map_err(sled_error)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(sled_error)?;
        // sled creates its files world-readable; the values may be
        // unsealed (no passphrase), so keep them the owner's.
        crate::private::restrict_tree(dir).map_err(sled_error)?;
        Ok(Self { db })
    }
}

impl Backend for SledBackend {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        let key = prefixed(&tree_prefix(tree)?, key);
        Ok(self.db.get(key).map_err(sled_error)?.map(|v| v.to_vec()))
    }

    fn apply(&self, ops: &[Op]) -> Result<(), BackendError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for op in ops {
            let prefix = tree_prefix(op.tree())?;
            match op {
                Op::Put { key, value, .. } => {
                    batch.insert(prefixed(&prefix, key), value.as_slice())
                }
                Op::Delete { key, .. } => batch.remove(prefixed(&prefix, key)),
            }
        }
        self.db.apply_batch(batch).map_err(sled_error)
    }

    fn range(
        &self,
        tree: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Entries, BackendError> {
        let prefix = tree_prefix(tree)?;
        let lower = match from {
            Bound::Included(k) => Bound::Included(prefixed(&prefix, k)),
            Bound::Excluded(k) => Bound::Excluded(prefixed(&prefix, k)),
            Bound::Unbounded => Bound::Included(prefix.clone()),
        };
        let upper = match (to, prefix_successor(&prefix)) {
            (Bound::Included(k), _) => Bound::Included(prefixed(&prefix, k)),
            (Bound::Excluded(k), _) => Bound::Excluded(prefixed(&prefix, k)),
            (Bound::Unbounded, Some(end)) => Bound::Excluded(end),
            (Bound::Unbounded, None) => Bound::Unbounded,
        };
        let range = self.db.range::<Vec<u8>, _>((lower, upper));
        let strip = prefix.len();
        let pick = |item: sled::Result<(sled::IVec, sled::IVec)>| {
            item.map(|(k, v)| (k.get(strip..).unwrap_or_default().to_vec(), v.to_vec()))
                .map_err(sled_error)
        };
        match direction {
            Direction::Forward => range.take(limit).map(pick).collect(),
            Direction::Reverse => range.rev().take(limit).map(pick).collect(),
        }
    }

    fn trees(&self) -> Result<Vec<String>, BackendError> {
        // Jump from one tree's prefix to the next.
        let mut out = Vec::new();
        let mut cursor: Vec<u8> = Vec::new();
        loop {
            let Some((key, _)) = self
                .db
                .range::<Vec<u8>, _>(cursor.clone()..)
                .next()
                .transpose()
                .map_err(sled_error)?
            else {
                break;
            };
            let len = usize::from(key.first().copied().unwrap_or(0));
            let Some(name) = key.get(1..1 + len) else {
                return Err(BackendError("a key without a tree name".into()));
            };
            out.push(String::from_utf8_lossy(name).into_owned());
            match prefix_successor(&key[..1 + len]) {
                Some(next) => cursor = next,
                None => break,
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.db.flush().map(|_| ()).map_err(sled_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(tree: &str, key: &[u8], value: &[u8]) -> Op {
        Op::put(tree, key, value)
    }

    /// The same script against both backends must give the same answers.
    fn exercise(backend: &dyn Backend) {
        // An empty batch is a no-op (sled itself panics on one).
        backend.apply(&[]).unwrap();

        backend
            .apply(&[
                put("a", b"k1", b"v1"),
                put("a", b"k3", b"v3"),
                put("b", b"x", b"y"),
            ])
            .unwrap();
        backend
            .apply(&[
                put("a", b"k2", b"v2"),
                Op::Delete {
                    tree: "b".into(),
                    key: b"x".to_vec(),
                },
            ])
            .unwrap();
        assert_eq!(backend.get("a", b"k2").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(backend.get("b", b"x").unwrap(), None);
        assert_eq!(backend.get("nope", b"x").unwrap(), None);
        let forward = backend
            .range(
                "a",
                Bound::Unbounded,
                Bound::Unbounded,
                Direction::Forward,
                2,
            )
            .unwrap();
        assert_eq!(
            forward,
            vec![
                (b"k1".to_vec(), b"v1".to_vec()),
                (b"k2".to_vec(), b"v2".to_vec())
            ]
        );
        let reverse = backend
            .range(
                "a",
                Bound::Unbounded,
                Bound::Excluded(b"k3"),
                Direction::Reverse,
                10,
            )
            .unwrap();
        assert_eq!(
            reverse
                .iter()
                .map(|(k, _)| k.as_slice())
                .collect::<Vec<_>>(),
            [b"k2", b"k1"]
        );
        assert_eq!(backend.trees().unwrap(), vec!["a".to_owned()]);

        // A tree whose name extends another's, with keys that sort around
        // it, stays apart from it in every direction.
        backend
            .apply(&[
                put("ab", b"", b"e"),
                put("ab", b"k0", b"z"),
                put("a\u{ff}", b"\xff", b"w"),
            ])
            .unwrap();
        for direction in [Direction::Forward, Direction::Reverse] {
            let all = backend
                .range("a", Bound::Unbounded, Bound::Unbounded, direction, 100)
                .unwrap();
            assert_eq!(all.len(), 3, "{direction:?}");
        }
        assert_eq!(
            backend
                .range(
                    "ab",
                    Bound::Unbounded,
                    Bound::Unbounded,
                    Direction::Forward,
                    100
                )
                .unwrap(),
            vec![(Vec::new(), b"e".to_vec()), (b"k0".to_vec(), b"z".to_vec())]
        );
        let mut trees = backend.trees().unwrap();
        trees.sort();
        assert_eq!(trees, ["a", "ab", "a\u{ff}"]);
        backend.flush().unwrap();
    }

    #[test]
    fn memory_backend_behaves() {
        exercise(&MemoryBackend::new());
    }

    #[cfg(unix)]
    #[test]
    fn sled_files_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let backend = SledBackend::open(&db).unwrap();
        backend.apply(&[put("a", b"k", b"v")]).unwrap();
        backend.flush().unwrap();
        let mut stack = vec![db];
        let mut files = 0;
        while let Some(folder) = stack.pop() {
            let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", folder.display());
            for entry in std::fs::read_dir(&folder).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                } else {
                    files += 1;
                    let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
                    assert_eq!(mode, 0o600, "{}", entry.path().display());
                }
            }
        }
        assert!(files > 0);
    }

    #[test]
    fn sled_backend_behaves_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let sled = SledBackend::open(&dir.path().join("db")).unwrap();
            exercise(&sled);
        }
        let again = SledBackend::open(&dir.path().join("db")).unwrap();
        assert_eq!(again.get("a", b"k3").unwrap(), Some(b"v3".to_vec()));
    }
}
