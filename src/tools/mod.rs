//! What the command line runs, as library functions returning reports the
//! CLI prints (or serialises with `--json`).

pub mod analyze;
pub mod bench;
pub mod demo;
pub mod inspect;
pub mod selftest;
pub mod verify;

/// This process's peak resident memory so far, in bytes (Linux: VmHWM);
/// `None` where the system does not say.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}
