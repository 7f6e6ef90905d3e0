//! Housekeeping that Kith's long-running processes (`kith daemon`, the
//! window, `kithd`) ask of the operating system beyond what the standard
//! library offers: giving back the pages of code and read-only data that
//! start-up, or a round of periodic work, used and idle running does not,
//! and the heap memory such work freed ([`trim_heap`]).
//!
//! Start-up runs code that an idle node never runs again: the dynamic
//! loader reads the binary's relocation table (1.1 MB in the `kith`
//! binary), the profile is opened and decrypted, the command line parsed,
//! the DHT joined. The engine's rounds (request drop, mail, presence, every
//! half hour or hour) and a new connection's handshake run more. Each page
//! of the binary and its libraries they touch stays mapped, and counts in
//! the process's resident memory, until the kernel needs the memory back.
//! [`release_file_pages`] tells the kernel to unmap every page of the
//! program's and its libraries' read-only mappings at once; the pages idle
//! running does use come back on first touch from the page cache (a minor
//! fault, no disk read), and only those. [`keep_releasing_pages`] does it,
//! and trims the heap, a minute after start, and again within seconds of
//! any burst of work that leaves half a megabyte or more of such pages
//! behind (a peer's handshake, a periodic round), and in any case 2, 4
//! and 8 minutes after one release and then every 10 minutes: the code of
//! the first minutes' rounds, and code idle running needs only now and
//! then, leaves again (see [`ReleasePolicy`]).
//! The `kith` binary of the packages is linked with the code an idle
//! client runs packed together (`scripts/build-ordered`, BENCHMARKS.md
//! "memory"), so those pages are few.
//!
//! Only mappings the kernel reports as read-only, backed by a loaded ELF
//! object (a file this process also maps executable), and holding no
//! copied-on-write pages are released: their contents are the file's, so
//! the call changes nothing a program can observe but the memory figure.
//! Relocated read-only data (`.data.rel.ro`, written by the loader before
//! being made read-only) holds copied pages and is left alone.
//!
//! On other systems than 64-bit Linux it does nothing.

#![cfg_attr(
    all(target_os = "linux", target_pointer_width = "64"),
    allow(unsafe_code)
)]

use std::time::{Duration, Instant};

/// How long after it starts a process counts as starting up: by then a
/// client has joined the DHT, published its presence, polled its request
/// drop and fetched its mail, and a `kithd` has joined the DHT.
pub const STARTUP: Duration = Duration::from_secs(60);

/// How often the release thread reads how much of the process's
/// resident memory is mapped files (`/proc/self/statm`, a few
/// microseconds) to decide whether to release again: about the longest
/// a burst of work's pages (a new connection's handshake, 1-4 MiB) stay
/// resident after it. Checked every 10 s, an idle client spent 5 seconds
/// of an hour over 10 MB, each time just after a connection to or from
/// its `kithd`; every 2 s, one (BENCHMARKS.md, "memory").
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long after a release the thread waits before it takes the
/// process's idle level of mapped-file pages: long enough for idle running
/// (timers, the request-drop poll every minute) to have touched its own
/// code again, and the shortest time between two releases unless a burst
/// of work comes meanwhile (see [`ReleasePolicy`]).
pub const SETTLE: Duration = Duration::from_secs(60);

/// How far the process's resident mapped-file pages may grow past their
/// idle level before they are released again. A new connection's handshake
/// (TCP or QUIC, with TLS), a round of the engine's periodic work or a
/// burst of use of the window each pull in one to several MiB of code that
/// idle running does not use again; 512 KiB is well below those and above
/// what an idle process touches between two checks. It is also what an
/// idle process may hold above its idle level until the hold
/// ([`HOLD_FIRST`]) is over, so it is kept small: a release costs about
/// 6 ms of CPU.
pub const GROWTH_BYTES: u64 = 512 << 10;

/// The longest from one release to the next: 2 minutes after the first
/// release, doubling with each release up to [`HOLD_AT_MOST`]. The pages
/// resident a minute after a release are not all pages idle running keeps
/// using: in its first minutes a process still runs rounds of start-up
/// work (AutoNAT probes, the DHT bootstrap retried at 1, 2, 4 … 256 s in a
/// small network), whose code stays resident after the rounds end, and
/// idle running slowly brings back code it runs rarely. Only a release
/// tells which pages are still used: those come back.
pub const HOLD_FIRST: Duration = Duration::from_secs(120);

