//! `kith device link|add|list|remove` with the real `kith` binary in a
//! fresh `KITH_HOME`: the refusals that must write nothing, a link made
//! through a picture of the QR code, and removing a linked device, on
//! loopback with no other node.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kith_proto::DeviceKeypair;
use kith_proto::link::{LinkCode, LinkSecret};

const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

fn kith_command(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kith"));
    command
        .args(args)
        .env("KITH_HOME", home)
        .env_remove("KITH_PASSPHRASE")
        .env_remove("KITH_BOOTSTRAP")
        .stdin(Stdio::null());
    command
}

fn kith(home: &Path, args: &[&str]) -> Output {
    kith_command(home, args).output().expect("run kith")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.insert(path.clone(), Vec::new());
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn now() -> u64 {
    kith_proto::wire::Timestamp::now().0 / 1000
}

/// A well-formed code for a device nobody runs.
fn some_code(now: u64) -> LinkCode {
    let address: kith_net::Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().unwrap();
    LinkCode::generate_with(
        &DeviceKeypair::generate(),
        LinkSecret::random(),
        vec![address.to_vec()],
        now,
    )
    .unwrap()
}

/// `text` with one character of the code (not the prefix) changed.
fn one_character_changed(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = chars.len() / 2;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[test]
fn link_in_a_profile_that_has_an_account_refuses_and_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    assert!(
        kith(home.path(), &["--profile", "laptop", "id", "new"])
            .status
            .success()
    );
    let before = files(home.path());
    let output = kith(
        home.path(),
        &[
            "--profile",
            "laptop",
            "--listen",
            LOOPBACK,
            "device",
            "link",
            "--yes",
            "--png",
            home.path().join("code.png").to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        stderr(&output).trim(),
        "error: profile laptop already has an account; use another --profile"
    );
    assert_eq!(files(home.path()), before, "nothing may be written");
}

#[test]
fn add_refuses_a_mistyped_expired_or_wrong_code_before_opening_the_profile() {
    let home = tempfile::tempdir().unwrap();
    let code = some_code(now()).to_text();
    let typo = one_character_changed(&code);
    let expired = some_code(now() - 600).to_text();
    let cases = [
        (typo.as_str(), "typo"),
        (expired.as_str(), "expired"),
        ("kith-link:", "no link code given"),
        (
            "05GKFCCJWFM636C7H2JDMSKX7APHKNBTMXD8DFEJAVYCN3BFVA24Y4P28NJBRRR",
            "Kith ID, not a link code",
        ),
    ];
    for (text, expect) in cases {
        let output = kith(home.path(), &["device", "add", text, "--name", "desktop"]);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(
            stderr(&output).contains(expect),
            "{text}: {}",
            stderr(&output)
        );
    }
    // No profile was opened, so none was created.
    assert!(files(home.path()).is_empty());
}

#[test]
fn add_needs_exactly_one_of_a_code_or_a_picture() {
    let home = tempfile::tempdir().unwrap();
    let neither = kith(home.path(), &["device", "add"]);
    assert_eq!(neither.status.code(), Some(2));
    let code = some_code(now()).to_text();
    let both = kith(home.path(), &["device", "add", &code, "--image", "x.png"]);
    assert_eq!(both.status.code(), Some(2));
    let missing = home.path().join("missing.png");
    let output = kith(
        home.path(),
        &["device", "add", "--image", missing.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("missing.png"),
        "{}",
        stderr(&output)
    );
    assert!(files(home.path()).is_empty());
}

/// `kith --json <args>` in `profile` on loopback, which must succeed.
fn kith_json(home: &Path, profile: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--profile", profile, "--listen", LOOPBACK, "--json"];
    all.extend_from_slice(args);
    let output = kith(home, &all);
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Creates profile laptop and links profile desktop to it, without a
/// daemon: `kith device link --yes` on desktop, and on laptop `kith device
/// add` with the code's text or, `by_picture`, its QR code's PNG. Returns
/// what `id new` printed for the laptop and what `device add` printed.
fn link_desktop(home: &Path, by_picture: bool) -> (serde_json::Value, serde_json::Value) {
    let laptop = kith_json(home, "laptop", &["id", "new"]);
    let png = home.join("code.png");
    let mut desktop = kith_command(
        home,
        &[
            "--profile",
            "desktop",
            "--listen",
            LOOPBACK,
            "--json",
            "device",
            "link",
            "--yes",
            "--png",
            png.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(desktop.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let code = first["code"].as_str().unwrap().to_owned();
    assert!(code.starts_with("kith-link:"), "{first}");
    assert!(first["expires"].as_u64().unwrap() > now());

    let mut args = vec!["device", "add"];
    if by_picture {
        args.extend_from_slice(&["--image", png.to_str().unwrap()]);
    } else {
        args.push(&code);
    }
    args.extend_from_slice(&["--name", "desktop"]);
    let added = kith_json(home, "laptop", &args);
    assert_eq!(added["name"], "desktop");
    assert_eq!(added["this_device"], false);

    let linked: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(linked["linked"]["id"], laptop["id"]);
    assert_eq!(linked["linked"]["name"], "laptop");
    assert!(desktop.wait().unwrap().success());
    (laptop, added)
}

#[test]
fn a_picture_of_the_qr_code_links_a_new_profile() {
    let home = tempfile::tempdir().unwrap();
    let (laptop, _) = link_desktop(home.path(), true);

    // Both profiles now list the same two devices, each its own first.
    let on_laptop = kith_json(home.path(), "laptop", &["device", "list"]);
    let on_desktop = kith_json(home.path(), "desktop", &["device", "list"]);
    assert_eq!(on_laptop.as_array().unwrap().len(), 2, "{on_laptop}");
    let names = |list: &serde_json::Value, this: bool| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["this_device"] == this)
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&on_laptop, false), ["desktop"]);
    assert_eq!(names(&on_desktop, true), ["desktop"]);
    assert_eq!(names(&on_desktop, false), names(&on_laptop, true));
    let shown = kith(home.path(), &["--profile", "desktop", "id", "show"]);
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        laptop["id"].as_str().unwrap()
    );
}

/// `kith --profile laptop device remove <device>` on loopback, text output.
fn remove_from_laptop(home: &Path, device: &str) -> Output {
    kith(
        home,
        &[
            "--profile",
            "laptop",
            "--listen",
            LOOPBACK,
            "device",
            "remove",
            device,
        ],
    )
}

#[test]
fn remove_takes_a_linked_device_off_the_list_without_a_daemon() {
    let home = tempfile::tempdir().unwrap();
    let (_, added) = link_desktop(home.path(), false);
    let desktop_peer = added["peer_id"].as_str().unwrap();

    // By a peer-ID prefix, printed as text.
    let output = remove_from_laptop(home.path(), &desktop_peer[..12]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("removed desktop ({desktop_peer})")
    );
    let listed = kith_json(home.path(), "laptop", &["device", "list"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["this_device"], true);

    // Gone means gone: a second removal finds nothing.
    let again = remove_from_laptop(home.path(), "desktop");
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("no device of this account matches 'desktop'"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn remove_refuses_this_device_an_unknown_one_and_a_short_prefix() {
    let home = tempfile::tempdir().unwrap();
    let me = kith_json(home.path(), "laptop", &["id", "new"]);
    let peer = me["device"].as_str().unwrap();
    let cases = [
        (&peer[..8], "a device cannot remove itself"),
        (peer, "a device cannot remove itself"),
        ("desktop", "no device of this account matches 'desktop'"),
        // Too short to name a device by its peer ID.
        (&peer[..5], "no device of this account matches"),
    ];
    for (device, expect) in cases {
        let output = remove_from_laptop(home.path(), device);
        assert_eq!(output.status.code(), Some(1), "{device}");
        assert!(output.stdout.is_empty(), "{device}");
        assert!(
            stderr(&output).contains(expect),
            "{device}: {}",
            stderr(&output)
        );
    }
    let listed = kith_json(home.path(), "laptop", &["device", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}
