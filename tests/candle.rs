//! Compressed checkpoints in candle: every tensor of every test file, read
//! through the `VarBuilder` backend (`ecfloat::candle`) or kept coded in a
//! `CompressedModel`, equals candle's own safetensors loading of the
//! original in dtype, shape and every bit, as stored and converted; so do
//! the compressed modules' outputs. The compressed model decodes through
//! `kernels/decode.cu` executed on the CPU too, as it would on a GPU.
//! Without the `candle` feature, the test data or g++, the tests show as
//! ignored, with the reason.

mod common;

use common::harness::{self, Ran};

/// A trial of each test, by its name; without the feature, each is
/// ignored with the reason.
macro_rules! trials {
    ($($test:ident),* $(,)?) => {
        vec![$(harness::trial(stringify!($test), with_candle!($test))),*]
    };
}

#[cfg(feature = "candle")]
macro_rules! with_candle {
    ($test:ident) => {
        $test
    };
}

#[cfg(not(feature = "candle"))]
macro_rules! with_candle {
    ($test:ident) => {
        || -> Ran {
            Err(harness::absent(
                "candle",
                "not compiled in (build with --features candle)",
            ))
        }
    };
}

fn main() {
    harness::run(trials![
        every_tensor_loads_as_candle_loads_the_original,
        a_directory_of_shards_loads_and_checks_shapes,
        a_compressed_model_gives_every_tensor_as_candle_loads_it,
        a_compressed_model_decodes_through_the_cuda_kernel_on_the_cpu,
        compressed_modules_compute_what_candle_nn_computes,
        a_flipped_mantissa_bit_is_an_error_naming_the_tensor,
    ]);
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
    assert!(
        error.contains("no .safetensors files in this directory"),
        "{error}"
    );
    Ok(())
}

/// Every tensor of `compressed` taken from a model kept coded on
/// `backend`, in file order and then in reverse (each group decoded again,
/// and the prefetched group never the one asked for), equals candle's
/// loading of `original`, converted to each tensor's own float dtype.
#[cfg(feature = "candle")]
fn check_compressed_model(
    original: &std::path::Path,
    compressed: &std::path::Path,
    backend: Option<&'static dyn ecfloat::backend::Backend>,
) {
    use candle_core::{DType, Device};
    use ecfloat::candle::CompressedModel;

    let cpu = Device::Cpu;
    let expected = candle_core::safetensors::load(original, &cpu).unwrap();
    // The model's dtype: the file's float dtype (its other tensors convert).
    let dtype = expected
        .values()
        .map(|t| t.dtype())
        .find(|d| d.is_float())
        .unwrap_or(DType::F32);
    let model = match backend {
        Some(backend) => CompressedModel::with_backend(compressed, backend, dtype, &cpu),
        None => CompressedModel::open(compressed, dtype, &cpu),
    }
    .unwrap();
    let model_backend_is_asynchronous = backend.is_some_and(|b| b.decodes_asynchronously());
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    let reversed: Vec<&String> = names.iter().rev().copied().collect();
    for name in names.into_iter().chain(reversed) {
        let want = expected[name].to_dtype(dtype).unwrap();
        let got = model.tensor(name).unwrap();
        assert_eq!(got.dtype(), want.dtype(), "{name}");
        assert_eq!(got.shape(), want.shape(), "{name}");
        assert!(
            raw_bytes(&got) == raw_bytes(&want),
            "{}: {name}: bits differ",
            original.display()
        );
    }
    // A GPU backend decodes the next group into a second buffer.
    let buffers = if model_backend_is_asynchronous { 2 } else { 1 };
    let largest_group = ecfloat::runtime::Model::open(
        compressed,
        &ecfloat::backend::CpuBackend::new(),
        Default::default(),
    )
    .unwrap()
    .memory()
    .largest_group_bytes;
    let memory = model.memory();
    assert!(memory.compressed_bytes > 0 && memory.weight_bytes > 0);
    assert_eq!(
        memory.buffer_bytes,
        buffers * largest_group.next_multiple_of(4),
        "{memory:?}"
    );
    assert!(
        memory.peak_bytes == memory.compressed_bytes + memory.buffer_bytes + memory.weight_bytes,
        "{memory:?}"
    );
    assert!(model.weight("no.such.tensor").is_err());
}

