//! The CUDA kernel must compile on a machine without a GPU: NVRTC (a
//! library, not a driver) compiles it for the datacenter architectures, and
//! ptxas must report no register spills. Skipped, with the reason printed,
//! where NVRTC is absent; `ECF_REQUIRE_NVRTC=1` makes that a failure.

#![cfg(feature = "cuda")]

use ecfloat::backend::cuda;

#[test]
fn kernel_compiles_for_ampere_and_hopper_without_spills() {
    if !cuda::nvrtc_present() {
        if std::env::var("ECF_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("NVRTC is required (ECF_REQUIRE_NVRTC=1) but libnvrtc.so.12 cannot be loaded");
        }
        eprintln!("nvrtc: skipped, libnvrtc.so.12 cannot be loaded");
        return;
    }
    let (major, minor) = cuda::nvrtc_version().unwrap();
    eprintln!("NVRTC {major}.{minor}");
    for arch in ["sm_80", "sm_90"] {
        let kernel = cuda::compile_kernel(arch).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{arch}:\n{}", kernel.log.trim_end());
        assert!(
            kernel.log.contains("registers"),
            "{arch}: ptxas reported nothing:\n{}",
            kernel.log
        );
        let spills = cuda::spill_reports(&kernel.log);
        assert!(
            spills.is_empty(),
            "{arch}: register spills:\n{}",
            spills.join("\n")
        );
    }
}

#[test]
fn spill_reports_are_recognised() {
    let log = "ptxas info    : Used 32 registers\nptxas         .     0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n";
    assert_eq!(cuda::spill_reports(log).len(), 1);
    let clean =
        "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n";
    assert!(cuda::spill_reports(clean).is_empty());
}

#[test]
fn kernel_compiles_to_ptx_for_a_device_newer_than_nvrtc() {
    if !cuda::nvrtc_present() {
        eprintln!("nvrtc: skipped, libnvrtc.so.12 cannot be loaded");
        return;
    }
    let supported = cuda::supported_architectures().unwrap();
    eprintln!("NVRTC compiles for {supported:?}");
    assert!(
        supported.contains(&80) && supported.contains(&90),
        "{supported:?}"
    );
    // A device one architecture past the newest NVRTC knows.
    let newest = *supported.iter().max().unwrap();
    let target = cuda::kernel_target(newest + 1, &supported).unwrap();
    assert_eq!(target, cuda::KernelTarget::Ptx(format!("compute_{newest}")));
    let kernel =
        cuda::compile(cuda::KERNEL_SOURCE, "decode.cu", &target).unwrap_or_else(|e| panic!("{e}"));
    let ptx = String::from_utf8(kernel.image).unwrap();
    assert!(
        ptx.contains(".entry decode"),
        "{}",
        &ptx[..ptx.len().min(500)]
    );
}
