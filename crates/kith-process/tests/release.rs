//! The start-up pages of this test binary (a position-independent
//! executable, linked the way Kith's binaries are) leave the process's
//! resident memory and read back unchanged, while its relocated data
//! stays as the loader left it.

#![cfg(all(target_os = "linux", target_pointer_width = "64"))]
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

const PAGE: usize = 4096;

/// 1 MiB of read-only data with no two pages alike, built at compile
/// time so that it lies in the binary's `.rodata`.
static TABLE: [u64; 128 * 1024] = {
    let mut table = [0u64; 128 * 1024];
    let mut i = 0;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while i < table.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        table[i] = x;
        i += 1;
    }
    table
};

/// Pointers the loader writes at start-up (`.data.rel.ro`).
static NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];

fn table_range() -> Range<usize> {
    let start = std::hint::black_box(TABLE.as_ptr()) as usize;
    start..start + size_of_val(&TABLE)
}

/// How many of the whole pages inside `range` are resident, from
/// `/proc/self/pagemap` (bit 63 of each page's entry).
fn resident_pages(range: &Range<usize>) -> usize {
    let (first, last) = (range.start.div_ceil(PAGE), range.end / PAGE);
    let mut pagemap = File::open("/proc/self/pagemap").expect("pagemap");
    pagemap
        .seek(SeekFrom::Start(first as u64 * 8))
        .expect("seek");
    let mut entries = vec![0u8; (last - first) * 8];
    pagemap.read_exact(&mut entries).expect("read pagemap");
    entries
        .chunks_exact(8)
        .filter(|e| u64::from_le_bytes((*e).try_into().expect("8 bytes")) >> 63 == 1)
        .count()
}

/// A checksum of the table, reading (and so faulting in) every word.
fn checksum() -> u64 {
    std::hint::black_box(&TABLE)
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, w| {
            (h ^ w).wrapping_mul(0x100_0000_01b3)
        })
}

/// The anonymous (copied-on-write) KiB in this binary's mappings.
fn binary_anonymous_kb() -> usize {
    let exe = std::fs::read_link("/proc/self/exe").expect("exe");
    let exe = exe.to_string_lossy();
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut in_binary = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            in_binary = line.ends_with(&*exe);
        } else if in_binary && first == "Anonymous:" {
            total += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
                .expect("Anonymous: N kB");
        }
    }
    total
}

#[test]
fn start_up_pages_leave_and_read_back_the_same() {
    let table = table_range();
    let before = checksum();
    assert_eq!(resident_pages(&table), 255, "the table was just read");
    let anonymous = binary_anonymous_kb();
    assert!(anonymous > 0, "the loader wrote some of the binary's pages");

    let released = kith_process::release_file_pages().expect("release");
    assert!(released.mappings >= 2, "{released:?}");
    assert!(
        released.resident_bytes >= 255 * PAGE,
        "the table alone had more resident: {released:?}"
    );
    // Reading other read-only data near the table (a message, say) maps
    // the 64 KiB around it back in (the kernel's fault-around), so a
    // window at either end of the table may come back.
    let left = resident_pages(&table);
    assert!(left <= 32, "{left} pages of the table still resident");
    assert_eq!(
        binary_anonymous_kb(),
        anonymous,
        "the loader's copies were kept"
    );

    assert_eq!(checksum(), before, "the table reads back differently");
    assert!(
        resident_pages(&table) > 0,
        "reading faults the pages back in"
    );
    assert_eq!(
        std::hint::black_box(&NAMES).join(" "),
        "alice bob carol dave"
    );
}
