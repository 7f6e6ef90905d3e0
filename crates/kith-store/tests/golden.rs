//! Golden fixtures: identity files committed under `tests/fixtures/` that
//! this build must still read.
//!
//! A failure here means the identity file format changed. If that was
//! intended, bump the format's version, keep reading the old one, and
//! regenerate with `KITH_BLESS_FIXTURES=1 cargo test -p kith-store --test golden`.

use std::path::PathBuf;

use kith_store::profile::{Identity, Profile, ProfileError};
use kith_store::{KdfParams, Passphrase};

/// The passphrase `identity-v2.hex` is sealed with (`KdfParams::TESTING`).
const PASSPHRASE: &str = "correct horse battery staple";

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> String {
    let path = fixture_path(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim_end()
        .to_owned()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// What the fixtures hold: Kith ID and device peer ID, one per line.
fn describe(identity: &Identity) -> String {
    format!("{}\n{}", identity.kith_id(), identity.device.peer_id())
}

/// A profile in `base` whose identity file holds `bytes`.
fn profile_with(base: &tempfile::TempDir, name: &str, bytes: &[u8]) -> Profile {
    let profile = Profile::in_base(base.path(), name).unwrap();
    std::fs::create_dir_all(profile.dir()).unwrap();
    std::fs::write(profile.dir().join("identity.key"), bytes).unwrap();
    profile
}

fn identity_bytes(profile: &Profile) -> Vec<u8> {
    std::fs::read(profile.dir().join("identity.key")).unwrap()
}

/// Writes fresh fixtures: one identity, in the clear and sealed.
fn bless() {
    let base = tempfile::tempdir().unwrap();
    let identity = Identity::generate();
    let plain = Profile::in_base(base.path(), "plain").unwrap();
    plain.create_identity(&identity, None).unwrap();
    let sealed = Profile::in_base(base.path(), "sealed").unwrap();
    let pass = Passphrase::new(PASSPHRASE);
    sealed
        .create_identity(&identity, Some((&pass, KdfParams::TESTING)))
        .unwrap();
    let write = |name: &str, text: String| {
        std::fs::write(fixture_path(name), format!("{text}\n")).unwrap();
    };
    write("identity-v1.hex", to_hex(&identity_bytes(&plain)));
    write("identity-v2.hex", to_hex(&identity_bytes(&sealed)));
    write("identity.txt", describe(&identity));
}

#[test]
fn identity_files_v1_and_v2_still_load() {
    if std::env::var_os("KITH_BLESS_FIXTURES").is_some() {
        bless();
    }
    let expected = read_fixture("identity.txt");
    let base = tempfile::tempdir().unwrap();

    let v1 = from_hex(&read_fixture("identity-v1.hex"));
    let plain = profile_with(&base, "plain", &v1);
    assert!(!plain.is_locked().unwrap());
    let identity = plain.load_identity(None).unwrap();
    assert_eq!(describe(&identity), expected);
    // Format 1 is still what an identity without a passphrase is written
    // as, byte for byte.
    let again = Profile::in_base(base.path(), "again").unwrap();
    again.create_identity(&identity, None).unwrap();
    assert_eq!(identity_bytes(&again), v1);

    let v2 = from_hex(&read_fixture("identity-v2.hex"));
    let sealed = profile_with(&base, "sealed", &v2);
    assert!(sealed.is_locked().unwrap());
    assert!(matches!(
        sealed.load_identity(None),
        Err(ProfileError::Locked { .. })
    ));
    assert!(matches!(
        sealed.load_identity(Some(&Passphrase::new("wrong"))),
        Err(ProfileError::WrongPassphrase { .. })
    ));
    let opened = sealed
        .load_identity(Some(&Passphrase::new(PASSPHRASE)))
        .unwrap();
    assert_eq!(describe(&opened), expected);
    assert_eq!(
        *opened.account.secret_bytes(),
        *identity.account.secret_bytes()
    );
    assert_eq!(identity_bytes(&sealed), v2, "loading changed the file");
}
