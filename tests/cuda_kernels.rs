//! The CUDA kernel must compile on a machine without a GPU: NVRTC (a
//! library, not a driver) compiles it for the datacenter architectures, and
//! ptxas must report no register spills. Ignored, with the reason, where
//! NVRTC is absent; `ECF_REQUIRE_NVRTC=1` makes that a failure.

mod common;

use common::harness::{self, Ran};

const TESTS: [(&str, harness::Test); 4] = [
    (
        "kernel_compiles_for_every_datacenter_architecture_without_spills",
        kernels::kernel_compiles_for_every_datacenter_architecture_without_spills,
    ),
    (
        "spill_reports_are_recognised",
        kernels::spill_reports_are_recognised,
    ),
    (
        "occupancy_follows_each_architectures_limits",
        kernels::occupancy_follows_each_architectures_limits,
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
    pub use without_cuda as kernel_compiles_for_every_datacenter_architecture_without_spills;
    pub use without_cuda as spill_reports_are_recognised;
    pub use without_cuda as occupancy_follows_each_architectures_limits;
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

    pub fn kernel_compiles_for_every_datacenter_architecture_without_spills() -> Ran {
        require_nvrtc()?;
        let (major, minor) = cuda::nvrtc_version().unwrap();
        eprintln!("NVRTC {major}.{minor}");
        for compute_capability in [80, 90, 100, 120] {
            let arch = format!("sm_{compute_capability}");
            let kernel = cuda::compile_kernel(&arch).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("{arch}:\n{}", kernel.log.trim_end());
            let (registers, shared_bytes) = cuda::resource_usage(&kernel.log)
                .unwrap_or_else(|| panic!("{arch}: ptxas reported nothing:\n{}", kernel.log));
            let spills = cuda::spill_reports(&kernel.log);
            assert!(
                spills.is_empty(),
                "{arch}: register spills:\n{}",
                spills.join("\n")
            );
            let occupancy = cuda::occupancy(compute_capability, 256, registers, shared_bytes)
                .unwrap_or_else(|| panic!("{arch}: no SM limits known"));
            eprintln!(
                "{arch}: {registers} registers, {shared_bytes} bytes of shared memory: occupancy {:.0} %",
                100.0 * occupancy
            );
            assert!(
                occupancy >= 0.5,
                "{arch}: occupancy {occupancy:.3} under 50 %"
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

    pub fn occupancy_follows_each_architectures_limits() -> Ran {
        let log = "ptxas info    : Used 48 registers, used 1 barriers, 10248 bytes smem, 376 bytes cmem[0]\n";
        assert_eq!(cuda::resource_usage(log), Some((48, 10248)));
        // 48 registers: 1536 a warp, 5 blocks of 8 warps in 64K registers.
        assert_eq!(cuda::occupancy(90, 256, 48, 10248), Some(40.0 / 64.0));
        // 63 registers round up to 2048 a warp: 4 blocks.
        assert_eq!(cuda::occupancy(100, 256, 63, 10248), Some(32.0 / 64.0));
        assert_eq!(cuda::occupancy(120, 256, 63, 10248), Some(32.0 / 48.0));
        // Shared memory binds: 40 KiB a block leaves 2 of 100 KiB on sm_120…
        assert_eq!(cuda::occupancy(120, 256, 32, 40 << 10), Some(16.0 / 48.0));
        // …and threads bind on sm_80 for small blocks of few registers.
        assert_eq!(cuda::occupancy(80, 256, 16, 1024), Some(1.0));
        assert_eq!(cuda::occupancy(75, 256, 16, 1024), None);
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
