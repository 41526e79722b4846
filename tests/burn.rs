//! Compressed checkpoints in burn: a module loaded through
//! `ecfloat::burn::EcfStore` holds, bit for bit, what the same module holds
//! loaded by burn-store's `SafetensorsStore` from the original with the
//! same options, and computes the same outputs: all-MiniLM-L6-v2 as a burn
//! BERT on burn's CPU backend (ndarray) and on wgpu (lavapipe in CI). Bad
//! input gives burn-store's kind of error naming the tensor. Without the
//! `burn` feature, the test data or a wgpu adapter, the tests show as
//! ignored, with the reason.

mod common;

use common::harness::{self, Ran};

macro_rules! trials {
    ($($test:ident),* $(,)?) => {
        vec![$(harness::trial(stringify!($test), with_burn!($test))),*]
    };
}

#[cfg(feature = "burn")]
macro_rules! with_burn {
    ($test:ident) => {
        $test
    };
}

#[cfg(not(feature = "burn"))]
macro_rules! with_burn {
    ($test:ident) => {
        || -> Ran {
            Err(harness::absent(
                "burn",
                "not compiled in (build with --features burn)",
            ))
        }
    };
}

fn main() {
    harness::run(trials![
        every_tensor_of_the_test_files_reads_as_burn_store_reads_it,
        minilm_bert_on_ndarray_is_bit_identical,
        minilm_bert_on_wgpu_is_bit_identical,
        a_saved_module_loads_back_bit_identical,
        missing_mismatched_and_corrupt_tensors_are_named_errors,
        every_16_bit_value_decodes_on_the_shared_device_as_burn_converts_it,
        minilm_decodes_on_the_shared_device_as_burn_store_loads_it,
        minilm_bert_decoded_on_the_shared_device_is_bit_identical,
        a_shared_device_store_falls_back_and_names_corrupt_tensors,
        minilm_bert_kept_coded_on_ndarray_is_bit_identical,
        minilm_bert_kept_coded_on_the_shared_device_is_bit_identical,
        kept_coded_weights_of_every_dtype_are_burn_stores_bits,
        kept_coded_layers_refuse_what_they_cannot_hold,
    ]);
}

#[cfg(feature = "burn")]
mod support {
    use std::path::Path;

    use burn::module::Module;
    use burn::tensor::{DType, Device, Int, Tensor, TensorData};
    use burn_store::burn_pack::Tensor as PackTensor;
    use burn_store::{
        FloatCastAdapter, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
        SafetensorsStore,
    };
    use ecfloat::burn::bert::{Bert, BertConfig};
    use ecfloat::burn::{CodedWeights, EcfStore, SharedDevice};

    #[derive(Module, Debug)]
    pub struct Pair {
        pub first: burn::nn::Linear,
        pub second: burn::nn::Linear,
    }

    impl Pair {
        /// Two layers, 512 inputs to `width` outputs and 256 to 3,
        /// initialised on `device`.
        pub fn new(width: usize, device: &Device) -> Self {
            use burn::nn::LinearConfig;
            Pair {
                first: LinearConfig::new(512, width).init(device),
                second: LinearConfig::new(256, 3).init(device),
            }
        }
    }

