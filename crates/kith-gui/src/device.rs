//! `kith device link`: the new computer's side of linking it to an
//! account (`docs/devices.md`, "Link protocol").
//!
//! The profile must have no account yet. A bare network node starts with
//! a fresh device key and the global network options ([`kith_core::join`]);
//! its link code is shown as text and QR for `kith device add` on a
//! computer that has the account. When that computer proves the code and
//! offers its account, the user confirms the account's name and Kith ID
//! (or `--yes` does); only then is anything written: the profile's store,
//! seeded with what was handed over, and last its identity file. On any
//! failure (expiry, too many bad attempts, a refusal, a write error)
//! nothing is left behind.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use kith_core::join;
use kith_proto::link::{LinkBundle, LinkCode};
use kith_proto::{AccountKeypair, DeviceKeypair, KithId};
use kith_store::KdfParams;
use kith_store::Passphrase;
use kith_store::profile::{Identity, Profile, ProfileError};
use serde_json::json;

use crate::cli::{
    Cli, CliError, create_store, new_passphrase, node_options, print_json, write_file,
};
use crate::control;

/// How long the user has to answer "Join this account?": the existing
/// computer gives up on its request after 30 seconds, and a late yes
/// would leave the two disagreeing.
const ANSWER_WITHIN: Duration = Duration::from_secs(25);
/// Time for a refusal to reach the existing computer before the node
/// stops.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Side of the PNG written by `--png`, in pixels (at least).
const PNG_SIDE: u32 = 512;

/// The flags of `kith device link`.
#[derive(Debug, Clone, Default)]
pub struct LinkOptions {
    /// Lock the new profile with a passphrase.
    pub passphrase: bool,
    /// Also write the QR code to this PNG file.
    pub png: Option<PathBuf>,
    /// Accept the account offered without asking.
    pub yes: bool,
}

/// Refuses a profile that already has an account (or data of one).
pub fn check_unused(profile: &Profile) -> Result<(), CliError> {
    match profile.is_locked() {
        Err(ProfileError::NoIdentity { .. }) => {}
        Ok(_) => return Err(CliError::HasAccount(profile.name().to_owned())),
        Err(e) => return Err(e.into()),
    }
    if profile.dir().join("db").exists() {
        return Err(CliError::LeftoverData(profile.name().to_owned()));
    }
    Ok(())
}

/// Runs `kith device link` to the end.
pub async fn link(cli: &Cli, options: &LinkOptions, out: &mut impl Write) -> Result<(), CliError> {
    let profile = Profile::locate(&cli.profile)?;
    check_unused(&profile)?;
    let lock = if options.passphrase {
        Some(new_passphrase()?)
    } else {
        None
    };
    let net = control::net_config(DeviceKeypair::generate(), &node_options(cli)?)?;
    let mut joining = join::start(net).await?;
    let code = joining.code().clone();
    if let Some(path) = &options.png {
        write_file(path, &code.to_qr_png(PNG_SIDE)?)?;
    }
    show_code(cli, &code, options, out)?;

    let offer = joining.next_offer().await?;
    let name = offer.display_name().to_owned();
    let id = offer.kith_id();
    if !options.yes {
        let answer = confirm(cli, &name, &id, out).await?;
        if let Err(why) = answer {
            joining.decline(offer);
            // Let the refusal reach the other computer.
            tokio::time::sleep(REFUSAL_LINGER).await;
            return Err(CliError::NotJoined(why));
        }
    }
    let device = joining.device().clone();
    joining
        .accept(offer, |bundle| {
            commit(&profile, device, bundle, lock.as_ref())
        })
        .await?;

    if cli.json {
        print_json(
            out,
            &json!({"linked": {"id": id.to_string(), "name": name}}),
        )?;
    } else {
        writeln!(
            out,
            "Linked: profile '{}' is now {name} ({id}).",
            profile.name()
        )?;
        writeln!(
            out,
            "Start it with `kith --profile {} daemon`; friends and history arrive with it.",
            profile.name()
        )?;
    }
    Ok(())
}

