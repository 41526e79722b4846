//! The CUDA kernel must compile on a machine without a GPU: NVRTC (a
//! library, not a driver) compiles it for the datacenter architectures, and
//! ptxas must report no register spills. Ignored, with the reason, where
//! NVRTC is absent; `ECF_REQUIRE_NVRTC=1` makes that a failure.

mod common;

use common::harness::{self, Ran};

const TESTS: [(&str, harness::Test); 3] = [
    (
        "kernel_compiles_for_ampere_and_hopper_without_spills",
        kernels::kernel_compiles_for_ampere_and_hopper_without_spills,
    ),
    (
        "spill_reports_are_recognised",
        kernels::spill_reports_are_recognised,
    ),
    (
        "kernel_compiles_to_ptx_for_a_device_newer_than_nvrtc",
        kernels::kernel_compiles_to_ptx_for_a_device_newer_than_nvrtc,
    ),
];

fn main() {
    harness::run(
        TESTS
            .into_iter()
            .map(|(name, test)| harness::trial(name, test))
            .collect(),
    );
}

#[cfg(not(feature = "cuda"))]
mod kernels {
    use super::*;

    pub fn without_cuda() -> Ran {
        Err(harness::Skip(
            "the cuda feature is not compiled in".to_string(),
        ))
    }
    pub use without_cuda as kernel_compiles_for_ampere_and_hopper_without_spills;
    pub use without_cuda as spill_reports_are_recognised;
    pub use without_cuda as kernel_compiles_to_ptx_for_a_device_newer_than_nvrtc;
}

#[cfg(feature = "cuda")]
mod kernels {
    use super::*;
    use ecfloat::backend::cuda;

    fn require_nvrtc() -> Ran {
        if cuda::nvrtc_present() {
            Ok(())
        } else {
            Err(harness::absent("nvrtc", "libnvrtc.so.12 cannot be loaded"))
        }
    }

    pub fn kernel_compiles_for_ampere_and_hopper_without_spills() -> Ran {
        require_nvrtc()?;
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
        Ok(())
    }

    pub fn spill_reports_are_recognised() -> Ran {
        let log = "ptxas info    : Used 32 registers\nptxas         .     0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n";
        assert_eq!(cuda::spill_reports(log).len(), 1);
        let clean =
            "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n";
        assert!(cuda::spill_reports(clean).is_empty());
        Ok(())
    }

    pub fn kernel_compiles_to_ptx_for_a_device_newer_than_nvrtc() -> Ran {
        require_nvrtc()?;
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
        let kernel = cuda::compile(cuda::KERNEL_SOURCE, "decode.cu", &target)
            .unwrap_or_else(|e| panic!("{e}"));
        let ptx = String::from_utf8(kernel.image).unwrap();
        assert!(
            ptx.contains(".entry decode"),
            "{}",
            &ptx[..ptx.len().min(500)]
        );
        Ok(())
    }
}
