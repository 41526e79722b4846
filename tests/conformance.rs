//! The conformance suite: one test body per case family, instantiated for
//! every backend. The CPU reference decoder is the oracle; every backend
//! must return the original bytes exactly. An absent backend prints
//! `<name>: skipped, <reason>`; `ECF_REQUIRE_<NAME>=1` makes that a failure.

#[macro_use]
mod common;

use ecfloat::backend::Backend;

/// The wgpu backend with limits far below any device's, so that tensors
/// split into several bindings and dispatches, as large ones do on real
/// hardware.
fn wgpu_with_small_limits() -> Option<Box<dyn Backend>> {
    #[cfg(feature = "wgpu")]
    {
        use ecfloat::backend::wgpu::{LimitOverrides, WgpuBackend};
        let limits = LimitOverrides {
            // One default block of FP32 output (256 KiB) must still fit.
            max_binding_bytes: Some(300_000),
            max_workgroups: Some(3),
        };
        match WgpuBackend::with_limits(limits) {
            Ok(backend) => return Some(Box::new(backend)),
            Err(error) => common::backend_or_skip_because("wgpu", &error.to_string()),
        }
    }
    #[cfg(not(feature = "wgpu"))]
    common::backend_or_skip_because("wgpu", "not compiled in");
    None
}

conformance_tests!(cpu, || common::backend_or_skip("cpu"));
conformance_tests!(wgpu, || common::backend_or_skip("wgpu"));
conformance_tests!(wgpu_split_dispatches, wgpu_with_small_limits);
conformance_tests!(cuda, || common::backend_or_skip("cuda"));
