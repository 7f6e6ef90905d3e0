//! The real window: `kith` with no command, under Xvfb, on a profile with a
//! friend and a conversation. It draws, opens the conversation, runs the
//! engine (commands in a terminal reach it through the control socket, as
//! they reach `kith daemon`), takes in a message sent while it is open, and
//! stops cleanly on SIGTERM.
//!
//! Needs `Xvfb` (`.ci/run` installs it); without it the test says so and
//! passes without running.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use kith_scenarios::{Proc, User, befriend, binary, eventually, start_kithd};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// An X server of our own on a free display number.
fn start_xvfb() -> anyhow::Result<(Proc, String)> {
    let free = (60..100)
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .context("no free X display number in 60..100")?;
    let display = format!(":{free}");
    let child = Command::new("Xvfb")
        .args([&display, "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let proc = Proc { child };
    let socket = PathBuf::from(format!("/tmp/.X11-unix/X{free}"));
    eventually(Duration::from_secs(20), "Xvfb to start", || {
        Ok(socket.exists().then_some(()))
    })?;
    Ok((proc, display))
}

/// Lines the window prints in measurement mode, as they come.
fn lines_of(proc: &mut Proc) -> anyhow::Result<mpsc::Receiver<String>> {
    let stdout = proc.child.stdout.take().context("window stdout")?;
    let (tx, rx) = mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

fn next_event(lines: &mpsc::Receiver<String>, event: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .with_context(|| format!("the window did not report {event} within {WAIT:?}"))?;
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if value["event"] == event {
            return Ok(value);
        }
    }
}

/// Waits until `user`'s conversation with bob holds a message `body`.
fn arrives(user: &User, body: &str) -> anyhow::Result<()> {
    eventually(WAIT, &format!("{body:?} to arrive"), || {
        let history = user.json(&["history", "bob"])?;
        Ok(history
            .as_array()
            .filter(|h| h.iter().any(|m| m["body"] == body))
            .map(|_| ()))
    })
}

#[test]
fn the_window_opens_a_conversation_and_runs_the_engine() -> anyhow::Result<()> {
    if !on_path("Xvfb") {
        eprintln!(
            "skipped: Xvfb is not installed (apt-get install -y xvfb xauth libxkbcommon-x11-0 libgl1-mesa-dri mesa-vulkan-drivers)"
        );
        return Ok(());
    }
    let home = tempfile::tempdir()?;
    let (_kithd, bootstrap) = start_kithd(&home.path().join("kithd"))?;
    let alice = User::new(home.path(), "alice", &bootstrap);
    let bob = User::new(home.path(), "bob", &bootstrap);
    let alice_id = alice.json(&["id", "new"])?["id"]
        .as_str()
        .context("alice's id")?
        .to_owned();
    bob.json(&["id", "new"])?;
    let alice_daemon = alice.daemon()?;
    let _bob_daemon = bob.daemon()?;
    befriend(&bob, &alice, &alice_id, "bob", WAIT)?;
    bob.json(&["send", "alice", "before the window"])?;
    arrives(&alice, "before the window")?;
    alice_daemon.terminate()?;

    // Alice opens the window instead of the daemon.
    let (_xvfb, display) = start_xvfb()?;
    let runtime_dir = tempfile::tempdir()?;
    std::fs::set_permissions(
        runtime_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let child = Command::new(binary("kith")?)
        .args(["--profile", "alice", "--listen", kith_scenarios::LOOPBACK])
        .args(["--bootstrap", &bootstrap])
        .env("KITH_HOME", home.path())
        .env("DISPLAY", &display)
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .env("KITH_GUI_REPORT", "1")
        .env_remove("KITH_PASSPHRASE")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut window = Proc { child };
    let lines = lines_of(&mut window)?;
    let first = next_event(&lines, "first_frame")?;
    ensure!(first["ms"].as_u64().is_some(), "{first}");
    let shown = next_event(&lines, "conversation")?;
    ensure!(shown["messages"] == 1, "the conversation shown: {shown}");

    // Commands in a terminal reach the window's engine.
    let status = alice.json(&["status"])?;
    ensure!(status["id"] == alice_id.as_str(), "{status}");

    // A message sent while the window is open reaches it.
    bob.json(&["send", "alice", "while the window is open"])?;
    arrives(&alice, "while the window is open")?;
    if window.child.try_wait()?.is_some() {
        bail!("the window exited");
    }

    // SIGTERM (a logout, `kill`) stops it as the close button does: the
    // engine shuts down, the control socket goes, the exit is clean.
    Command::new("kill")
        .args(["-TERM", &window.child.id().to_string()])
        .status()?;
    let status = eventually(WAIT, "the window to stop on SIGTERM", || {
        Ok(window.child.try_wait()?)
    })?;
    ensure!(status.success(), "the window exited with {status}");
    ensure!(
        !home.path().join("profiles/alice/kith.sock").exists(),
        "the control socket was left behind"
    );
    Ok(())
}
