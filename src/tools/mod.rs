//! What the command line runs, as library functions returning reports the
//! CLI prints (or serialises with `--json`).

pub mod bench;
pub mod demo;
pub mod inspect;
pub mod selftest;
