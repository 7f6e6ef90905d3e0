//! What the store reads back from disk (`kith_store`, `docs/storage.md`):
//! the identity file through `Profile::load_identity` and
//! `Profile::is_locked`, and the `kith-meta` records (`lock`, `schema`,
//! `id-secret`) through `Store::open` on an in-memory backend.
//!
//! A damaged file or record must come back as a typed error, never a
//! panic. No passphrase is given, so a sealed identity or a locked store
//! stops before Argon2 (whose cost the file names, within bounds) and each
//! run stays quick. An identity that loads yields its Kith ID.

#![no_main]

use std::sync::{Arc, OnceLock};

use kith_store::profile::Profile;
use kith_store::store::META_TREE;
use kith_store::{MemoryBackend, Op, Store};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static tempfile::TempDir {
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    BASE.get_or_init(|| tempfile::tempdir().expect("a temporary folder"))
}

fuzz_target!(|data: &[u8]| {
    let profile = Profile::in_base(base().path(), "fuzz").expect("a valid profile name");
    std::fs::create_dir_all(profile.dir()).expect("the profile folder");
    std::fs::write(profile.dir().join("identity.key"), data).expect("the identity file");
    if let Ok(identity) = profile.load_identity(None) {
        let _ = identity.kith_id();
    }
    let _ = profile.is_locked();

    for key in [&b"lock"[..], b"schema", b"id-secret"] {
        let backend = Arc::new(MemoryBackend::new());
        kith_store::Backend::apply(&*backend, &[Op::put(META_TREE, key, data)])
            .expect("memory backend");
        let _ = Store::open(backend, None, 1, &[]);
    }
});
