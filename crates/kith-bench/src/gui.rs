//! `gui`: the desktop window (`kith` with no command) opening a
//! conversation of 1,000 messages: time to its first frame, time until the
//! conversation is drawn, and its resident memory then.
//!
//! The profile is prepared once, through the real engine: a fresh `kithd`
//! on 127.0.0.1 (TCP), two profiles `alice` and `bob` in a temporary
//! `KITH_HOME` (`kith id new`, `kith name`), each run by a `kith daemon`
//! bootstrapping from it. Bob sends Alice a friend request and Alice
//! accepts it; then each daemon's control socket (`<profile>/kith.sock`,
//! JSON lines) is asked to send half of `messages` messages, alternating,
//! with bodies of 10 to 300 characters. Once Alice's history holds every
//! message and each of hers is delivered, she reads the conversation (so
//! that no run is the first to mark it read), her read receipts go out, and
//! both daemons are stopped with SIGTERM, freeing the profiles.
//!
//! Each run then starts a private `Xvfb` display (1280×800, 24 bits) and
//! `kith --profile alice` on it with `KITH_GUI_REPORT=1`, bootstrapping
//! from the same `kithd`. In that mode the window prints
//! `{"event":"first_frame","ms":N}` when it has drawn its first frame (ms
//! since the start of its `main`), then opens its first friend's
//! conversation, scrolls back through it a page at a time as a user would
//! until 1,000 messages are loaded or there are no more, and prints
//! `{"event":"conversation","messages":M,"ms":N}` on the next frame drawn.
//! Its `VmRSS` is read right then and again a second later; the larger
//! reading counts (with its anonymous and file-backed parts). Then the
//! window is stopped with SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kith_net::Multiaddr;
use serde_json::{Value, json};

use crate::Rng;
use crate::proc::{KithDaemon, Kithd, peak_rss_kb, rss_kb, status_kb, terminate};

/// Longest wait for one line of the window's report.
const LINE_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for a friend request, or an acceptance, to arrive.
const FRIEND_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for every message to be delivered.
const DELIVERY_LIMIT: Duration = Duration::from_secs(300);
/// How long a process may take to end after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest wait for `Xvfb` to open its socket.
const XVFB_LIMIT: Duration = Duration::from_secs(10);
/// The display numbers tried for `Xvfb`.
const DISPLAYS: std::ops::RangeInclusive<u32> = 90..=99;
/// What installs `Xvfb` and the libraries the window needs on Debian or
/// Ubuntu.
const XVFB_HINT: &str =
    "apt-get install -y xvfb xauth libxkbcommon-x11-0 libgl1-mesa-dri mesa-vulkan-drivers";

/// Which renderer iced is told to use (`ICED_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Renderer {
    /// Vulkan or OpenGL, on the GPU or on a software driver such as
    /// llvmpipe.
    Wgpu,
    /// Drawing on the CPU.
    TinySkia,
}

impl Renderer {
    /// The value of `ICED_BACKEND`.
    pub fn backend(self) -> &'static str {
        match self {
            Renderer::Wgpu => "wgpu",
            Renderer::TinySkia => "tiny-skia",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct GuiParams {
    /// The `kithd` binary.
    pub kithd: PathBuf,
    /// The `kith` binary.
    pub kith: PathBuf,
    /// Messages in the conversation, half sent by each side.
    pub messages: usize,
    /// Window launches.
    pub runs: usize,
    /// The renderer to ask iced for; `None` leaves the choice to iced.
    pub renderer: Option<Renderer>,
}

/// One launch of the window.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuiRun {
    /// From the start of the window's `main` to its first frame.
    pub first_frame_ms: f64,
    /// From starting the process to reading its first-frame line (adds
    /// loading the binary and its libraries).
    pub launch_ms: f64,
    /// From the start of the window's `main` to the frame showing the
    /// loaded conversation.
    pub conversation_ms: f64,
    /// Messages loaded in the conversation.
    pub messages: u64,
    /// Resident memory once the conversation is drawn (the larger of two
    /// readings a second apart), KiB.
    pub rss_kb: u64,
    /// Its anonymous part (heap, stacks, driver buffers), KiB.
    pub anon_kb: u64,
    /// Its file-backed part (code of the binary and libraries), KiB.
    pub file_kb: u64,
    /// Peak resident memory of the process so far (`VmHWM`), KiB.
    pub peak_kb: u64,
}

/// A line the window prints in its measurement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ReportLine {
    /// The first frame is drawn.
    FirstFrame {
        /// Milliseconds since the start of `main`.
        ms: u64,
    },
    /// The conversation is loaded and drawn.
    Conversation {
        /// Messages loaded.
        messages: u64,
        /// Milliseconds since the start of `main`.
        ms: u64,
    },
}