    /// The dtype policy both stores load with: PyTorch's layouts and
    /// names to burn's, every float to F32.
    pub fn adapter() -> impl ModuleAdapter + 'static {
        PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32))
    }

    pub fn original_store(path: &Path) -> SafetensorsStore {
        SafetensorsStore::from_file(path)
            .remap(BertConfig::key_remapper())
            .with_from_adapter(adapter())
    }

    pub fn compressed_store(path: &Path) -> EcfStore {
        EcfStore::from_file(path)
            .remap(BertConfig::key_remapper())
            .with_from_adapter(adapter())
    }

    /// Every tensor of `module`, by path: dtype, shape and bytes.
    pub fn contents(module: &impl Module) -> Vec<(String, DType, Vec<usize>, Vec<u8>)> {
        let mut tensors: Vec<_> = module
            .collect(None, None, false)
            .into_iter()
            .map(|tensor: PackTensor| {
                let (name, dtype, shape) =
                    (tensor.name.clone(), tensor.dtype, tensor.shape.to_vec());
                let bytes = tensor.into_bytes().unwrap().to_vec();
                (name, dtype, shape, bytes)
            })
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    }

    /// A fixed batch of token ids: 2 sequences of 16.
    pub fn token_ids(device: &Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = (0..32).map(|i| (i * 977 + 101) % 30522).collect();
        Tensor::from_data(TensorData::new(ids, [2, 16]), device)
    }

    /// MiniLM loaded both ways on `device` (ours decoded on `shared`, where
    /// given, whose device `device` then is); panics where they differ in a
    /// parameter or an output bit, or the loads report differently.
    pub fn bert_both_ways(original: &Path, device: &Device, shared: Option<&SharedDevice>) {
        let compressed_dir = tempfile::tempdir().unwrap();
        let compressed = compressed_dir.path().join("minilm.ecf.safetensors");
        ecfloat::container::compress_file(original, &compressed, &Default::default()).unwrap();

        let config = BertConfig::minilm_l6();
        let mut theirs: Bert = config.init(device);
        let their_result = theirs.load_from(&mut original_store(original)).unwrap();
        let mut ours: Bert = config.init(device);
        let mut store = compressed_store(&compressed);
        if let Some(shared) = shared {
            store = store.on_shared_device(shared);
        }
        let our_result = ours.load_from(&mut store).unwrap();
        let expected_on_device = if shared.is_some() {
            our_result.applied.clone()
        } else {
            Vec::new()
        };
        assert_eq!(store.decoded_on_device(), expected_on_device);
        assert_eq!(our_result.applied, their_result.applied);
        assert_eq!(our_result.unused, their_result.unused);
        assert!(our_result.missing.is_empty() && our_result.errors.is_empty());
        assert_eq!(our_result.applied.len(), 101, "{our_result}");

        let (our_tensors, their_tensors) = (contents(&ours), contents(&theirs));
        assert_eq!(our_tensors.len(), their_tensors.len());
        for (got, want) in our_tensors.iter().zip(&their_tensors) {
            assert_eq!((&got.0, got.1, &got.2), (&want.0, want.1, &want.2));
            assert!(got.3 == want.3, "{}: bits differ", got.0);
        }
        let our_output = ours.forward(token_ids(device)).into_data();
        let their_output = theirs.forward(token_ids(device)).into_data();
        assert_eq!(our_output.shape().to_vec(), vec![2, 16, 384]);
        assert!(
            our_output.as_bytes() == their_output.as_bytes(),
            "outputs differ"
        );
    }

    /// MiniLM with its linear layers kept coded in `weights` (opened on
    /// `compressed`, a compression of `original`), the rest loaded from
    /// `compressed`, against burn-store's loading of `original` on the
    /// same device: panics where an output bit differs, in two forwards.
    pub fn bert_kept_coded(original: &Path, compressed: &Path, weights: &CodedWeights) {
        let device = weights.device();
        let config = BertConfig::minilm_l6();
        let mut theirs: Bert = config.init(device);
        let their_result = theirs.load_from(&mut original_store(original)).unwrap();
        let mut ours = config.init_kept_coded(weights).unwrap();
        let our_result = ours.load_from(&mut compressed_store(compressed)).unwrap();
        assert!(our_result.missing.is_empty() && our_result.errors.is_empty());
        // Every linear weight is kept coded, not loaded: 6 layers of 6.
        assert_eq!(our_result.applied.len(), 101 - 36, "{our_result}");
        assert_eq!(
            our_result.unused.len(),
            their_result.unused.len() + 36,
            "{our_result}"
        );

        let their_output = theirs.forward(token_ids(device)).into_data();
        for run in ["first", "second"] {
            let our_output = ours.forward(token_ids(device)).into_data();
            assert_eq!(our_output.shape().to_vec(), vec![2, 16, 384]);
            assert!(
                our_output.as_bytes() == their_output.as_bytes(),
                "{run} forward: outputs differ"
            );
        }

        // Layers sharing one decode buffer, run from two threads at once.
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..2)
                .map(|_| {
                    let model = ours.clone();
                    scope.spawn(move || model.forward(token_ids(device)).into_data())
                })
                .collect();
            for run in runs {
                let output = run.join().unwrap();
                assert!(
                    output.as_bytes() == their_output.as_bytes(),
                    "a forward on another thread: outputs differ"
                );
            }
        });

        let memory = weights.memory();
        let largest = 384 * 1536 * 4;
        assert_eq!(
            memory.decoded_bytes,
            6 * (4 * 384 * 384 + 2 * 384 * 1536) * 4
        );
        assert!(
            memory.coded_bytes < memory.decoded_bytes / 2,
            "{memory:?}: BF16 weights, coded, are under half their F32 size"
        );
        assert!(
            (largest / 2..=2 * largest).contains(&memory.buffer_bytes),
            "{memory:?}: one buffer of the largest weight"
        );
    }

    /// The load error of `store` into `module`, as text.
    pub fn load_error<M: Module, S: ModuleStore>(mut module: M, store: &mut S) -> String {
        match module.load_from(store) {
            Ok(result) => panic!("loaded: {result}"),
            Err(error) => error.to_string(),
        }
    }
}

