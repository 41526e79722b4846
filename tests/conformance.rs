//! The conformance suite: one test body per case family, instantiated for
//! every backend. The CPU reference decoder is the oracle; every backend
//! must return the original bytes exactly. A backend absent here shows its
//! tests as ignored, with the reason; `ECF_REQUIRE_<NAME>=1` makes that a
//! failure.

mod common;

use common::harness::{self, Skip};
use ecfloat::backend::Backend;

/// The wgpu backend with `limits` imposed below the device's.
#[cfg(feature = "wgpu")]
fn wgpu_with(limits: ecfloat::backend::wgpu::LimitOverrides) -> Result<Box<dyn Backend>, Skip> {
    match ecfloat::backend::wgpu::WgpuBackend::with_limits(limits) {
        Ok(backend) => Ok(Box::new(backend)),
        Err(error) => Err(harness::absent("wgpu", error)),
    }
}

/// The wgpu backend with limits far below any device's, so that tensors
/// split into several bindings and dispatches, as large ones do on real
/// hardware.
#[cfg(feature = "wgpu")]
fn wgpu_with_small_limits() -> Result<Box<dyn Backend>, Skip> {
    wgpu_with(ecfloat::backend::wgpu::LimitOverrides {
        // One default block of FP32 output (256 KiB) must still fit.
        max_binding_bytes: Some(300_000),
        max_workgroups: Some(3),
        ..Default::default()
    })
}

/// The wgpu backend as a device with only WebGPU's default 16 KiB of
/// workgroup memory runs it: with the compact decode shader.
#[cfg(feature = "wgpu")]
fn wgpu_with_16_kib_of_workgroup_memory() -> Result<Box<dyn Backend>, Skip> {
    wgpu_with(ecfloat::backend::wgpu::LimitOverrides {
        max_workgroup_storage_bytes: Some(16 << 10),
        ..Default::default()
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_with_small_limits() -> Result<Box<dyn Backend>, Skip> {
    Err(harness::absent("wgpu", "not compiled in"))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_with_16_kib_of_workgroup_memory() -> Result<Box<dyn Backend>, Skip> {
    Err(harness::absent("wgpu", "not compiled in"))
}

fn main() {
    let mut trials = common::conformance_trials("cpu", || harness::require_backend("cpu"));
    trials.extend(common::conformance_trials("wgpu", || {
        harness::require_backend("wgpu")
    }));
    trials.extend(common::conformance_trials(
        "wgpu_split_dispatches",
        wgpu_with_small_limits,
    ));
    trials.extend(common::conformance_trials(
        "wgpu_16_kib_workgroups",
        wgpu_with_16_kib_of_workgroup_memory,
    ));
    trials.extend(common::conformance_trials("cuda", || {
        harness::require_backend("cuda")
    }));
    harness::run(trials);
}
