//! What the command line runs: one module per `ecf` command, each a library
//! function returning a report. A report prints itself as text
//! ([`Report::write_text`]) or serialises as the command's `--json`
//! document (`docs/JSON.md`); the CLI only parses arguments and prints.

pub mod analyze;
pub mod backends;
pub mod bench;
pub mod compress;
pub mod decompress;
pub mod demo;
pub mod inspect;
pub mod selftest;
pub mod verify;

use std::fmt;
use std::io::{self, Write};

/// What a command prints.
pub trait Report: serde::Serialize {
    /// The report as text for a person.
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()>;

    /// Whether the command did what was asked (exit status 0): `false` when
    /// it ran to the end but found something wrong (a failed check).
    fn succeeded(&self) -> bool {
        true
    }
}

/// The documents `ecf docs` prints, by name: what an installed binary has
/// in place of the source tree's `docs/`.
pub const DOCUMENTS: [(&str, &str); 2] = [
    ("json", include_str!("../../docs/JSON.md")),
    ("format", include_str!("../../docs/FORMAT.md")),
];

/// The text of document `name` of [`DOCUMENTS`].
pub fn document(name: &str) -> crate::Result<&'static str> {
    DOCUMENTS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, text)| *text)
        .ok_or_else(|| {
            let names: Vec<&str> = DOCUMENTS.iter().map(|(known, _)| *known).collect();
            crate::Error::Usage(format!(
                "no document {name:?}; there are {}",
                names.join(", ")
            ))
        })
}

/// Sets the number of worker threads for encoding and CPU decoding; call
/// once, before any work.
pub fn use_threads(threads: usize) -> crate::Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
        .map_err(|e| crate::Error::Usage(format!("cannot start {threads} threads: {e}")))
}

/// This process's peak resident memory so far, in bytes (Linux: VmHWM);
/// `None` where the system does not say.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

/// Memory the system can give this process without swapping, in bytes
/// (Linux: MemAvailable); `None` where the system does not say.
pub(crate) fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

/// A byte count for people, in the decimal units every figure of ecfloat
/// uses (1 MB = 10⁶ bytes, as in GB/s): `512 B`, `1.50 kB`, `3.26 MB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
        let bytes = self.0 as f64;
        match UNITS.iter().find(|(_, scale)| bytes >= *scale) {
            Some((unit, scale)) => write!(f, "{:.2} {unit}", bytes / scale),
            None => write!(f, "{} B", self.0),
        }
    }
}

/// `count` and `noun`, plural unless one: `1 tensor`, `3 tensors`.
pub fn count(count: impl Into<u64>, noun: &str) -> String {
    let count = count.into();
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// A figure that may be absent, printed with `precision` decimals or `-`.
pub(crate) fn optional(value: Option<f64>, precision: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.precision$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_in_decimal_units() {
        assert_eq!(Bytes(0).to_string(), "0 B");
        assert_eq!(Bytes(999).to_string(), "999 B");
        assert_eq!(Bytes(1_500).to_string(), "1.50 kB");
        assert_eq!(Bytes(3_260_000).to_string(), "3.26 MB");
        assert_eq!(Bytes(14_500_000_000).to_string(), "14.50 GB");
        assert_eq!(Bytes(2_000_000_000_000).to_string(), "2.00 TB");
    }

    #[test]
    fn counts_are_plural_unless_one() {
        assert_eq!(count(0u64, "tensor"), "0 tensors");
        assert_eq!(count(1u64, "tensor"), "1 tensor");
        assert_eq!(count(2usize as u64, "thread"), "2 threads");
    }
}