#[cfg(feature = "burn")]
fn every_tensor_of_the_test_files_reads_as_burn_store_reads_it() -> Ran {
    use burn_store::{ModuleStore, SafetensorsStore};
    use ecfloat::burn::EcfStore;

    let dir = tempfile::tempdir().unwrap();
    for file in harness::require_testdata_files()? {
        let compressed = dir.path().join(file.file_name().unwrap());
        ecfloat::container::compress_file(&file, &compressed, &Default::default()).unwrap();
        let mut theirs = SafetensorsStore::from_file(&file);
        let mut ours = EcfStore::from_file(&compressed);
        let (their_keys, our_keys) = (theirs.keys(), ours.keys());
        let their_keys = match their_keys {
            Ok(keys) => keys,
            Err(their_error) => {
                // burn has no F8 dtypes: both refuse the file, ours naming
                // the tensor.
                let our_error = our_keys.unwrap_err().to_string();
                assert!(their_error.to_string().contains("Unsupported dtype"));
                assert!(
                    our_error.contains("burn has no F8_E4M3 dtype")
                        && our_error.contains(&*compressed.to_string_lossy()),
                    "{our_error}"
                );
                continue;
            }
        };
        assert_eq!(our_keys.unwrap(), their_keys, "{}", file.display());
        for key in &their_keys {
            let want = theirs.get_tensor(key).unwrap().unwrap().clone();
            let got = ours.get_tensor(key).unwrap().unwrap().clone();
            assert_eq!((got.dtype, &got.shape), (want.dtype, &want.shape), "{key}");
            assert!(
                got.to_bytes().unwrap().to_vec() == want.to_bytes().unwrap().to_vec(),
                "{}: {key}: bits differ",
                file.display()
            );
        }
    }
    Ok(())
}

#[cfg(feature = "burn")]
fn minilm_bert_on_ndarray_is_bit_identical() -> Ran {
    let original = harness::require_testdata()?.join("all-MiniLM-L6-v2.bf16.safetensors");
    #[allow(deprecated)]
    let device = burn::tensor::Device::ndarray();
    support::bert_both_ways(&original, &device, None);
    Ok(())
}

#[cfg(feature = "burn")]
fn minilm_bert_on_wgpu_is_bit_identical() -> Ran {
    let original = harness::require_testdata()?.join("all-MiniLM-L6-v2.bf16.safetensors");
    // burn's wgpu device panics without an adapter: ask ecfloat's first.
    harness::require_backend("wgpu")?;
    let device = burn::tensor::Device::from(burn::backend::wgpu::WgpuDevice::default());
    support::bert_both_ways(&original, &device, None);
    Ok(())
}