#[cfg(feature = "candle")]
fn a_compressed_model_gives_every_tensor_as_candle_loads_it() -> Ran {
    let dir = tempfile::tempdir().unwrap();
    for file in harness::require_testdata_files()? {
        // candle has no F8 E5M2; the test files have none.
        let compressed = dir.path().join(file.file_name().unwrap());
        ecfloat::container::compress_file(&file, &compressed, &Default::default()).unwrap();
        check_compressed_model(&file, &compressed, None);
    }
    Ok(())
}

#[cfg(feature = "candle")]
fn a_compressed_model_decodes_through_the_cuda_kernel_on_the_cpu() -> Ran {
    use ecfloat::backend::gpu::layout::DispatchLimits;

    let files = harness::require_testdata_files()?;
    // The CUDA backend's planning, records and launches; the kernel runs
    // on the CPU. It lives as long as the test process, as a backend a
    // compressed model decodes on must.
    let backend: &'static dyn ecfloat::backend::Backend = Box::leak(
        common::kernel_on_cpu::kernel_on_cpu(DispatchLimits::UNBOUNDED)?,
    );
    let dir = tempfile::tempdir().unwrap();
    for file in files
        .iter()
        .filter(|f| f.to_string_lossy().contains("easyocr"))
    {
        let compressed = dir.path().join(file.file_name().unwrap());
        ecfloat::container::compress_file(file, &compressed, &Default::default()).unwrap();
        check_compressed_model(file, &compressed, Some(backend));
    }
    Ok(())
}