impl ReportLine {
    /// The report in `line`; `None` for anything else the window prints.
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// The first display number in `candidates` that `taken` does not claim.
pub fn free_display(
    candidates: impl IntoIterator<Item = u32>,
    mut taken: impl FnMut(u32) -> bool,
) -> Option<u32> {
    candidates.into_iter().find(|&n| !taken(n))
}

/// Whether an X server holds display `n` on this machine (its lock file or
/// its socket exists).
fn display_taken(n: u32) -> bool {
    Path::new(&format!("/tmp/.X{n}-lock")).exists()
        || Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
}

/// A message body of 10 to 300 characters made of everyday words.
pub fn message_body(rng: &mut Rng) -> String {
    const WORDS: &[&str] = &[
        "the", "a", "we", "you", "I", "it", "is", "was", "are", "will", "can", "not", "just",
        "really", "think", "know", "see", "get", "going", "tomorrow", "tonight", "today", "later",
        "dinner", "train", "station", "meeting", "weekend", "coffee", "book", "film", "photos",
        "message", "call", "back", "home", "work", "late", "early", "great", "fine", "sorry",
        "thanks", "maybe", "sure", "okay", "and", "but", "so", "if", "when", "at", "on", "for",
        "with", "about", "after", "before", "there", "here", "what", "how", "time", "again",
        "still", "already", "nice", "weather", "rain", "sunny", "bring", "remember", "forgot",
    ];
    const ENDINGS: &[&str] = &[".", "!", "?", "", " :)"];
    let target = 10 + rng.below(291);
    let mut body = String::with_capacity(target + 8);
    while body.len() < target {
        if !body.is_empty() {
            body.push(' ');
        }
        body.push_str(WORDS[rng.below(WORDS.len())]);
    }
    let ending = ENDINGS[rng.below(ENDINGS.len())];
    body.truncate(target - ending.len());
    // End on a whole word where that leaves enough.
    if let Some(space) = body.rfind(' ')
        && space >= 10
    {
        body.truncate(space);
    }
    body.push_str(ending);
    while body.len() < 10 {
        body.push('!');
    }
    body[..1].make_ascii_uppercase();
    body
}

/// Runs the scenario.
pub fn run(params: &GuiParams) -> anyhow::Result<Vec<GuiRun>> {
    // Before preparing anything.
    let xvfb = find_in_path("Xvfb")
        .with_context(|| format!("Xvfb is not installed; install it with `{XVFB_HINT}`"))?;
    let node = Kithd::start(&params.kithd)?;
    let bootstrap = node.addrs.first().context("kithd address")?.clone();
    let home = tempfile::tempdir()?;
    prepare(params, home.path(), &bootstrap)?;
    let mut runs = Vec::with_capacity(params.runs);
    for _ in 0..params.runs {
        runs.push(launch(params, &xvfb, home.path(), &bootstrap)?);
    }
    Ok(runs)
}

/// Makes Alice and Bob friends and fills their conversation.
fn prepare(params: &GuiParams, home: &Path, bootstrap: &Multiaddr) -> anyhow::Result<()> {
    let kith = &params.kith;
    let alice_id = cli(kith, home, "alice", &["id", "new"])?;
    let alice_id = alice_id["id"]
        .as_str()
        .context("`kith id new` printed no id")?;
    let bob_id = cli(kith, home, "bob", &["id", "new"])?;
    let bob_id = bob_id["id"]
        .as_str()
        .context("`kith id new` printed no id")?;
    cli(kith, home, "alice", &["name", "Alice"])?;
    cli(kith, home, "bob", &["name", "Bob"])?;
    let bootstrap = std::slice::from_ref(bootstrap);
    let mut alice_daemon = KithDaemon::start_in(kith, home, "alice", bootstrap)?;
    let mut bob_daemon = KithDaemon::start_in(kith, home, "bob", bootstrap)?;
    let mut alice = Control::connect(home, "alice")?;
    let mut bob = Control::connect(home, "bob")?;

    bob.request(json!({"add": {"id": alice_id, "message": "hi, it's Bob"}}))?;
    poll(FRIEND_LIMIT, "Bob's friend request to reach Alice", || {
        let requests = alice.request(json!("requests"))?;
        Ok(requests["incoming"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["id"] == bob_id)))
    })?;
    alice.request(json!({"accept": {"who": bob_id}}))?;
    poll(FRIEND_LIMIT, "Alice's acceptance to reach Bob", || {
        let friends = bob.request(json!("friends"))?;
        Ok(friends
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["id"] == alice_id)))
    })?;

    let mut rng = Rng::new(1);
    for i in 0..params.messages {
        let text = message_body(&mut rng);
        if i % 2 == 0 {
            bob.request(json!({"send": {"to": alice_id, "text": text}}))?;
        } else {
            alice.request(json!({"send": {"to": bob_id, "text": text}}))?;
        }
    }
    let from_bob = params.messages.div_ceil(2);
    let mut history = |mark_read: bool| {
        alice.request(json!({"history": {
            "with": bob_id,
            "limit": params.messages + 1,
            "mark_read": mark_read,
        }}))
    };
    poll(DELIVERY_LIMIT, "every message to be delivered", || {
        let history = history(false)?;
        let messages = history.as_array().context("history is not a list")?;
        let received = messages.iter().filter(|m| m["from"] == "friend").count();
        let delivered = messages
            .iter()
            .filter(|m| m["from"] == "me")
            .filter(|m| matches!(m["state"]["state"].as_str(), Some("delivered" | "read")))
            .count();
        Ok(messages.len() == params.messages
            && received == from_bob
            && delivered == params.messages - from_bob)
    })?;
    // Read now, so that every run opens the same, read, conversation.
    history(true)?;
    poll(DELIVERY_LIMIT, "Alice's read receipts to go out", || {
        let status = alice.request(json!("status"))?;
        Ok(status["outbox"].as_u64() == Some(0))
    })?;
    drop((alice, bob));
    for (name, daemon) in [("alice", &mut alice_daemon), ("bob", &mut bob_daemon)] {
        let status = daemon.stop(STOP_GRACE)?;
        if !status.success() {
            eprintln!("gui: {name}'s kith daemon ended with {status} on SIGTERM");
        }
    }
    Ok(())
}