#[cfg(feature = "burn")]
fn a_saved_module_loads_back_bit_identical() -> Ran {
    use burn::tensor::Device;
    use burn_store::{ModuleSnapshot, ModuleStore, SafetensorsStore};
    use ecfloat::burn::EcfStore;

    use support::Pair;

    #[allow(deprecated)]
    let device = Device::ndarray();
    let saved = Pair::new(256, &device);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pair.ecf.safetensors");
    saved.save_into(&mut EcfStore::from_file(&path)).unwrap();
    // Not replaced unless asked.
    let again = saved.save_into(&mut EcfStore::from_file(&path));
    assert!(again.unwrap_err().to_string().contains("overwrite(true)"));
    saved
        .save_into(&mut EcfStore::from_file(&path).overwrite(true))
        .unwrap();
    let only_files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(only_files.len(), 1, "a plain file was left behind");

    let mut loaded = Pair::new(256, &device);
    let result = loaded.load_from(&mut EcfStore::from_file(&path)).unwrap();
    assert_eq!(result.applied.len(), 4);
    assert!(support::contents(&loaded) == support::contents(&saved));
    // What the file holds reads as burn-store reads its own save.
    let plain = dir.path().join("pair.safetensors");
    saved
        .save_into(&mut SafetensorsStore::from_file(&plain))
        .unwrap();
    let mut theirs = SafetensorsStore::from_file(&plain);
    let mut ours = EcfStore::from_file(&path);
    for key in theirs.keys().unwrap() {
        let want = theirs
            .get_tensor(&key)
            .unwrap()
            .unwrap()
            .to_bytes()
            .unwrap();
        let got = ours.get_tensor(&key).unwrap().unwrap().to_bytes().unwrap();
        assert!(got.to_vec() == want.to_vec(), "{key}: bits differ");
    }
    Ok(())
}

#[cfg(feature = "burn")]
fn missing_mismatched_and_corrupt_tensors_are_named_errors() -> Ran {
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;
    use burn_store::ModuleSnapshot;
    use ecfloat::burn::EcfStore;

    use support::Pair;

    #[derive(Module, Debug)]
    struct Triple {
        first: Linear,
        second: Linear,
        third: Linear,
    }
    #[allow(deprecated)]
    let device = Device::ndarray();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pair.ecf.safetensors");
    let pair = Pair::new(256, &device);
    pair.save_into(&mut EcfStore::from_file(&path)).unwrap();

    // A tensor the module wants and the file lacks.
    let triple = Triple {
        first: LinearConfig::new(512, 256).init(&device),
        second: LinearConfig::new(256, 3).init(&device),
        third: LinearConfig::new(3, 3).init(&device),
    };
    let error = support::load_error(triple, &mut EcfStore::from_file(&path));
    assert!(
        error.contains("Tensor not found") && error.contains("third"),
        "{error}"
    );
    // ...reported, not refused, when partial loads are allowed.
    let mut triple = Triple {
        first: LinearConfig::new(512, 256).init(&device),
        second: LinearConfig::new(256, 3).init(&device),
        third: LinearConfig::new(3, 3).init(&device),
    };
    let result = triple
        .load_from(&mut EcfStore::from_file(&path).allow_partial(true))
        .unwrap();
    assert_eq!(result.missing.len(), 2, "{result}");

    // A shape that differs from the module's.
    let wider = Pair::new(128, &device);
    let error = support::load_error(wider, &mut EcfStore::from_file(&path));
    assert!(
        error.contains("Validation failed") && error.contains("first.weight"),
        "{error}"
    );

    // A coded tensor whose planes are damaged: the decode's error names
    // the file and the tensor, and nothing panics.
    let file = ecfloat::container::CompressedFile::open(&path).unwrap();
    let tensor = file.tensor("first.weight").unwrap();
    let ecfloat::container::Storage::Coded(_) = &tensor.storage else {
        panic!("first.weight is not coded");
    };
    let stored = file.stored_bytes(tensor);
    let offset = stored.as_ptr() as usize - file.data().as_ptr() as usize;
    let data_start = std::fs::metadata(&path).unwrap().len() as usize - file.data().len();
    let middle = data_start + offset + stored.len() / 2;
    drop(file);
    let mut bytes = std::fs::read(&path).unwrap();
    for byte in &mut bytes[middle..middle + 64] {
        *byte ^= 0x5a;
    }
    let corrupt = dir.path().join("corrupt.ecf.safetensors");
    std::fs::write(&corrupt, bytes).unwrap();
    let fresh = Pair::new(256, &device);
    let error = support::load_error(fresh, &mut EcfStore::from_file(&corrupt));
    assert!(
        error.contains("first.weight") && error.contains("corrupt.ecf.safetensors"),
        "{error}"
    );

    // A remapping that is not a regular expression: an error at use.
    let fresh = Pair::new(256, &device);
    let mut store = EcfStore::from_file(&path).with_key_remapping("first(", "x");
    let error = support::load_error(fresh, &mut store);
    assert!(
        error.contains("key remapping \"first(\"") && error.contains("pair.ecf.safetensors"),
        "{error}"
    );
    Ok(())
}

