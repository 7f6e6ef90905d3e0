//! Files and folders for secrets.
//!
//! Folders are created 0700 and files 0600 on Unix. A new file is written to
//! a temporary name in the same folder, synced, then hard-linked to its
//! final name — which fails if the name exists — and the folder is synced.
//! So after a crash the file is either absent or complete, and two processes
//! racing to create the same key cannot replace each other's.
//!
//! [`replace`] is for the rare deliberate change of such a file (a new
//! nospam, a new passphrase): the temporary file is renamed over the old one
//! instead, so after a crash the file is either the old one or the new one,
//! complete. A temporary file may be left beside it; it is never read.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Why a private file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivateFileError {
    /// The file already exists; nothing was written.
    #[error("{} already exists", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than the caller allows; it was not read.
    #[error("{}: {found} bytes is larger than the {max} allowed", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The limit.
        max: u64,
    },
    /// An I/O error.
    #[error("{}: {source}", path.display())]
    Io {
        /// What was being accessed.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl PrivateFileError {
    /// True when the file or folder does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivateFileError + '_ {
    move |source| PrivateFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` and its parents; new folders are readable by the owner
/// only.
pub fn create_dir(dir: &Path) -> Result<(), PrivateFileError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io(dir))
}

/// Makes everything under `dir` (and `dir` itself) the owner's alone:
/// folders 0700, files 0600. For folders a library fills (sled's database),
/// run after it has created its files.
pub fn restrict_tree(dir: &Path) -> Result<(), PrivateFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(folder) = stack.pop() {
            fs::set_permissions(&folder, fs::Permissions::from_mode(0o700)).map_err(io(&folder))?;
            for entry in fs::read_dir(&folder).map_err(io(&folder))? {
                let entry = entry.map_err(io(&folder))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(io(&path))?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                        .map_err(io(&path))?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Atomically creates `path` holding `bytes`, readable by the owner only;
/// fails with [`PrivateFileError::AlreadyExists`] if it exists.
pub fn create_new(path: &Path, bytes: &[u8]) -> Result<(), PrivateFileError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temp);
    let written = write_synced(&temp, bytes);
    let linked = written.and_then(|()| fs::hard_link(&temp, path).map_err(io(path)));
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => sync_dir(dir),
        Err(PrivateFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Err(PrivateFileError::AlreadyExists {
                path: path.to_owned(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Atomically replaces `path` (or creates it) with `bytes`, readable by the
/// owner only: a temporary file in the same folder is written and synced,
/// renamed over `path`, and the folder synced. If this fails the old file is
/// left as it was, or, if only the final folder sync failed, the new file
/// may already be in place.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), PrivateFileError> {
    replace_with(path, bytes, |_| Ok(()))
}

/// [`replace`], calling `before_rename` with the complete temporary file
/// just before it is renamed over `path` (tests use it to fail or stop
/// there).
fn replace_with(
    path: &Path,
    bytes: &[u8],
    before_rename: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), PrivateFileError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A random name, so neither another process nor another thread of this
    // one can be writing the same temporary file.
    let suffix: String = kith_proto::random_bytes::<8>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let temp = dir.join(format!(".{name}.{suffix}.tmp"));
    let renamed = write_synced(&temp, bytes)
        .and_then(|()| before_rename(&temp).map_err(io(&temp)))
        .and_then(|()| fs::rename(&temp, path).map_err(io(path)));
    if let Err(e) = renamed {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Atomically renames `from` over `to` (in the same folder) and syncs the
/// folder: after a crash the name holds the old file or the new one.
pub fn rename(from: &Path, to: &Path) -> Result<(), PrivateFileError> {
    fs::rename(from, to).map_err(io(to))?;
    sync_dir(to.parent().unwrap_or_else(|| Path::new(".")))
}

/// Reads a whole file of at most `max` bytes, refusing larger ones unread.
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, PrivateFileError> {
    let file = fs::File::open(path).map_err(io(path))?;
    let found = file.metadata().map_err(io(path))?.len();
    if found > max {
        return Err(PrivateFileError::TooLarge {
            path: path.to_owned(),
            found,
            max,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(found).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > max {
        return Err(PrivateFileError::TooLarge {
            path: path.to_owned(),
            found: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PrivateFileError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), PrivateFileError> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        create_new(&path, b"first").unwrap();
        assert!(matches!(
            create_new(&path, b"second"),
            Err(PrivateFileError::AlreadyExists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[cfg(unix)]
    #[test]
    fn files_and_folders_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b");
        create_dir(&dir).unwrap();
        let path = dir.join("k");
        create_new(&path, b"x").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn replace_swaps_the_whole_file_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        replace(&path, b"first").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        replace(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");

        // A failure after the new bytes are written leaves the old file and
        // no temporary.
        let failed = replace_with(&path, b"third", |temp| {
            // At this point a crash would leave the old file and a complete
            // temporary beside it.
            assert_eq!(fs::read(temp).unwrap(), b"third");
            assert_eq!(fs::read(&path).unwrap(), b"second, longer");
            Err(std::io::Error::other("injected"))
        });
        assert!(matches!(failed, Err(PrivateFileError::Io { .. })));
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[cfg(unix)]
    #[test]
    fn replace_makes_the_file_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        replace(&path, b"new").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![0u8; 100]).unwrap();
        assert_eq!(read_limited(&path, 100).unwrap().len(), 100);
        assert!(matches!(
            read_limited(&path, 99),
            Err(PrivateFileError::TooLarge {
                found: 100,
                max: 99,
                ..
            })
        ));
        assert!(
            read_limited(&dir.path().join("missing"), 1)
                .unwrap_err()
                .is_not_found()
        );
    }
}