/// The longest hold ([`HOLD_FIRST`]) once a process has run a while: 10
/// minutes, so an idle process releases six times an hour, each time
/// taking about 6 ms of CPU (`kith daemon`) and the minor faults that
/// bring its idle code back.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(600);

/// When to release: fed each reading of the resident mapped-file bytes,
/// it answers whether the pages should be given back now. After a release
/// it waits [`SETTLE`] and takes the next reading as the idle level. Then
/// it asks for a release as soon as a reading exceeds that level by more
/// than [`GROWTH_BYTES`], so pages pulled in by a burst of work are given
/// back within a [`CHECK_EVERY`] of the burst, and in any case once the
/// hold has passed since the release ([`HOLD_FIRST`], doubling up to
/// [`HOLD_AT_MOST`]): an idle process releases 1, 3, 7 and 15 minutes
/// after it starts and then every 10 minutes. While it settles, a
/// reading more than [`GROWTH_BYTES`] above the level before is released
/// at once, and such a level is taken only at the second try, and held
/// only [`HOLD_FIRST`]: otherwise a burst of work during the settling
/// minute (a peer's handshake, or a round of the engine's work, just
/// after a release) would count as idle and stay resident until the hold
/// is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleasePolicy {
    /// When the last release was.
    released: Instant,
    /// How long until the next release at the latest.
    hold: Duration,
    /// The idle level, in bytes, once [`SETTLE`] has passed.
    level: Option<u64>,
    /// The idle level taken before the last release.
    previous: Option<u64>,
    /// Whether the last release was asked for instead of taking a level
    /// well above `previous`; the next level is taken whatever it is.
    retried: bool,
}

impl ReleasePolicy {
    /// The state just after the first release, at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            released: now,
            hold: HOLD_FIRST,
            level: None,
            previous: None,
            retried: false,
        }
    }

    /// The caller released again at `now`: the idle level is to be taken
    /// anew, and the hold doubles.
    pub fn released(&mut self, now: Instant) {
        self.released = now;
        self.hold = self.hold.saturating_mul(2).min(HOLD_AT_MOST);
        self.previous = self.level.or(self.previous);
        self.level = None;
    }

    /// The idle level, once taken.
    pub fn level(&self) -> Option<u64> {
        self.level
    }

    /// Takes a reading of `file_bytes` made at `now`; true when the pages
    /// should be released (the caller then releases and calls
    /// [`ReleasePolicy::released`]).
    pub fn should_release(&mut self, now: Instant, file_bytes: u64) -> bool {
        let since = now.saturating_duration_since(self.released);
        match self.level {
            None => {
                let grown = self
                    .previous
                    .is_some_and(|previous| file_bytes > previous.saturating_add(GROWTH_BYTES));
                if grown && !self.retried {
                    self.retried = true;
                    return true;
                }
                if since < SETTLE {
                    return false;
                }
                if grown {
                    // Still high after one more release: taken, but only
                    // for HOLD_FIRST, in case it is a longer burst.
                    self.hold = HOLD_FIRST;
                }
                self.retried = false;
                self.level = Some(file_bytes);
                false
            }
            Some(level) => file_bytes > level.saturating_add(GROWTH_BYTES) || since >= self.hold,
        }
    }
}

/// What [`trim_heap`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Whether the C library unmapped any free memory.
    pub unmapped: bool,
    /// How far the process's anonymous resident memory fell meanwhile
    /// (other threads allocate too, so this is an estimate; 0 if it rose).
    pub anon_bytes: u64,
}

/// What [`release_file_pages`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Mappings released.
    pub mappings: usize,
    /// Bytes of them that were resident just before.
    pub resident_bytes: usize,
}

/// Why pages could not be released.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// `/proc/self/smaps` could not be read.
    #[error("cannot read /proc/self/smaps: {0}")]
    Smaps(std::io::Error),
    /// `/proc/self/statm` could not be read or made no sense.
    #[error("cannot read /proc/self/statm: {0}")]
    Statm(std::io::Error),
    /// The kernel refused to release a mapping; those before it were
    /// released.
    #[error("madvise on {path} refused: {error}")]
    Madvise {
        /// The mapped file.
        path: String,
        /// The kernel's answer.
        error: std::io::Error,
    },
}