/// The shared device, or why the wgpu tests cannot run here.
#[cfg(feature = "burn")]
fn require_shared_device() -> Result<ecfloat::burn::SharedDevice, harness::Skip> {
    ecfloat::burn::SharedDevice::open().map_err(|e| harness::absent("wgpu", e))
}

/// A tensor of `checkpoint` decoded on `shared` as `dtype`, as bytes.
#[cfg(feature = "burn")]
fn decoded_on(
    shared: &ecfloat::burn::SharedDevice,
    checkpoint: &ecfloat::container::CompressedCheckpoint,
    name: &str,
    rank: usize,
    dtype: burn::tensor::DType,
) -> ecfloat::Result<Vec<u8>> {
    let data = match rank {
        1 => shared
            .decode_tensor::<1>(checkpoint, name, dtype)?
            .into_data(),
        2 => shared
            .decode_tensor::<2>(checkpoint, name, dtype)?
            .into_data(),
        3 => shared
            .decode_tensor::<3>(checkpoint, name, dtype)?
            .into_data(),
        4 => shared
            .decode_tensor::<4>(checkpoint, name, dtype)?
            .into_data(),
        _ => panic!("{name}: rank {rank}"),
    };
    Ok(data.as_bytes().to_vec())
}

#[cfg(feature = "burn")]
fn every_16_bit_value_decodes_on_the_shared_device_as_burn_converts_it() -> Ran {
    use burn::tensor::{DType, TensorData};
    use ecfloat::container::CompressedCheckpoint;
    use safetensors::tensor::TensorView;

    let shared = require_shared_device()?;
    let every: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    // Odd lengths too: a tensor that ends mid-word.
    let odd = &every[..2 * 4099];
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("every.safetensors");
    let views = [
        (
            "bf16",
            TensorView::new(safetensors::Dtype::BF16, vec![256, 256], &every).unwrap(),
        ),
        (
            "f16",
            TensorView::new(safetensors::Dtype::F16, vec![256, 256], &every).unwrap(),
        ),
        (
            "bf16_odd",
            TensorView::new(safetensors::Dtype::BF16, vec![4099], odd).unwrap(),
        ),
        (
            "f16_odd",
            TensorView::new(safetensors::Dtype::F16, vec![4099], odd).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &plain).unwrap();
    let compressed = dir.path().join("every.ecf.safetensors");
    ecfloat::container::compress_file(&plain, &compressed, &Default::default()).unwrap();
    let checkpoint = CompressedCheckpoint::open(&compressed).unwrap();
    for (name, stored, bytes, rank) in [
        ("bf16", DType::BF16, &every[..], 2),
        ("f16", DType::F16, &every[..], 2),
        ("bf16_odd", DType::BF16, odd, 1),
        ("f16_odd", DType::F16, odd, 1),
    ] {
        let elements = bytes.len() / 2;
        let shape = if rank == 2 {
            vec![256, 256]
        } else {
            vec![elements]
        };
        let want =
            TensorData::from_bytes_vec(bytes.to_vec(), shape, stored).convert_dtype(DType::F32);
        let got = decoded_on(&shared, &checkpoint, name, rank, DType::F32).unwrap();
        assert!(got == want.as_bytes(), "{name} widened to F32: bits differ");
        if shared.device().supports_dtype(stored) {
            let got = decoded_on(&shared, &checkpoint, name, rank, stored).unwrap();
            assert!(got == bytes, "{name} as stored: bits differ");
        } else {
            let error = decoded_on(&shared, &checkpoint, name, rank, stored)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(name) && error.contains("holds no"),
                "{error}"
            );
        }
    }
    let error = decoded_on(&shared, &checkpoint, "bf16", 1, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("bf16") && error.contains("dimensions"),
        "{error}"
    );
    Ok(())
}

