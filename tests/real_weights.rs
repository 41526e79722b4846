//! The real weights of `../shared/testdata`: every file round-trips through
//! the command line byte for byte, and compresses below ZipNN. Where the
//! test data is absent, these tests show as ignored, with the reason.
//! (Each backend decodes the same files in `conformance.rs`.)

mod common;

use common::harness::{self, Ran};
use common::{ecf, stderr};
use ecfloat::container::{self, CompressOptions};

fn main() {
    harness::run(vec![
        harness::trial(
            "real_files_round_trip_byte_for_byte",
            real_files_round_trip_byte_for_byte,
        ),
        harness::trial(
            "real_weights_compress_below_zipnn_and_near_the_entropy_bound",
            real_weights_compress_below_zipnn_and_near_the_entropy_bound,
        ),
    ]);
}

fn real_files_round_trip_byte_for_byte() -> Ran {
    let dir = tempfile::tempdir().unwrap();
    for file in harness::require_testdata_files()? {
        let compressed = dir.path().join("model.ecf.safetensors");
        let rebuilt = dir.path().join("model.safetensors");
        let output = ecf(&[
            "compress",
            file.to_str().unwrap(),
            "-o",
            compressed.to_str().unwrap(),
            "--force",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let output = ecf(&["decompress", compressed.to_str().unwrap(), "--force"]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(
            std::fs::read(&rebuilt).unwrap() == std::fs::read(&file).unwrap(),
            "{} did not round-trip",
            file.display()
        );
    }
    Ok(())
}

/// ZipNN 0.5.4's ratios and the per-tensor exponent-entropy bound on the
/// test weights, as measured in `../shared/testdata/README.md`. The same
/// comparison, run live, is `scripts/compare_zipnn.py` (see BENCHMARKS.md).
const REFERENCE_RATIOS: [(&str, f64, f64); 6] = [
    ("all-MiniLM-L6-v2.bf16.safetensors", 0.6652, 0.6661),
    ("all-MiniLM-L6-v2.e4m3.safetensors", 0.8292, 0.8317),
    ("easyocr-english-g2.f32.safetensors", 0.8318, 0.8318),
    ("easyocr-english-g2.bf16.safetensors", 0.6636, 0.6637),
    ("easyocr-english-g2.f16.safetensors", 0.8467, 0.8500),
    ("easyocr-english-g2.e4m3.safetensors", 0.8271, 0.8260),
];

fn real_weights_compress_below_zipnn_and_near_the_entropy_bound() -> Ran {
    let testdata = harness::require_testdata()?;
    let directory = tempfile::tempdir().unwrap();
    for (name, zipnn, bound) in REFERENCE_RATIOS {
        let input = testdata.join(name);
        let output = directory.path().join(name);
        let report =
            container::compress_file(&input, &output, &CompressOptions::default()).unwrap();
        let ratio = report.ratio();
        assert!(
            ratio <= zipnn,
            "{name}: ratio {ratio:.4} is above ZipNN's {zipnn}"
        );
        if name.contains("bf16") {
            assert!(
                ratio <= bound + 0.003,
                "{name}: ratio {ratio:.4} is over 0.3 points above the bound {bound}"
            );
        }
        eprintln!("{name}: {ratio:.4} (ZipNN {zipnn}, bound {bound})");
    }
    Ok(())
}
