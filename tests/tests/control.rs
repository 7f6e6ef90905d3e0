//! The daemon's control socket under bad input: malformed requests get an
//! error answer, an over-long line closes that connection only, and a
//! second daemon for the same profile is refused.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use anyhow::ensure;
use kith_scenarios::{User, start_kithd};
use serde_json::json;

#[test]
fn the_control_socket_refuses_bad_input_and_keeps_serving() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let (_kithd, bootstrap) = start_kithd(&home.path().join("kithd"))?;
    let user = User::new(home.path(), "frank", &bootstrap);
    user.json(&["id", "new"])?;
    let _daemon = user.daemon()?;

    let mut control = user.control()?;
    let answer = control.call(&json!("no such request"))?;
    ensure!(answer["error"].is_string(), "{answer}");
    let answer = control.call(&json!({"send": {"to": "nobody", "text": "hi"}}))?;
    ensure!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("no friend matches")),
        "{answer}"
    );

    // 100 KiB without a newline, then one: refused, connection closed.
    let socket = user.dir().join("kith.sock");
    let mut stream = UnixStream::connect(&socket)?;
    let long = "x".repeat(100 * 1024);
    let _ = stream.write_all(long.as_bytes());
    let _ = stream.write_all(b"\n");
    let mut reply = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut reply)?;
    ensure!(reply.contains("too long"), "{reply}");

    // The daemon still answers others.
    let status = user.control()?.call(&json!("status"))?;
    ensure!(status["ok"]["id"].is_string(), "{status}");

    // A second daemon for the profile is refused with a clear message.
    let output = user.run(&["daemon"])?;
    ensure!(!output.status.success(), "a second daemon started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.contains("already running"), "{stderr}");
    ensure!(
        user.control()?.call(&json!("friends"))?["ok"].is_array(),
        "the first daemon stopped answering"
    );
    Ok(())
}
