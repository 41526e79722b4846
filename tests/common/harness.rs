//! Test files whose tests depend on what the machine has — a GPU backend,
//! g++, NVRTC, `../shared/testdata` — run under this harness
//! (`harness = false` in Cargo.toml), so that a test that cannot run shows
//! in cargo's output as `ignored (<reason>)`, never as `ok`.
//!
//! A test returns `Err(Skip)` when something it needs is absent; it fails
//! by panicking, as under the built-in harness. `ECF_REQUIRE_<NAME>=1`
//! turns the absence of `<NAME>` into a failure, so CI cannot pass by
//! skipping what it installs.

use std::path::PathBuf;

use ecfloat::backend::{self, Backend};
use libtest_mimic::{Arguments, Completion, Trial};

/// Why a test did not run.
#[derive(Debug)]
pub struct Skip(pub String);

/// What a test under this harness returns.
pub type Ran = Result<(), Skip>;

/// A test function under this harness.
pub type Test = fn() -> Ran;

/// A test that may skip itself.
pub fn trial(name: impl Into<String>, test: impl FnOnce() -> Ran + Send + 'static) -> Trial {
    Trial::ignorable_test(name, move || match test() {
        Ok(()) => Ok(Completion::Completed),
        Err(Skip(reason)) => Ok(Completion::ignored_with(reason)),
    })
}

/// A test that runs only when asked for (`-- --ignored`), as
/// `#[ignore = "…"]` does under the built-in harness.
pub fn on_request(name: impl Into<String>, test: impl FnOnce() -> Ran + Send + 'static) -> Trial {
    trial(name, test).with_ignored_flag(true)
}

/// Runs `trials` with the command line's filters and options, and exits.
pub fn run(trials: Vec<Trial>) -> ! {
    libtest_mimic::run(&Arguments::from_args(), trials).exit()
}

/// `Err(Skip)` for `what`, unless `ECF_REQUIRE_<NAME>=1` makes its absence
/// a failure.
pub fn absent(name: &str, reason: impl std::fmt::Display) -> Skip {
    let variable = format!("ECF_REQUIRE_{}", name.to_uppercase());
    if std::env::var(&variable).is_ok_and(|v| v == "1") {
        panic!("{name} is required ({variable}=1) but unavailable: {reason}");
    }
    let reason = reason.to_string();
    if reason.starts_with(name) {
        Skip(reason)
    } else {
        Skip(format!("{name}: {reason}"))
    }
}

/// Backend `name`, or why it cannot be opened here.
pub fn require_backend(name: &str) -> Result<Box<dyn Backend>, Skip> {
    backend::open(name).map_err(|error| absent(name, error))
}

/// `../shared/testdata`, or why the tests on real weights cannot run.
pub fn require_testdata() -> Result<PathBuf, Skip> {
    super::testdata().ok_or_else(|| Skip(format!("{} is absent", super::testdata_dir().display())))
}

/// The `.safetensors` files of the test data, sorted.
pub fn require_testdata_files() -> Result<Vec<PathBuf>, Skip> {
    require_testdata()?;
    Ok(super::testdata_files())
}