#[cfg(feature = "burn")]
fn minilm_decodes_on_the_shared_device_as_burn_store_loads_it() -> Ran {
    use burn::tensor::{DType, TensorData};
    use burn_store::{ModuleStore, SafetensorsStore};
    use ecfloat::container::CompressedCheckpoint;

    let original = harness::require_testdata()?.join("all-MiniLM-L6-v2.bf16.safetensors");
    let shared = require_shared_device()?;
    let dir = tempfile::tempdir().unwrap();
    let compressed = dir.path().join("minilm.ecf.safetensors");
    ecfloat::container::compress_file(&original, &compressed, &Default::default()).unwrap();
    let checkpoint = CompressedCheckpoint::open(&compressed).unwrap();
    let mut theirs = SafetensorsStore::from_file(&original);
    for name in theirs.keys().unwrap() {
        let tensor = theirs.get_tensor(&name).unwrap().unwrap().clone();
        if !tensor.dtype.is_float() {
            let error = decoded_on(
                &shared,
                &checkpoint,
                &name,
                tensor.shape.len(),
                tensor.dtype,
            )
            .unwrap_err()
            .to_string();
            assert!(
                error.contains(&name) && error.contains("only float tensors"),
                "{error}"
            );
            continue;
        }
        let wanted = DType::F32;
        let (dtype, shape) = (tensor.dtype, tensor.shape.to_vec());
        let want = TensorData::from_bytes(tensor.into_bytes().unwrap(), shape.clone(), dtype)
            .convert_dtype(wanted);
        let got = decoded_on(&shared, &checkpoint, &name, shape.len(), wanted).unwrap();
        assert!(got == want.as_bytes(), "{name}: bits differ");
    }
    Ok(())
}

