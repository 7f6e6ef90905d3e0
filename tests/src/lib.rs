//! Helpers for the cross-crate scenarios in `tests/tests/`: find the real
//! `kith` and `kithd` binaries that `cargo test --workspace` built, start
//! them on loopback in a fresh `KITH_HOME`, and drive them as a user would.
//!
//! Every address used is on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::ops::Bound;

use anyhow::{Context, bail};
use kith_store::{Backend, Direction, SledBackend};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Listen address for every process.
pub const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

/// A binary built by this workspace (`target/<profile>/<name>`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let here = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>
    let dir = here
        .parent()
        .and_then(Path::parent)
        .context("test binary location")?;
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!(
            "{} is missing: run the scenarios with `cargo test --workspace`, which builds it",
            path.display()
        );
    }
    Ok(path)
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
}

impl Proc {
    /// Stops it with SIGTERM and waits up to 20 s.
    pub fn terminate(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("process {pid} did not stop on SIGTERM")
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kithd` on loopback with a fresh data folder.
pub fn start_kithd(data: &Path) -> anyhow::Result<(Proc, String)> {
    let mut child = Command::new(binary("kithd")?)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", LOOPBACK, "--no-metrics"])
        .env("KITHD_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("kithd stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    Ok((Proc { child }, line.trim().to_owned()))
}

/// A `kithd` that keeps offline mail (its default) and serves metrics on
/// loopback, for scenarios that read what it holds.
pub struct Kithd {
    /// The process.
    pub proc: Proc,
    /// Its TCP address, ending in `/p2p/<peer id>`: what clients and other
    /// nodes bootstrap from.
    pub addr: String,
    /// Where its metrics are served (`127.0.0.1:<port>`).
    pub metrics: String,
    /// Its data folder (node key and mailbox store).
    pub data: PathBuf,
}

impl Kithd {
    /// Starts `kithd` on `data`, listening on `listen` (a loopback TCP
    /// multiaddr; port 0 picks one) and joining `bootstrap`, with metrics
    /// on a free loopback port. Returns once it has printed its address.
    pub fn start(data: &Path, listen: &str, bootstrap: &[String]) -> anyhow::Result<Self> {
        let mut command = Command::new(binary("kithd")?);
        command
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", listen, "--metrics", "127.0.0.1:0"]);
        for addr in bootstrap {
            command.args(["--bootstrap", addr]);
        }
        let mut child = command
            // The metrics address is only logged, at info.
            .env("KITHD_LOG", "error,kith_node=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("kithd stdout")?;
        let stderr = child.stderr.take().context("kithd stderr")?;
        let proc = Proc { child };
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(1);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match line.find("metrics at http://") {
                    Some(at) => {
                        let rest = &line[at + "metrics at http://".len()..];
                        let _ = tx.try_send(rest.trim().trim_end_matches("/metrics").to_owned());
                    }
                    // Its start-up notes are noise; warnings and errors
                    // show in a failed test's output.
                    None if line.contains(" INFO ") => {}
                    None => eprintln!("kithd: {line}"),
                }
            }
        });
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line.trim().to_owned();
        if !addr.contains("/p2p/") {
            bail!("kithd printed {line:?}, not its address");
        }
        let metrics = rx
            .recv_timeout(Duration::from_secs(20))
            .context("kithd never logged its metrics address")?;
        Ok(Self {
            proc,
            addr,
            metrics,
            data: data.to_owned(),
        })
    }

    /// Its listen address without the peer ID (`/ip4/127.0.0.1/tcp/<port>`),
    /// to start it again on the same port.
    pub fn listen_addr(&self) -> String {
        match self.addr.find("/p2p/") {
            Some(at) => self.addr[..at].to_owned(),
            None => self.addr.clone(),
        }
    }

    /// Its metrics page.
    pub fn scrape(&self) -> anyhow::Result<String> {
        let mut stream = std::net::TcpStream::connect(&self.metrics)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: kithd\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") {
            bail!("metrics answered {response:?}");
        }
        Ok(response)
    }

    /// The sum of every sample of metric `name` (any labels).
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.scrape()?;
        Ok(text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Mailbox items it holds (`kithd_mailbox_items`).
    pub fn mailbox_items(&self) -> anyhow::Result<u64> {
        let items = self.metric("kithd_mailbox_items")?;
        // A gauge of whole items.
        Ok(items as u64)
    }

    /// Stops it with SIGTERM; it must exit cleanly within 20 s.
    pub fn terminate(mut self) -> anyhow::Result<()> {
        let child = &mut self.proc.child;
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("kithd {pid} exited with {status} on SIGTERM");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("kithd {pid} did not stop on SIGTERM")
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill9(self) -> anyhow::Result<()> {
        self.proc.kill9()
    }
}

/// One user of the `kith` binary: a profile in a shared `KITH_HOME`.
#[derive(Clone)]
pub struct User {
    /// The profile name.
    pub name: String,
    /// `KITH_HOME`.
    pub home: PathBuf,
    /// Bootstrap address.
    pub bootstrap: String,
    /// Extra environment (a passphrase, say).
    pub env: Vec<(String, String)>,
}

impl User {
    /// A user of profile `name`.
    pub fn new(home: &Path, name: &str, bootstrap: &str) -> Self {
        Self {
            name: name.into(),
            home: home.into(),
            bootstrap: bootstrap.into(),
            env: Vec::new(),
        }
    }

    fn command(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(binary("kith")?);
        command
            .env("KITH_HOME", &self.home)
            .env_remove("KITH_PASSPHRASE")
            .env_remove("KITH_BOOTSTRAP")
            .args(["--profile", &self.name, "--listen", LOOPBACK])
            .args(["--bootstrap", &self.bootstrap]);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        Ok(command)
    }

    /// Runs `kith <args>` and returns its output, whatever the status.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.command()?.args(args).stdin(Stdio::null()).output()?)
    }

    /// Runs `kith --json <args>`, which must succeed, and parses its output.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let output = self
            .command()?
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            bail!(
                "kith {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "kith {} printed {:?}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Starts `kith daemon`; returns once its control socket answers.
    pub fn daemon(&self) -> anyhow::Result<Proc> {
        let mut child = self
            .command()?
            .args(["--json", "daemon"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().context("daemon stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let first: Value =
            serde_json::from_str(&line).with_context(|| format!("daemon printed {line:?}"))?;
        if first["daemon"] != self.name.as_str() {
            bail!("unexpected first line {line}");
        }
        // Keep reading so the daemon never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        Ok(Proc { child })
    }

    /// Starts `kith --json device link --yes` for this (new) profile;
    /// returns once it has printed its link code.
    pub fn device_link(&self) -> anyhow::Result<Linking> {
        let mut child = self
            .command()?
            .args(["--json", "device", "link", "--yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().context("link stdout")?);
        let stderr = child.stderr.take().context("link stderr")?;
        let proc = Proc { child };
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let first: Value =
            serde_json::from_str(&line).with_context(|| format!("device link printed {line:?}"))?;
        let code = first["code"]
            .as_str()
            .with_context(|| format!("no code in {line}"))?
            .to_owned();
        Ok(Linking {
            proc,
            stdout,
            stderr,
            code,
        })
    }

    /// The profile folder.
    pub fn dir(&self) -> PathBuf {
        self.home.join("profiles").join(&self.name)
    }

    /// Opens the daemon's control socket.
    pub fn control(&self) -> anyhow::Result<Control> {
        let stream = UnixStream::connect(self.dir().join("kith.sock"))?;
        Ok(Control {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }
}

/// A running `kith device link`.
pub struct Linking {
    /// The process.
    pub proc: Proc,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: std::process::ChildStderr,
    /// The link code it shows, as text.
    pub code: String,
}

impl Linking {
    /// Waits up to `limit` for it to exit; returns its exit status, the
    /// JSON lines it printed after the code, and its standard error.
    pub fn finish(mut self, limit: Duration) -> anyhow::Result<(bool, Vec<Value>, String)> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.proc.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("kith device link did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest)?;
        let lines = rest
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()
            .with_context(|| format!("device link printed {rest:?}"))?;
        let mut errors = String::new();
        self.stderr.read_to_string(&mut errors)?;
        Ok((status.success(), lines, errors))
    }
}

/// A raw connection to a daemon's control socket.
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    /// Sends one request line and reads the answer line.
    pub fn call(&mut self, request: &Value) -> anyhow::Result<Value> {
        writeln!(self.writer, "{request}")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the daemon closed the connection");
        }
        Ok(serde_json::from_str(&line)?)
    }
}

/// Retries `check` every 200 ms until it returns `Some` or `limit` passes.
pub fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    while Instant::now() < deadline {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match last_error {
        Some(e) => bail!("timed out waiting for {what}; last error: {e:#}"),
        None => bail!("timed out waiting for {what}"),
    }
}

/// `asker` sends a friend request to `answerer` (whose Kith ID is
/// `answerer_id`); `answerer` accepts it by `asker_name` (the name the
/// request shows); returns once `asker` lists `answerer` as a friend.
/// Both need a running daemon.
pub fn befriend(
    asker: &User,
    answerer: &User,
    answerer_id: &str,
    asker_name: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    asker.json(&["add", answerer_id, "hi"])?;
    eventually(limit, "the friend request to arrive", || {
        let requests = answerer.json(&["requests"])?;
        Ok(requests["incoming"]
            .as_array()
            .filter(|list| !list.is_empty())
            .map(|_| ()))
    })?;
    answerer.json(&["accept", asker_name])?;
    eventually(limit, "the acceptance to arrive", || {
        let friends = asker.json(&["friends"])?;
        Ok(friends
            .as_array()
            .filter(|list| list.iter().any(|f| f["name"] == answerer.name.as_str()))
            .map(|_| ()))
    })
}

/// What a profile holds, to show a failed command changed nothing: every
/// file outside the database with a hash of its bytes, and every entry of
/// the database. (The database is compared by content because sled
/// rewrites its own snapshot files whenever it is opened.) No process may
/// have the profile open.
pub fn snapshot(dir: &Path) -> anyhow::Result<BTreeMap<PathBuf, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() && path.file_name() == Some("db".as_ref()) {
                let db = SledBackend::open(&path)?;
                for tree in db.trees()? {
                    let entries = db.range(
                        &tree,
                        Bound::Unbounded,
                        Bound::Unbounded,
                        Direction::Forward,
                        usize::MAX,
                    )?;
                    for (key, value) in entries {
                        let name = path.join(&tree).join(hex::encode(&key));
                        out.insert(name, hex::encode(Sha256::digest(&value)));
                    }
                }
            } else if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path)?;
                out.insert(path, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    Ok(out)
}
