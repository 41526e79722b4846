//! The conformance suite: one test body per case family, instantiated for
//! every backend. The CPU reference decoder is the oracle; every backend
//! must return the original bytes exactly. An absent backend prints
//! `<name>: skipped, <reason>`; `ECF_REQUIRE_<NAME>=1` makes that a failure.

mod common;

use ecfloat::backend::Backend;
use ecfloat::conformance::{self, Family};

fn check_family(backend: &dyn Backend, family: Family) {
    let failures: Vec<String> = family
        .cases()
        .iter()
        .filter_map(|case| {
            conformance::check_case(backend, case)
                .err()
                .map(|error| format!("{}: {error}", case.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        backend.name(),
        failures.join("\n")
    );
}

fn check_real_weights(backend: &dyn Backend) {
    for file in common::testdata_files() {
        let results = conformance::check_file(backend, &file).unwrap();
        assert!(
            !results.is_empty(),
            "{} has no float tensors",
            file.display()
        );
        for result in results {
            if let Err(error) = result.result {
                panic!(
                    "{}: {}: {}: {error}",
                    backend.name(),
                    file.display(),
                    result.name
                );
            }
        }
    }
}

fn check_vectors(backend: &dyn Backend) {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut checked = 0;
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".ecf.safetensors") {
            let checks =
                ecfloat::container::verify_file_on(&path, backend, &Default::default()).unwrap();
            assert!(
                checks.all_ok(),
                "{}: {}: {checks:?}",
                backend.name(),
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no vectors in {}", directory.display());
}

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

macro_rules! conformance_tests {
    ($module:ident, $open:expr) => {
        mod $module {
            use super::*;

            fn with_backend(check: impl FnOnce(&dyn Backend)) {
                let open: fn() -> Option<Box<dyn Backend>> = $open;
                if let Some(backend) = open() {
                    check(backend.as_ref());
                }
            }

            #[test]
            fn decodes_heavy_tailed_weights() {
                with_backend(|b| check_family(b, Family::HeavyTailed));
            }

            #[test]
            fn decodes_a_single_exponent() {
                with_backend(|b| check_family(b, Family::SingleExponent));
            }

            #[test]
            fn decodes_all_exponents() {
                with_backend(|b| check_family(b, Family::AllExponents));
            }

            #[test]
            fn decodes_nan_inf_zeros_and_subnormals() {
                with_backend(|b| check_family(b, Family::SpecialValues));
            }

            #[test]
            fn decodes_the_longest_codes() {
                with_backend(|b| check_family(b, Family::LongestCodes));
            }

            #[test]
            fn decodes_empty_single_and_odd_lengths() {
                with_backend(|b| check_family(b, Family::Lengths));
            }

            #[test]
            fn decodes_random_bits() {
                with_backend(|b| check_family(b, Family::RandomBits));
            }

            #[test]
            fn decodes_every_block_mode() {
                with_backend(|b| check_family(b, Family::MixedBlockModes));
            }

            #[test]
            fn decodes_chunks_with_sync_exceptions() {
                with_backend(|b| check_family(b, Family::SyncExceptions));
            }

            #[test]
            fn decodes_constant_rest_bits() {
                with_backend(|b| check_family(b, Family::ConstantRestBits));
            }

            #[test]
            fn decodes_many_tensors_into_one_buffer() {
                with_backend(|b| {
                    let mut cases = Family::Lengths.cases();
                    cases.extend(Family::MixedBlockModes.cases());
                    cases.extend(Family::SpecialValues.cases());
                    conformance::check_batch(b, &cases).unwrap();
                });
            }

            #[test]
            fn decodes_real_weights() {
                with_backend(check_real_weights);
            }

            #[test]
            fn decodes_checked_in_vectors() {
                with_backend(check_vectors);
            }
        }
    };
}

conformance_tests!(cpu, || common::backend_or_skip("cpu"));
conformance_tests!(wgpu, || common::backend_or_skip("wgpu"));
conformance_tests!(wgpu_split_dispatches, wgpu_with_small_limits);
conformance_tests!(cuda, || common::backend_or_skip("cuda"));