#[cfg(feature = "burn")]
fn minilm_bert_kept_coded_on_ndarray_is_bit_identical() -> Ran {
    let original = harness::require_testdata()?.join("all-MiniLM-L6-v2.bf16.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let compressed = dir.path().join("minilm.ecf.safetensors");
    ecfloat::container::compress_file(&original, &compressed, &Default::default()).unwrap();
    #[allow(deprecated)]
    let device = burn::tensor::Device::ndarray();
    let weights = ecfloat::burn::CodedWeights::open(&compressed, &device).unwrap();
    support::bert_kept_coded(&original, &compressed, &weights);
    Ok(())
}

#[cfg(feature = "burn")]
fn minilm_bert_kept_coded_on_the_shared_device_is_bit_identical() -> Ran {
    let original = harness::require_testdata()?.join("all-MiniLM-L6-v2.bf16.safetensors");
    let shared = require_shared_device()?;
    let dir = tempfile::tempdir().unwrap();
    let compressed = dir.path().join("minilm.ecf.safetensors");
    ecfloat::container::compress_file(&original, &compressed, &Default::default()).unwrap();
    let weights = ecfloat::burn::CodedWeights::open_shared(&compressed, &shared).unwrap();
    support::bert_kept_coded(&original, &compressed, &weights);
    Ok(())
}

/// A compressed checkpoint of one linear weight per float dtype, odd
/// shapes, every bit pattern the seed gives (NaNs, infinities, subnormals
/// among them), and the plain file it was compressed from.
#[cfg(feature = "burn")]
fn odd_linear_weights(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use safetensors::tensor::TensorView;

    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut bytes = |count: usize| -> Vec<u8> {
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let (bf16, f16, f32) = (bytes(2 * 7 * 5), bytes(2 * 7 * 5), bytes(4 * 3 * 9));
    let views = [
        (
            "bf16.weight",
            TensorView::new(safetensors::Dtype::BF16, vec![7, 5], &bf16).unwrap(),
        ),
        (
            "f16.weight",
            TensorView::new(safetensors::Dtype::F16, vec![7, 5], &f16).unwrap(),
        ),
        (
            "f32.weight",
            TensorView::new(safetensors::Dtype::F32, vec![3, 9], &f32).unwrap(),
        ),
    ];
    let plain = dir.join("odd.safetensors");
    safetensors::serialize_to_file(views, None, &plain).unwrap();
    let compressed = dir.join("odd.ecf.safetensors");
    ecfloat::container::compress_file(&plain, &compressed, &Default::default()).unwrap();
    (plain, compressed)
}

#[cfg(feature = "burn")]
fn kept_coded_weights_of_every_dtype_are_burn_stores_bits() -> Ran {
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn_store::{ModuleSnapshot, SafetensorsStore};
    use ecfloat::burn::CodedWeights;

    #[derive(Module, Debug)]
    struct One {
        layer: Linear,
    }

    let dir = tempfile::tempdir().unwrap();
    let (plain, compressed) = odd_linear_weights(dir.path());
    #[allow(deprecated)]
    let mut places = vec![(
        "host",
        CodedWeights::open(&compressed, &burn::tensor::Device::ndarray()).unwrap(),
    )];
    match require_shared_device() {
        Ok(shared) => places.push((
            "shared",
            CodedWeights::open_shared(&compressed, &shared).unwrap(),
        )),
        Err(skip) => println!("shared device not tried: {skip:?}"),
    }
    for (place, weights) in &places {
        let device = weights.device();
        for (prefix, [output, input]) in [("bf16", [7, 5]), ("f16", [7, 5]), ("f32", [3, 9])] {
            let mut theirs = One {
                layer: LinearConfig::new(input, output)
                    .with_bias(false)
                    .init(device),
            };
            let mut store = SafetensorsStore::from_file(&plain)
                .with_key_remapping(format!("^{prefix}\\."), "layer.")
                .with_from_adapter(support::adapter())
                .allow_partial(true);
            let result = theirs.load_from(&mut store).unwrap();
            assert_eq!(result.applied, ["layer.weight"], "{result}");
            let want = theirs.layer.weight.val().into_data();

            let coded = weights.linear(prefix, input, output, false).unwrap();
            assert_eq!(coded.weight.dims(), [input, output]);
            // Twice: the decoder's scratch buffer is reused.
            for run in ["first", "second"] {
                let got = coded.weight.get().unwrap().into_data();
                assert_eq!(got.shape().to_vec(), vec![input, output]);
                assert!(
                    got.as_bytes() == want.as_bytes(),
                    "{place}, {prefix}, {run} decode: bits differ"
                );
            }
        }
    }
    Ok(())
}

#[cfg(feature = "burn")]
fn kept_coded_layers_refuse_what_they_cannot_hold() -> Ran {
    use ecfloat::burn::CodedWeights;

    let dir = tempfile::tempdir().unwrap();
    let (_, compressed) = odd_linear_weights(dir.path());
    #[allow(deprecated)]
    let weights = CodedWeights::open(&compressed, &burn::tensor::Device::ndarray()).unwrap();
    let error = weights.linear("bf16", 7, 5, true).unwrap_err().to_string();
    assert!(
        error.contains("bf16.weight") && error.contains("[7, 5]") && error.contains("odd.ecf"),
        "{error}"
    );
    let error = weights
        .linear("absent", 7, 5, true)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("absent.weight") && error.contains("not in"),
        "{error}"
    );
    let layer = weights.linear("bf16", 5, 7, true).unwrap();
    let input = burn::tensor::Tensor::<2>::zeros([2, 4], weights.device());
    let error = layer.try_forward(input).unwrap_err().to_string();
    assert!(
        error.contains("bf16.weight") && error.contains("width 4"),
        "{error}"
    );
    Ok(())
}

#[cfg(feature = "burn")]
fn minilm_bert_decoded_on_the_shared_device_is_bit_identical() -> Ran {
    let original = harness::require_testdata()?.join("all-MiniLM-L6-v2.bf16.safetensors");
    let shared = require_shared_device()?;
    support::bert_both_ways(&original, shared.device(), Some(&shared));
    Ok(())
}

#[cfg(feature = "burn")]
fn a_shared_device_store_falls_back_and_names_corrupt_tensors() -> Ran {
    use burn_store::{ModuleSnapshot, SafetensorsStore};
    use ecfloat::burn::EcfStore;
    use ecfloat::container::{CompressedFile, Storage};

    let shared = require_shared_device()?;
    let dir = tempfile::tempdir().unwrap();
    let saved = support::Pair::new(4096, shared.device());
    let plain = dir.path().join("pair.safetensors");
    saved
        .save_into(&mut SafetensorsStore::from_file(&plain))
        .unwrap();
    let path = dir.path().join("pair.ecf.safetensors");
    ecfloat::container::compress_file(&plain, &path, &Default::default()).unwrap();

    // Whole, it loads on the device as burn-store loads the original.
    let mut loaded = support::Pair::new(4096, shared.device());
    let mut store = EcfStore::from_file(&path).on_shared_device(&shared);
    let result = loaded.load_from(&mut store).unwrap();
    assert_eq!(result.applied.len(), 4, "{result}");
    assert!(support::contents(&loaded) == support::contents(&saved));
    assert_eq!(store.decoded_on_device(), result.applied);

    // An adapter the device does not follow (F32 made F16): decoded on the
    // host, as burn-store loads the original.
    let adapter = || burn_store::FloatCastAdapter::to(burn::tensor::DType::F16);
    let mut theirs = support::Pair::new(4096, shared.device());
    let mut their_store = SafetensorsStore::from_file(&plain).with_from_adapter(adapter());
    theirs.load_from(&mut their_store).unwrap();
    let mut ours = support::Pair::new(4096, shared.device());
    let mut store = EcfStore::from_file(&path)
        .with_from_adapter(adapter())
        .on_shared_device(&shared);
    let result = ours.load_from(&mut store).unwrap();
    assert_eq!(result.applied.len(), 4, "{result}");
    assert!(store.decoded_on_device().is_empty());
    assert!(support::contents(&ours) == support::contents(&theirs));

    // Its coded exponents damaged: the block index's check or the GPU
    // decoder's fails (which depends on the random weights), named.
    let file = CompressedFile::open(&path).unwrap();
    let tensor = file.tensor("first.weight").unwrap();
    let Storage::Coded(coded) = &tensor.storage else {
        panic!("first.weight is not coded");
    };
    let data_start = std::fs::metadata(&path).unwrap().len() as usize - file.data().len();
    let head = coded.head_range.clone();
    let middle = data_start + (head.start + head.end) / 2;
    drop(file);
    let mut bytes = std::fs::read(&path).unwrap();
    for byte in &mut bytes[middle..middle + 64] {
        *byte ^= 0x5a;
    }
    let corrupt = dir.path().join("corrupt.ecf.safetensors");
    std::fs::write(&corrupt, bytes).unwrap();
    let fresh = support::Pair::new(4096, shared.device());
    let mut store = EcfStore::from_file(&corrupt).on_shared_device(&shared);
    let error = support::load_error(fresh, &mut store);
    assert!(
        error.contains("first.weight") && error.contains("corrupt.ecf.safetensors"),
        "{error}"
    );
    Ok(())
}