#[cfg(feature = "candle")]
fn compressed_modules_compute_what_candle_nn_computes() -> Ran {
    use candle_core::{DType, Device, Module, Tensor};
    use ecfloat::candle::CompressedModel;
    use ecfloat::codec::FloatKind;
    use ecfloat::container::write::{TensorData, write_safetensors};

    let source = tempfile::tempdir().unwrap();
    let original = source.path().join("layers.safetensors");
    let weights: Vec<(String, Vec<u8>, [u64; 2])> = (0..3)
        .flat_map(|layer| {
            [("up", [96, 64]), ("down", [64, 96])].map(|(name, shape)| {
                let bytes = ecfloat::synth::heavy_tailed_bytes(
                    FloatKind::Bf16,
                    (shape[0] * shape[1]) as usize,
                    layer * 2 + (name == "up") as u64,
                );
                (format!("layers.{layer}.{name}.weight"), bytes, shape)
            })
        })
        .chain([(
            "layers.0.up.bias".to_string(),
            ecfloat::synth::heavy_tailed_bytes(FloatKind::Bf16, 96, 9),
            [96, 1],
        )])
        .collect();
    let tensors: Vec<TensorData> = weights
        .iter()
        .map(|(name, bytes, shape)| TensorData {
            name,
            dtype: "BF16",
            shape: if name.ends_with("bias") {
                &shape[..1]
            } else {
                &shape[..]
            },
            bytes,
        })
        .collect();
    write_safetensors(&original, &[], &tensors).unwrap();
    let compressed = source.path().join("layers.ecf.safetensors");
    ecfloat::container::compress_file(&original, &compressed, &Default::default()).unwrap();

    let cpu = Device::Cpu;
    let expected = candle_core::safetensors::load(&original, &cpu).unwrap();
    let f32 = |name: &str| expected[name].to_dtype(DType::F32).unwrap();
    let model = CompressedModel::open(&compressed, DType::F32, &cpu).unwrap();
    let input = Tensor::randn(0f32, 1.0, (2, 5, 64), &cpu).unwrap();
    let mut ours = input.clone();
    let mut theirs = input;
    for layer in 0..3 {
        let up = format!("layers.{layer}.up");
        let down = format!("layers.{layer}.down");
        let bias = (layer == 0).then(|| f32(&format!("{up}.bias")));
        ours = model.linear(&up).unwrap().forward(&ours).unwrap();
        ours = model.linear(&down).unwrap().forward(&ours).unwrap();
        theirs = candle_nn::Linear::new(f32(&format!("{up}.weight")), bias)
            .forward(&theirs)
            .unwrap();
        theirs = candle_nn::Linear::new(f32(&format!("{down}.weight")), None)
            .forward(&theirs)
            .unwrap();
    }
    assert!(
        raw_bytes(&ours) == raw_bytes(&theirs),
        "linear outputs differ"
    );

    // A down weight as an embedding table: rows 0, 63 and 7.
    let ids = Tensor::new(&[[0u32, 63], [7, 7]], &cpu).unwrap();
    let ours = model
        .embedding("layers.2.down")
        .unwrap()
        .forward(&ids)
        .unwrap();
    let theirs = candle_nn::Embedding::new(f32("layers.2.down.weight"), 96)
        .forward(&ids)
        .unwrap();
    assert!(raw_bytes(&ours) == raw_bytes(&theirs), "embeddings differ");
    let bias = model.weight("layers.0.up.bias").unwrap();
    let error = match ecfloat::candle::CompressedLinear::new(bias, None) {
        Ok(_) => panic!("a vector made a linear layer"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("layers.0.up.bias has shape [96]"), "{error}");

    // Three groups of 48 KiB of BF16 weights (96 × 64 × 2 × 2) and a bias:
    // held coded, with one buffer of a group (the CPU decodes
    // synchronously) and one weight at a time as F32.
    let memory = model.memory();
    let group_bytes = 2 * 96 * 64 * 2;
    assert_eq!(memory.buffer_bytes, group_bytes + 96 * 2);
    assert_eq!(memory.weight_bytes, 96 * 64 * 4);
    assert_eq!(memory.uncompressed_bytes, (6 * 96 * 64 + 96) * 4);
    assert!(memory.compressed_bytes < 3 * group_bytes + 96 * 2);
    assert_eq!(
        memory.peak_bytes,
        memory.compressed_bytes + memory.buffer_bytes + memory.weight_bytes
    );
    fn shared<T: Send + Sync>(_: &T) {}
    shared(&model);
    Ok(())
}

/// The one corruption only a tensor's checksum sees, a flipped raw
/// mantissa bit: candle's loading refuses the tensor, naming it, and loads
/// the others.
#[cfg(feature = "candle")]
fn a_flipped_mantissa_bit_is_an_error_naming_the_tensor() -> Ran {
    use candle_core::{DType, Device};
    use ecfloat::candle::{CompressedTensors, var_builder};

    let dir = tempfile::tempdir().unwrap();
    let plain = common::write_sample(dir.path());
    let path = dir.path().join("sample.ecf.safetensors");
    ecfloat::container::compress_file(&plain, &path, &Default::default()).unwrap();
    let name = "layers.0.attn.weight";
    common::flip_rest_bit(&path, name);
    let cpu = Device::Cpu;
    let named = |error: String| {
        assert!(
            error.contains(name) && error.contains("checksum"),
            "{error}"
        );
    };
    let tensors = CompressedTensors::open(&path).unwrap();
    named(tensors.load(name, &cpu).unwrap_err().to_string());
    tensors.load("layers.0.mlp.weight", &cpu).unwrap();
    let builder = var_builder(&path, DType::F32, &cpu).unwrap();
    named(builder.get((300, 128), name).unwrap_err().to_string());
    // Kept coded: the layer's first decode is refused, and each after it.
    let model = ecfloat::candle::CompressedModel::open(&path, DType::F32, &cpu).unwrap();
    let weight = model.weight(name).unwrap();
    for _ in 0..2 {
        named(weight.get().unwrap_err().to_string());
    }
    model.weight("layers.1.attn.weight").unwrap().get().unwrap();
    Ok(())
}
