//! Runs the real `kith` binary in a fresh `KITH_HOME`, as a user would.

use std::path::Path;
use std::process::{Command, Output};

fn kith(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kith"))
        .args(args)
        .env("KITH_HOME", home)
        .output()
        .expect("run kith")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn new_then_show_prints_the_same_id_across_runs() {
    let home = tempfile::tempdir().unwrap();
    let created = kith(home.path(), &["id", "new"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let first = kith(home.path(), &["id", "show"]);
    let second = kith(home.path(), &["id", "show"]);
    assert!(first.status.success());
    let id = stdout(&first).trim().to_owned();
    assert_eq!(id.len(), 63);
    assert_eq!(stdout(&second).trim(), id);
    assert!(stdout(&created).contains(&id));
}

#[test]
fn show_without_an_identity_says_how_to_make_one() {
    let home = tempfile::tempdir().unwrap();
    let output = kith(home.path(), &["id", "show"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("kith id new"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_second_new_keeps_the_first_identity() {
    let home = tempfile::tempdir().unwrap();
    assert!(kith(home.path(), &["id", "new"]).status.success());
    let id = stdout(&kith(home.path(), &["id", "show"]));
    let again = kith(home.path(), &["id", "new"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already has an identity"));
    assert_eq!(stdout(&kith(home.path(), &["id", "show"])), id);
}

#[test]
fn profiles_are_separate() {
    let home = tempfile::tempdir().unwrap();
    assert!(
        kith(home.path(), &["--profile", "alice", "id", "new"])
            .status
            .success()
    );
    assert!(
        kith(home.path(), &["--profile", "bob", "id", "new"])
            .status
            .success()
    );
    let alice = stdout(&kith(home.path(), &["--profile", "alice", "id", "show"]));
    let bob = stdout(&kith(home.path(), &["--profile", "bob", "id", "show"]));
    assert_ne!(alice, bob);
    assert!(home.path().join("profiles/alice/identity.key").exists());
}

#[test]
fn check_accepts_a_valid_id_and_prints_its_account_key() {
    let home = tempfile::tempdir().unwrap();
    let created = kith(home.path(), &["--json", "id", "new"]);
    let json: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = json["id"].as_str().unwrap();
    let key = json["account_key"].as_str().unwrap();

    let checked = kith(home.path(), &["id", "check", id]);
    assert!(checked.status.success());
    assert!(stdout(&checked).contains(key));

    let link = format!("kith:{}", id.to_lowercase());
    assert!(kith(home.path(), &["id", "check", &link]).status.success());
}

#[test]
fn check_reports_a_typo_as_a_checksum_error() {
    let home = tempfile::tempdir().unwrap();
    assert!(kith(home.path(), &["id", "new"]).status.success());
    let id = stdout(&kith(home.path(), &["id", "show"]))
        .trim()
        .to_owned();
    let mut typo: Vec<char> = id.chars().collect();
    typo[20] = if typo[20] == 'Z' { 'Y' } else { 'Z' };
    let typo: String = typo.into_iter().collect();

    let checked = kith(home.path(), &["id", "check", &typo]);
    assert_eq!(checked.status.code(), Some(1));
    assert!(stdout(&checked).is_empty());
    let message = stderr(&checked);
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(message.contains("typo"), "{message}");
}

#[test]
fn check_names_the_other_mistakes() {
    let home = tempfile::tempdir().unwrap();
    let short = kith(home.path(), &["id", "check", "04ABC"]);
    assert!(!short.status.success());
    assert!(
        stderr(&short).contains("63 characters"),
        "{}",
        stderr(&short)
    );
    let bad_char = kith(
        home.path(),
        &[
            "id",
            "check",
            "04ABC!DEFGHJKMNPQRSTVWXYZ0123456789ABCDEFGHJKMNPQRSTVWXYZ012345",
        ],
    );
    assert!(stderr(&bad_char).contains("'!'"), "{}", stderr(&bad_char));
}

#[test]
fn qr_png_written_by_show_reads_back_with_check() {
    let home = tempfile::tempdir().unwrap();
    assert!(kith(home.path(), &["id", "new"]).status.success());
    let png = home.path().join("me.png");
    let svg = home.path().join("me.svg");
    let shown = kith(
        home.path(),
        &[
            "id",
            "show",
            "--qr",
            "--png",
            png.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
    );
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = stdout(&shown);
    assert!(text.contains('█'), "terminal QR missing");
    let id = stdout(&kith(home.path(), &["id", "show"]))
        .trim()
        .to_owned();
    assert!(text.contains(&format!("kith:{id}")));
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));

    let checked = kith(
        home.path(),
        &["--json", "id", "check", "--image", png.to_str().unwrap()],
    );
    assert!(checked.status.success(), "{}", stderr(&checked));
    let json: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["valid"], true);

    let not_image = kith(
        home.path(),
        &["id", "check", "--image", svg.to_str().unwrap()],
    );
    assert!(!not_image.status.success());
    assert!(
        stderr(&not_image).contains("not a PNG or JPEG"),
        "{}",
        stderr(&not_image)
    );
}

#[test]
fn a_damaged_identity_file_is_reported_and_left_alone() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("profiles/default");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("identity.key"), b"garbage").unwrap();
    let shown = kith(home.path(), &["id", "show"]);
    assert!(!shown.status.success());
    assert!(
        stderr(&shown).contains("not a valid Kith identity file"),
        "{}",
        stderr(&shown)
    );
    let created = kith(home.path(), &["id", "new"]);
    assert!(!created.status.success());
    assert_eq!(std::fs::read(dir.join("identity.key")).unwrap(), b"garbage");
}

#[test]
fn no_command_without_a_graphical_session_says_so_and_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kith"))
        .env("KITH_HOME", home.path())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("WAYLAND_SOCKET")
        .output()
        .expect("run kith");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no graphical session here"),
        "{}",
        stderr(&output)
    );
    assert!(std::fs::read_dir(home.path()).unwrap().next().is_none());
}