/// Starts the window once on a fresh display and measures it.
fn launch(
    params: &GuiParams,
    xvfb: &Path,
    home: &Path,
    bootstrap: &Multiaddr,
) -> anyhow::Result<GuiRun> {
    let display = Xvfb::start(xvfb)?;
    let mut command = Command::new(&params.kith);
    command
        .env("KITH_HOME", home)
        .env("KITH_GUI_REPORT", "1")
        .env("DISPLAY", format!(":{}", display.number))
        .env("XDG_RUNTIME_DIR", display.runtime_dir.path())
        .env_remove("WAYLAND_DISPLAY")
        .args(["--profile", "alice", "--bootstrap", &bootstrap.to_string()])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(renderer) = params.renderer {
        command.env("ICED_BACKEND", renderer.backend());
    }
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", params.kith.display()))?;
    let mut window = Window { child };
    let stdout = window.child.stdout.take().context("kith stdout")?;
    let reports = read_reports(stdout);

    let mut run = GuiRun::default();
    match window.next(&reports, "its first frame")? {
        ReportLine::FirstFrame { ms } => {
            // To a tenth of a millisecond.
            run.launch_ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
            run.first_frame_ms = ms as f64;
        }
        other => bail!("the window reported {other:?} before its first frame"),
    }
    match window.next(&reports, "the conversation")? {
        ReportLine::Conversation { messages, ms } => {
            run.messages = messages;
            run.conversation_ms = ms as f64;
        }
        other => bail!("the window reported {other:?} again"),
    }
    let pid = window.child.id();
    for reading in 0..2 {
        if reading > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let rss = rss_kb(pid)?;
        if rss >= run.rss_kb {
            run.rss_kb = rss;
            run.anon_kb = status_kb(pid, "RssAnon")?;
            run.file_kb = status_kb(pid, "RssFile")?;
        }
    }
    run.peak_kb = peak_rss_kb(pid)?;
    terminate(&mut window.child, STOP_GRACE)?;
    drop(display);
    Ok(run)
}