/// What a Kith process calls once `main` has set up logging: on a thread
/// of its own, asleep in between, releases the pages of its program and
/// libraries ([`release_file_pages`]) and trims the heap ([`trim_heap`])
/// after [`STARTUP`], and again whenever [`ReleasePolicy`] finds the pages
/// grown past their idle level, logging what it gave back. A process that
/// ends sooner (a one-off command) loses nothing.
pub fn keep_releasing_pages() {
    let spawned = std::thread::Builder::new()
        .name("kith-release".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            std::thread::sleep(STARTUP);
            if !release_and_log() {
                return;
            }
            let mut policy = ReleasePolicy::new(Instant::now());
            loop {
                std::thread::sleep(CHECK_EVERY);
                match resident_file_bytes() {
                    Ok(bytes) if policy.should_release(Instant::now(), bytes) => {
                        if !release_and_log() {
                            return;
                        }
                        policy.released(Instant::now());
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the process's resident memory; not releasing pages again");
                        return;
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the thread that releases the program's pages");
    }
}

/// [`release_file_pages`] and [`trim_heap`], logged; false if the pages
/// cannot be released (then they never will be).
fn release_and_log() -> bool {
    let began = Instant::now();
    match release_file_pages().and_then(|released| Ok((released, trim_heap()?))) {
        Ok((released, trimmed)) => {
            tracing::debug!(
                mappings = released.mappings,
                resident_bytes = released.resident_bytes,
                heap_unmapped = trimmed.unmapped,
                heap_bytes = trimmed.anon_bytes,
                took_us = began.elapsed().as_micros(),
                "released the program's pages and free heap memory"
            );
            true
        }
        Err(error) => {
            tracing::warn!(%error, "cannot release the program's pages; not trying again");
            false
        }
    }
}

/// Bytes of this process's resident memory that are mapped files (and
/// shared memory): the third figure of `/proc/self/statm`. 0 on other
/// systems than 64-bit Linux.
pub fn resident_file_bytes() -> Result<u64, ReleaseError> {
    Ok(resident_bytes()?.file)
}

/// This process's resident memory, in bytes, from `/proc/self/statm`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Resident {
    /// Mapped files and shared memory.
    file: u64,
    /// The rest: heap, stacks, copied-on-write pages.
    anon: u64,
}

fn resident_bytes() -> Result<Resident, ReleaseError> {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        let statm = std::fs::read_to_string("/proc/self/statm").map_err(ReleaseError::Statm)?;
        let (resident, shared) = linux::statm_pages(&statm).ok_or_else(|| {
            ReleaseError::Statm(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected contents {statm:?}"),
            ))
        })?;
        let page = linux::page_size();
        Ok(Resident {
            file: shared.saturating_mul(page),
            anon: resident.saturating_sub(shared).saturating_mul(page),
        })
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    {
        Ok(Resident::default())
    }
}

/// Gives the heap's free memory back to the kernel: glibc's
/// `malloc_trim(0)`, which unmaps every whole free page inside each of
/// its arenas, not only at the top of the main heap as `free` does by
/// itself. A connection's handshake or a round of periodic work allocates
/// buffers on whichever thread ran it and frees them, and glibc keeps such
/// pages resident in that thread's arena. Safe to call at any time, from
/// any thread; does nothing with other C libraries or systems.
pub fn trim_heap() -> Result<Trimmed, ReleaseError> {
    let before = resident_bytes()?.anon;
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    let unmapped = linux::malloc_trim();
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    let unmapped = false;
    let after = resident_bytes()?.anon;
    Ok(Trimmed {
        unmapped,
        anon_bytes: before.saturating_sub(after),
    })
}

/// Unmaps every page of this process's read-only, unmodified mappings of
/// its program and libraries (see the crate's documentation), so that
/// only the pages used from now on are resident. Safe to call at any
/// time, from any thread.
pub fn release_file_pages() -> Result<Released, ReleaseError> {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        let smaps = std::fs::read_to_string("/proc/self/smaps").map_err(ReleaseError::Smaps)?;
        let mut released = Released::default();
        for mapping in linux::releasable(&linux::parse(&smaps)) {
            linux::release(mapping).map_err(|error| ReleaseError::Madvise {
                path: mapping.path.to_owned(),
                error,
            })?;
            released.mappings += 1;
            released.resident_bytes += mapping.rss_kb * 1024;
        }
        Ok(released)
    }
    #[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
    {
        Ok(Released::default())
    }
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod linux {
    use std::collections::HashSet;
    use std::ops::Range;

    /// One mapping of `/proc/self/smaps`.
    #[derive(Debug)]
    pub(super) struct Mapping<'a> {
        pub range: Range<usize>,
        pub perms: &'a str,
        pub path: &'a str,
        pub rss_kb: usize,
        /// Copied-on-write (or otherwise anonymous) pages in it.
        pub anonymous_kb: usize,
        pub locked_kb: usize,
    }

    /// The mappings of an `smaps` text; lines it does not understand are
    /// skipped, and a mapping whose counts are missing keeps them at a
    /// value that makes it ineligible.
    pub(super) fn parse(smaps: &str) -> Vec<Mapping<'_>> {
        let mut mappings: Vec<Mapping<'_>> = Vec::new();
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let Some(first) = fields.next() else { continue };
            if let Some((lo, hi)) = first.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                let perms = fields.next().unwrap_or("");
                // offset, device, inode, then the path (which may hold
                // spaces, as in "/x/y (deleted)").
                let path = line
                    .splitn(6, char::is_whitespace)
                    .nth(5)
                    .map_or("", str::trim);
                mappings.push(Mapping {
                    range: lo..hi,
                    perms,
                    path,
                    rss_kb: 0,
                    anonymous_kb: usize::MAX,
                    locked_kb: usize::MAX,
                });
                continue;
            }
            let (Some(mapping), Some(value)) = (mappings.last_mut(), fields.next()) else {
                continue;
            };
            let Ok(kb) = value.parse::<usize>() else {
                continue;
            };
            match first {
                "Rss:" => mapping.rss_kb = kb,
                "Anonymous:" => mapping.anonymous_kb = kb,
                "Locked:" => mapping.locked_kb = kb,
                _ => {}
            }
        }
        mappings
    }

    /// The mappings to release: not writable, of a file this process
    /// also maps executable (a loaded program or library), with no
    /// anonymous page and none locked.
    pub(super) fn releasable<'a>(mappings: &'a [Mapping<'a>]) -> Vec<&'a Mapping<'a>> {
        let objects: HashSet<&str> = mappings
            .iter()
            .filter(|m| m.path.starts_with('/') && m.perms.contains('x'))
            .map(|m| m.path)
            .collect();
        mappings
            .iter()
            .filter(|m| {
                objects.contains(m.path)
                    && !m.perms.contains('w')
                    && m.anonymous_kb == 0
                    && m.locked_kb == 0
                    && m.rss_kb > 0
                    && !m.range.is_empty()
            })
            .collect()
    }

    /// The resident pages, and of them those that are mapped files or
    /// shared memory: the second and third of `statm`'s counts (size,
    /// resident, shared, ...).
    pub(super) fn statm_pages(statm: &str) -> Option<(u64, u64)> {
        let mut counts = statm.split_whitespace().skip(1);
        let resident = counts.next()?.parse().ok()?;
        let shared = counts.next()?.parse().ok()?;
        Some((resident, shared))
    }

    /// glibc's `malloc_trim(0)`; true if it gave memory back.
    pub(super) fn malloc_trim() -> bool {
        #[cfg(target_env = "gnu")]
        {
            // SAFETY: malloc_trim takes each arena's lock itself and only
            // gives back pages that hold no allocation.
            unsafe { libc::malloc_trim(0) == 1 }
        }
        #[cfg(not(target_env = "gnu"))]
        {
            false
        }
    }

    pub(super) fn page_size() -> u64 {
        // SAFETY: sysconf only reads a configuration value.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).unwrap_or(4096)
    }

    pub(super) fn release(mapping: &Mapping<'_>) -> std::io::Result<()> {
        // SAFETY: the range is one whole mapping of a file, read-only and
        // with no anonymous page (checked by `releasable`): every byte in
        // it is the file's. MADV_DONTNEED drops the page-table entries
        // only; the next access faults the same bytes back in from the
        // page cache. No Rust reference can observe the difference.
        let rc = unsafe {
            libc::madvise(
                mapping.range.start as *mut std::ffi::c_void,
                mapping.range.len(),
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 08:01 42 /opt/kith/kith
Rss:                 100 kB
Anonymous:             0 kB
Locked:                0 kB
55d0a0100000-55d0a0200000 r-xp 00100000 08:01 42 /opt/kith/kith
Rss:                 200 kB
Anonymous:             0 kB
Locked:                0 kB
55d0a0200000-55d0a0210000 r--p 00200000 08:01 42 /opt/kith/kith
Rss:                  64 kB
Anonymous:            64 kB
Locked:                0 kB
55d0a0210000-55d0a0220000 rw-p 00210000 08:01 42 /opt/kith/kith
Rss:                  64 kB
Anonymous:             8 kB
Locked:                0 kB
7f0000000000-7f0000100000 r--p 00000000 08:01 77 /usr/share/fonts/a font.ttf
Rss:                  40 kB
Anonymous:             0 kB
Locked:                0 kB
7f0000200000-7f0000300000 r-xp 00000000 08:01 78 /usr/lib/libc.so.6 (deleted)
Rss:                  80 kB
Anonymous:             0 kB
Locked:                4 kB
7f0000300000-7f0000400000 r--p 00000000 08:01 79 /usr/lib/libm.so.6
Rss:                  12 kB
Anonymous:             0 kB
Locked:                0 kB
7f0000400000-7f0000500000 r-xp 00100000 08:01 79 /usr/lib/libm.so.6
Rss:                   4 kB
Locked:                0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
Locked:                0 kB
";

        #[test]
        fn statm_gives_the_resident_and_shared_counts() {
            assert_eq!(
                statm_pages("5000 1900 820 3000 0 900 0\n"),
                Some((1900, 820))
            );
            assert_eq!(statm_pages("5000 1900"), None);
            assert_eq!(statm_pages("5000 1900 many 3000"), None);
            assert_eq!(statm_pages("5000 lots 820 3000"), None);
            assert!(page_size() >= 4096);
        }

        #[test]
        fn only_clean_read_only_mappings_of_loaded_objects_are_released() {
            let mappings = parse(SMAPS);
            assert_eq!(mappings.len(), 9);
            assert_eq!(mappings[4].path, "/usr/share/fonts/a font.ttf");
            assert_eq!(mappings[5].path, "/usr/lib/libc.so.6 (deleted)");
            let chosen: Vec<(usize, &str)> = releasable(&mappings)
                .iter()
                .map(|m| (m.range.start, m.path))
                .collect();
            assert_eq!(
                chosen,
                [
                    (0x55d0_a000_0000, "/opt/kith/kith"),
                    (0x55d0_a010_0000, "/opt/kith/kith"),
                    (0x7f00_0030_0000, "/usr/lib/libm.so.6"),
                ],
                "not the relocated or writable data, not a font, not locked pages, \
                 not a mapping whose Anonymous count is missing, not the vDSO"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_idle_level_is_taken_once_the_process_has_settled() {
        let start = Instant::now();
        let mut policy = ReleasePolicy::new(start);
        // Refaults right after a release never trigger one, however large.
        assert!(!policy.should_release(start + CHECK_EVERY, 40 * MIB));
        assert_eq!(policy.level(), None);
        assert!(!policy.should_release(start + SETTLE, 3 * MIB));
        assert_eq!(policy.level(), Some(3 * MIB));
        policy.released(start + SETTLE * 2);
        assert_eq!(policy.level(), None, "taken anew after each release");
    }

    #[test]
    fn growth_past_the_idle_level_asks_for_a_release() {
        let start = Instant::now();
        let soon = start + SETTLE + CHECK_EVERY;
        let mut policy = ReleasePolicy::new(start);
        assert!(!policy.should_release(start + SETTLE, 3 * MIB));
        let watching = policy;
        assert!(!policy.should_release(soon, 3 * MIB + GROWTH_BYTES));
        assert!(!policy.should_release(soon, 2 * MIB), "shrinking is fine");
        assert!(policy.should_release(soon, 3 * MIB + GROWTH_BYTES + 4096));
        assert!(policy.should_release(soon, u64::MAX));
        // The idle level stays until the caller says it released.
        assert_eq!(policy, watching);
        let mut policy = ReleasePolicy::new(start);
        assert!(!policy.should_release(start + SETTLE, u64::MAX));
        assert!(!policy.should_release(soon, u64::MAX));
    }

    #[test]
    fn a_level_well_above_the_last_one_is_taken_only_at_the_second_try() {
        let start = Instant::now();
        let mut policy = ReleasePolicy::new(start);
        assert!(!policy.should_release(start + SETTLE, 3 * MIB));
        let mut at = start + SETTLE * 2;
        policy.released(at);
        // A burst in the settling minute: released at once, not taken as
        // the level.
        assert!(!policy.should_release(at + CHECK_EVERY, 3 * MIB + GROWTH_BYTES));
        assert!(policy.should_release(at + CHECK_EVERY * 2, 3 * MIB + GROWTH_BYTES + 4096));
        assert_eq!(policy.level(), None);
        at += CHECK_EVERY * 2;
        policy.released(at);
        // Still that high after one more release: it is the idle level
        // now, held only HOLD_FIRST.
        assert!(!policy.should_release(at + CHECK_EVERY, 5 * MIB));
        assert!(!policy.should_release(at + SETTLE, 5 * MIB));
        assert_eq!(policy.level(), Some(5 * MIB));
        assert!(!policy.should_release(at + HOLD_FIRST - CHECK_EVERY, 5 * MIB));
        assert!(policy.should_release(at + HOLD_FIRST, 5 * MIB));
        at += HOLD_FIRST;
        policy.released(at);
        assert!(!policy.should_release(at + SETTLE, 5 * MIB));
        at += SETTLE * 2;
        policy.released(at);
        // A level within GROWTH_BYTES of the last is taken at once.
        assert!(!policy.should_release(at + SETTLE, 5 * MIB + GROWTH_BYTES));
        assert_eq!(policy.level(), Some(5 * MIB + GROWTH_BYTES));
        at += SETTLE * 2;
        policy.released(at);
        assert!(
            policy.should_release(at + SETTLE, 7 * MIB),
            "retried once more"
        );
    }

    #[test]
    fn the_pages_are_released_once_the_hold_has_passed_and_the_hold_doubles() {
        let start = Instant::now();
        let mut policy = ReleasePolicy::new(start);
        assert!(!policy.should_release(start + SETTLE, 3 * MIB));
        let late = start + HOLD_FIRST;
        assert!(!policy.should_release(late - CHECK_EVERY, 3 * MIB + 4096));
        assert!(policy.should_release(late, 3 * MIB), "nothing new touched");
        assert!(policy.should_release(late, 2 * MIB));
        // Each release doubles the hold, up to HOLD_AT_MOST.
        let mut at = late;
        let mut holds = Vec::new();
        for _ in 0..6 {
            policy.released(at);
            assert!(!policy.should_release(at + SETTLE, 3 * MIB));
            let mut hold = SETTLE;
            while !policy.should_release(at + hold, 3 * MIB) {
                hold += CHECK_EVERY;
            }
            holds.push(hold.as_secs());
            at += hold;
        }
        assert_eq!(holds, [240, 480, 600, 600, 600, 600]);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    #[test]
    fn freed_heap_pages_below_live_memory_are_given_back() {
        // 64 MiB in 4 KiB blocks, written, then a block kept after them so
        // that `free` cannot shrink the heap from its top by itself.
        let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(16 * 1024);
        for _ in 0..blocks.capacity() {
            blocks.push(std::hint::black_box(vec![1u8; 4096]));
        }
        let fence = std::hint::black_box(vec![2u8; 4096]);
        drop(blocks);
        let trimmed = trim_heap().expect("statm");
        assert!(trimmed.unmapped, "{trimmed:?}");
        // Other tests allocate meanwhile; most of the 64 MiB must show.
        assert!(trimmed.anon_bytes >= 32 * MIB, "{trimmed:?}");
        assert_eq!(fence[4095], 2);
    }

    #[test]
    fn this_process_has_mapped_file_pages() {
        let bytes = resident_file_bytes().expect("statm");
        if cfg!(all(target_os = "linux", target_pointer_width = "64")) {
            // At least the test binary's own code being run.
            assert!(bytes >= 4096, "{bytes}");
            assert_eq!(bytes % 4096, 0);
        }
    }
}
