//! Bad input to the real `kith` binary: a clear message on standard error,
//! a non-zero exit, and not one byte changed in the profile.

use anyhow::ensure;
use kith_scenarios::{User, snapshot};

fn refused(user: &User, args: &[&str], says: &str) -> anyhow::Result<()> {
    let before = snapshot(&user.dir())?;
    let output = user.run(args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "kith {args:?} succeeded");
    ensure!(
        stderr.contains(says),
        "kith {args:?}: expected {says:?} in {stderr:?}"
    );
    ensure!(
        snapshot(&user.dir())? == before,
        "kith {args:?} changed the profile on disk"
    );
    Ok(())
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    // No bootstrap node: none of these should need the network.
    let user = User::new(
        home.path(),
        "dana",
        "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
    );
    user.json(&["id", "new"])?;
    // A first run creates the database, so later runs compare like with like.
    user.json(&["friends"])?;

    refused(&user, &["add", "not-an-id"], "invalid Kith ID")?;
    let mut id = user.json(&["id", "show"])?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // One character changed: a typo the checksum catches.
    let last = id.pop().unwrap_or('0');
    id.push(if last == '0' { '1' } else { '0' });
    refused(&user, &["add", &id], "checksum")?;
    refused(
        &user,
        &["send", "nobody", "hello"],
        "no friend matches 'nobody'",
    )?;
    let long = "x".repeat(16 * 1024 + 1);
    refused(&user, &["send", "nobody", &long], "the limit is 16384")?;

    let mut locked = User::new(home.path(), "erin", &user.bootstrap);
    locked.env = vec![("KITH_PASSPHRASE".into(), "correct horse".into())];
    locked.json(&["id", "new", "--passphrase"])?;
    locked.json(&["friends"])?;
    locked.env = vec![("KITH_PASSPHRASE".into(), "wrong horse".into())];
    refused(&locked, &["friends"], "wrong passphrase")?;
    locked.env.clear();
    refused(&locked, &["friends"], "locked")?;
    Ok(())
}