/// Reads the window's standard output on a thread of its own, passing on
/// its report lines; the channel closes when the window's output ends.
fn read_reports(stdout: impl std::io::Read + Send + 'static) -> Receiver<ReportLine> {
    let (tx, rx) = sync_channel(16);
    std::thread::spawn(move || {
        // Keep reading to the end, so that the window never writes into a
        // closed pipe, even once nobody listens.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(report) = ReportLine::parse(&line) {
                let _ = tx.send(report);
            }
        }
    });
    rx
}

/// The window's process, killed when dropped.
struct Window {
    child: Child,
}

impl Window {
    /// The next report line, within [`LINE_LIMIT`].
    fn next(&mut self, reports: &Receiver<ReportLine>, what: &str) -> anyhow::Result<ReportLine> {
        match reports.recv_timeout(LINE_LIMIT) {
            Ok(report) => Ok(report),
            Err(RecvTimeoutError::Timeout) => bail!(
                "the window reported no {what} within {} s",
                LINE_LIMIT.as_secs()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait()?;
                bail!("the window ended ({status}) before reporting {what}")
            }
        }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private X display: an `Xvfb` server, stopped when dropped, and a
/// private `XDG_RUNTIME_DIR` for the window.
struct Xvfb {
    child: Child,
    number: u32,
    runtime_dir: tempfile::TempDir,
}

impl Xvfb {
    /// Starts `binary` (`Xvfb`) on the first free display of [`DISPLAYS`];
    /// if another server takes that one first, tries the next.
    fn start(binary: &Path) -> anyhow::Result<Self> {
        let mut tried = Vec::new();
        while let Some(number) = free_display(DISPLAYS, |n| tried.contains(&n) || display_taken(n))
        {
            tried.push(number);
            let mut child = Command::new(binary)
                .arg(format!(":{number}"))
                .args(["-screen", "0", "1280x800x24", "-nolisten", "tcp"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
            match wait_for_socket(&mut child, &socket) {
                // Ended at once: the display was taken after all.
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    let _ = terminate(&mut child, STOP_GRACE);
                    return Err(e.context(format!("Xvfb :{number}")));
                }
            }
            // Stopped when dropped from here on.
            let server = Self {
                child,
                number,
                runtime_dir: tempfile::tempdir()?,
            };
            let mode = std::fs::Permissions::from_mode(0o700);
            std::fs::set_permissions(server.runtime_dir.path(), mode)?;
            return Ok(server);
        }
        bail!(
            "no free X display among :{}..:{}",
            DISPLAYS.start(),
            DISPLAYS.end()
        )
    }
}

/// The file `name` in one of the folders of `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

/// Waits for `child`, an X server, to open `socket`: `Ok(false)` if it
/// ends first.
fn wait_for_socket(child: &mut Child, socket: &Path) -> anyhow::Result<bool> {
    let deadline = Instant::now() + XVFB_LIMIT;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        if socket.exists() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            bail!("no socket within {} s", XVFB_LIMIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM, so that it removes its lock file and socket.
        let _ = terminate(&mut self.child, STOP_GRACE);
    }
}

/// Runs `kith --profile PROFILE --json ARGS` in `home` (listening on
/// loopback only, should the command start its engine) and returns what it
/// printed.
fn cli(kith: &Path, home: &Path, profile: &str, args: &[&str]) -> anyhow::Result<Value> {
    let output = Command::new(kith)
        .env("KITH_HOME", home)
        .args(["--profile", profile, "--json"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", kith.display()))?;
    if !output.status.success() {
        bail!("`kith {}` failed: {}", args.join(" "), output.status);
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("`kith {}` printed no JSON", args.join(" ")))
}

/// A connection to a `kith daemon`'s control socket: one JSON request per
/// line, one answer line each.
struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    fn connect(home: &Path, profile: &str) -> anyhow::Result<Self> {
        let path = home.join("profiles").join(profile).join("kith.sock");
        let writer = UnixStream::connect(&path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Self { reader, writer })
    }

    /// Sends `request` and returns the `ok` part of the answer.
    fn request(&mut self, request: Value) -> anyhow::Result<Value> {
        let mut line = serde_json::to_string(&request)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            bail!("the daemon hung up");
        }
        let mut answer: Value = serde_json::from_str(&answer)
            .with_context(|| format!("the daemon answered {answer:?}"))?;
        if let Some(error) = answer.get("error") {
            bail!("the daemon refused {request}: {error}");
        }
        answer
            .get_mut("ok")
            .map(Value::take)
            .with_context(|| format!("the daemon answered {answer}"))
    }
}

/// Calls `done` every 200 ms until it says yes, for at most `limit`.
fn poll(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse_and_other_output_is_skipped() {
        assert_eq!(
            ReportLine::parse("{\"event\":\"first_frame\",\"ms\":412}\n"),
            Some(ReportLine::FirstFrame { ms: 412 })
        );
        assert_eq!(
            ReportLine::parse("{\"event\":\"conversation\",\"messages\":1000,\"ms\":1290}"),
            Some(ReportLine::Conversation {
                messages: 1000,
                ms: 1290
            })
        );
        assert_eq!(ReportLine::parse("{\"event\":\"resized\",\"ms\":3}"), None);
        assert_eq!(ReportLine::parse("{\"daemon\":\"alice\"}"), None);
        assert_eq!(ReportLine::parse("warning: something"), None);
        assert_eq!(ReportLine::parse(""), None);
    }

    #[test]
    fn the_first_display_not_taken_is_picked() {
        assert_eq!(free_display(90..=99, |_| false), Some(90));
        assert_eq!(free_display(90..=99, |n| n < 93 || n == 94), Some(93));
        assert_eq!(free_display(90..=99, |_| true), None);
    }

    #[test]
    fn message_bodies_vary_between_10_and_300_characters() {
        let mut rng = Rng::new(1);
        let bodies: Vec<String> = (0..2000).map(|_| message_body(&mut rng)).collect();
        for body in &bodies {
            assert!(
                (10..=300).contains(&body.len()),
                "{} chars: {body:?}",
                body.len()
            );
            assert!(
                body.starts_with(|c: char| c.is_ascii_uppercase()),
                "{body:?}"
            );
        }
        let shortest = bodies.iter().map(String::len).min().unwrap();
        let longest = bodies.iter().map(String::len).max().unwrap();
        assert!(shortest < 30 && longest > 280, "{shortest}..{longest}");
        let mut again = Rng::new(1);
        assert_eq!(message_body(&mut again), bodies[0]);
    }

    #[test]
    fn programs_are_found_in_path_and_missing_ones_are_not() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-program-kith-bench").is_none());
    }

    #[test]
    fn renderer_names_are_iced_backends() {
        use clap::ValueEnum;
        assert_eq!(Renderer::Wgpu.backend(), "wgpu");
        assert_eq!(Renderer::TinySkia.backend(), "tiny-skia");
        assert_eq!(
            Renderer::from_str("tiny-skia", false).unwrap(),
            Renderer::TinySkia
        );
    }
}
