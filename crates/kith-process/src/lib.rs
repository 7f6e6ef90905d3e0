//! Housekeeping that Kith's long-running processes (`kith daemon`, the
//! window, `kithd`) ask of the operating system beyond what the standard
//! library offers. For now one thing: giving back the pages of code and
//! read-only data that start-up, or a round of periodic work, used and
//! idle running does not.
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
//! fault, no disk read), and only those. [`keep_releasing_pages`] does it
//! a minute after start and every five minutes after. The `kith` binary of
//! the packages is linked with the code an idle client runs packed
//! together (`scripts/build-ordered`, BENCHMARKS.md "memory"), so those
//! pages are few.
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

use std::time::Duration;

/// How long after it starts a process counts as starting up: by then a
/// client has joined the DHT, published its presence, polled its request
/// drop and fetched its mail, and a `kithd` has joined the DHT.
pub const STARTUP: Duration = Duration::from_secs(60);

/// How often, after [`STARTUP`], pages are given back again: what the
/// engine's half-hourly and hourly rounds (request drop, mail, presence,
/// DHT refresh) and the odd new connection ran stays resident until then,
/// not for the life of the process. Each release costs a few dozen page
/// faults as idle running touches its own code again: well under a
/// millisecond.
pub const RELEASE_EVERY: Duration = Duration::from_secs(5 * 60);

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
/// libraries ([`release_file_pages`]) after [`STARTUP`] and again every
/// [`RELEASE_EVERY`], logging what it gave back. A process that ends
/// sooner (a one-off command) loses nothing.
pub fn keep_releasing_pages() {
    let spawned = std::thread::Builder::new()
        .name("kith-release".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            std::thread::sleep(STARTUP);
            loop {
                match release_file_pages() {
                    Ok(released) => tracing::debug!(
                        mappings = released.mappings,
                        resident_bytes = released.resident_bytes,
                        "released the program's pages"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "cannot release the program's pages; not trying again");
                        return;
                    }
                }
                std::thread::sleep(RELEASE_EVERY);
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the thread that releases the program's pages");
    }
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