fn show_code(
    cli: &Cli,
    code: &LinkCode,
    options: &LinkOptions,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let text = code.to_text();
    if cli.json {
        print_json(out, &json!({"code": text, "expires": code.expires()}))?;
    } else {
        let now = kith_proto::wire::Timestamp::now().0 / 1000;
        let minutes = code.expires().saturating_sub(now).div_ceil(60);
        write!(out, "{}", code.to_qr_terminal()?)?;
        writeln!(out)?;
        writeln!(out, "{text}")?;
        writeln!(out)?;
        writeln!(
            out,
            "On the computer that has your account, run:\n  kith device add {text}"
        )?;
        writeln!(
            out,
            "(or `kith device add --image FILE` with a picture of the QR code{}).",
            match &options.png {
                Some(path) => format!(", such as {}", path.display()),
                None => String::new(),
            }
        )?;
        writeln!(
            out,
            "The code works for {minutes} minutes, once. Waiting for the other computer…"
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Asks whether to join; `Ok(Err(why))` is a no.
async fn confirm(
    cli: &Cli,
    name: &str,
    id: &KithId,
    out: &mut impl Write,
) -> Result<Result<(), String>, CliError> {
    let question = format!(
        "The account offered is {name} ({id}).\nJoin this account? [y/N] (answer within {} seconds) ",
        ANSWER_WITHIN.as_secs()
    );
    if cli.json {
        print_json(out, &json!({"offer": {"id": id.to_string(), "name": name}}))?;
        out.flush()?;
        eprint!("{question}");
    } else {
        write!(out, "{question}")?;
        out.flush()?;
    }
    // A plain thread: a read of standard input cannot be cancelled, and a
    // thread left waiting does not keep the process alive.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    Ok(match tokio::time::timeout(ANSWER_WITHIN, rx).await {
        Err(_) => Err("no answer in time".to_owned()),
        Ok(Err(_)) | Ok(Ok(Err(_))) => Err("no answer could be read".to_owned()),
        Ok(Ok(Ok(line))) if is_yes(&line) => Ok(()),
        Ok(Ok(Ok(_))) => Err("you declined the account".to_owned()),
    })
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Writes the new profile: its store, seeded with what was handed over,
/// then its identity file (the commit point). Undoes the store if
/// anything fails.
pub(crate) fn commit(
    profile: &Profile,
    device: DeviceKeypair,
    bundle: &LinkBundle,
    lock: Option<&Passphrase>,
) -> Result<(), CliError> {
    // Another process may have taken the profile while we waited.
    check_unused(profile)?;
    let had_folder = profile.dir().exists();
    let identity = Identity {
        account: AccountKeypair::from_secret_bytes(&bundle.account.secret_bytes()),
        nospam: bundle.nospam,
        device,
    };
    let written = (|| {
        let store = create_store(profile, lock)?;
        join::seed_store(&store, bundle)
            .map_err(|e| control::ControlError::Start(format!("the profile's database: {e}")))?;
        drop(store);
        profile.create_identity(&identity, lock.map(|p| (p, KdfParams::INTERACTIVE)))?;
        Ok::<_, CliError>(())
    })();
    if written.is_err() {
        undo_new_profile(profile, had_folder);
    }
    written
}

/// After a failed first write of a profile: removes its database, and its
/// folder if this run made it (and nothing else is in it), so the profile
/// can be created or linked afresh.
pub(crate) fn undo_new_profile(profile: &Profile, had_folder: bool) {
    let _ = std::fs::remove_dir_all(profile.dir().join("db"));
    if !had_folder {
        let _ = std::fs::remove_dir(profile.dir());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_y_or_yes_accepts() {
        for yes in ["y", "Y\n", " yes ", "YES\r\n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y y", "ja"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }

    #[test]
    fn a_profile_with_an_identity_or_a_database_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let fresh = Profile::in_base(home.path(), "fresh").unwrap();
        check_unused(&fresh).unwrap();
        assert!(!fresh.dir().exists(), "checking writes nothing");

        let taken = Profile::in_base(home.path(), "laptop").unwrap();
        taken.create_identity(&Identity::generate(), None).unwrap();
        let err = check_unused(&taken).unwrap_err();
        assert_eq!(
            err.to_string(),
            "profile laptop already has an account; use another --profile"
        );

        let leftover = Profile::in_base(home.path(), "leftover").unwrap();
        std::fs::create_dir_all(leftover.dir().join("db")).unwrap();
        let err = check_unused(&leftover).unwrap_err();
        assert!(
            err.to_string().contains("database but no identity"),
            "{err}"
        );
    }
}
