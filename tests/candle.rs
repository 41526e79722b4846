//! Compressed checkpoints in candle: every tensor of every test file, read
//! through the `VarBuilder` backend (`ecfloat::candle`), equals candle's own
//! safetensors loading of the original in dtype, shape and every bit, as
//! stored and converted. Without the `candle` feature or the test data,
//! the tests show as ignored, with the reason.

mod common;

use common::harness::{self, Ran};

fn main() {
    harness::run(vec![
        harness::trial(
            "every_tensor_loads_as_candle_loads_the_original",
            every_tensor_loads_as_candle_loads_the_original,
        ),
        harness::trial(
            "a_directory_of_shards_loads_and_checks_shapes",
            a_directory_of_shards_loads_and_checks_shapes,
        ),
    ]);
}

#[cfg(not(feature = "candle"))]
fn every_tensor_loads_as_candle_loads_the_original() -> Ran {
    Err(harness::absent(
        "candle",
        "not compiled in (build with --features candle)",
    ))
}

#[cfg(not(feature = "candle"))]
fn a_directory_of_shards_loads_and_checks_shapes() -> Ran {
    Err(harness::absent(
        "candle",
        "not compiled in (build with --features candle)",
    ))
}

/// A CPU tensor's bytes, as candle would write them to safetensors.
#[cfg(feature = "candle")]
fn raw_bytes(tensor: &candle_core::Tensor) -> Vec<u8> {
    safetensors::View::data(tensor).into_owned()
}

#[cfg(feature = "candle")]
fn every_tensor_loads_as_candle_loads_the_original() -> Ran {
    use candle_core::{DType, Device};
    use ecfloat::candle::{CompressedTensors, var_builder};

    let dir = tempfile::tempdir().unwrap();
    let cpu = Device::Cpu;
    for file in harness::require_testdata_files()? {
        let compressed = dir.path().join(file.file_name().unwrap());
        ecfloat::container::compress_file(&file, &compressed, &Default::default()).unwrap();
        let tensors = CompressedTensors::open(&compressed).unwrap();
        let expected = candle_core::safetensors::load(&file, &cpu).unwrap();
        assert_eq!(
            tensors.names().count(),
            expected.len(),
            "{}",
            file.display()
        );
        let ours = var_builder(&compressed, DType::F32, &cpu).unwrap();
        let theirs = candle_nn::VarBuilder::from_tensors(expected.clone(), DType::F32, &cpu);
        for (name, want) in &expected {
            let got = tensors.load(name, &cpu).unwrap();
            assert_eq!(got.dtype(), want.dtype(), "{name}");
            assert_eq!(got.shape(), want.shape(), "{name}");
            assert!(raw_bytes(&got) == raw_bytes(want), "{name}: bits differ");
            // Converted, as a model asks for them.
            let got = ours.get(want.shape(), name).unwrap();
            let want = theirs.get(want.shape(), name).unwrap();
            assert!(
                raw_bytes(&got) == raw_bytes(&want),
                "{name} as F32: bits differ"
            );
        }
    }
    Ok(())
}

#[cfg(feature = "candle")]
fn a_directory_of_shards_loads_and_checks_shapes() -> Ran {
    use candle_core::{DType, Device};
    use ecfloat::container::write::{TensorData, write_safetensors};

    let source = tempfile::tempdir().unwrap();
    let first = ecfloat::synth::heavy_tailed_bytes(ecfloat::codec::FloatKind::Bf16, 64 * 1024, 1);
    let second = ecfloat::synth::heavy_tailed_bytes(ecfloat::codec::FloatKind::F16, 4096, 2);
    let shards = [
        (
            "model-00001-of-00002.safetensors",
            "a.weight",
            "BF16",
            [256, 256],
            &first,
        ),
        (
            "model-00002-of-00002.safetensors",
            "b.weight",
            "F16",
            [64, 64],
            &second,
        ),
    ];
    for (file, name, dtype, shape, bytes) in shards {
        let tensor = TensorData {
            name,
            dtype,
            shape: &shape,
            bytes,
        };
        write_safetensors(&source.path().join(file), &[], &[tensor]).unwrap();
    }
    let output = tempfile::tempdir().unwrap();
    let compressed = output.path().join("model");
    ecfloat::container::compress_directory(source.path(), &compressed, &Default::default())
        .unwrap();
    let cpu = Device::Cpu;
    let vb = ecfloat::candle::var_builder(&compressed, DType::BF16, &cpu).unwrap();
    assert!(vb.contains_tensor("a.weight") && vb.contains_tensor("b.weight"));
    assert!(!vb.contains_tensor("c.weight"));
    let a = vb.get((256, 256), "a.weight").unwrap();
    assert!(raw_bytes(&a) == first, "a.weight: bits differ");
    let b = vb
        .get_with_hints_dtype((64, 64), "b.weight", Default::default(), DType::F16)
        .unwrap();
    assert!(raw_bytes(&b) == second, "b.weight: bits differ");
    let wrong = vb.get((64, 64), "a.weight").unwrap_err().to_string();
    assert!(wrong.contains("shape mismatch for a.weight"), "{wrong}");
    let missing = vb.get((1,), "c.weight").unwrap_err().to_string();
    assert!(missing.contains("c.weight"), "{missing}");
    let empty = tempfile::tempdir().unwrap();
    let error = ecfloat::candle::CompressedTensors::open(empty.path())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("no compressed shards"), "{error}");
    Ok(())
}
