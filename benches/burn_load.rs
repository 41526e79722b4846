//! all-MiniLM-L6-v2 in burn, against burn-store's own loading of the
//! original in the same run:
//! `cargo bench --features burn --bench burn_load [-- ORIGINAL]`.
//!
//! ORIGINAL is the BF16 MiniLM checkpoint (default: the test data's),
//! compressed first, untimed. As the median of 5 runs after a warm-up, on
//! burn's CPU backend (ndarray) and on the wgpu device ecfloat shares with
//! burn (lavapipe, on a machine without a GPU), it times:
//!
//! - loading: `SafetensorsStore` of the original into a burn BERT, every
//!   float made F32 (`FloatCastAdapter`) and PyTorch's layouts burn's
//!   (`PyTorchToBurnAdapter`), against `EcfStore` of the compressed file
//!   with the same options (on wgpu, decoding on the device,
//!   `on_shared_device`);
//! - a forward of 2 sequences of 16 tokens, the model loaded decoded
//!   against its linear weights kept coded (`CodedWeights`), with the
//!   bytes each holds.
//!
//! Each load and forward ends with the device synchronised.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_store::{ModuleSnapshot, ModuleStore};
use ecfloat::burn::bert::{Bert, BertConfig, BertLinear};
use ecfloat::burn::{CodedWeights, SharedDevice};

mod common;

use common::median_seconds;

/// A BERT loaded from `store` on `device`, synchronised.
fn load_bert<S: ModuleStore>(device: &Device, store: &mut S) -> Bert {
    let mut model = BertConfig::minilm_l6().init(device);
    model.load_from(store).unwrap();
    device.sync().unwrap();
    model
}

fn compare_loads(
    name: &str,
    device: &Device,
    original: &Path,
    compressed: &Path,
    shared: Option<&SharedDevice>,
) {
    let theirs = median_seconds(|| load_bert(device, &mut BertConfig::original_store(original)));
    let ours = median_seconds(|| {
        load_bert(
            device,
            &mut BertConfig::compressed_store(compressed, shared),
        )
    });
    let how = if shared.is_some() {
        "BERT through a store, decoded on the device"
    } else {
        "BERT through a store"
    };
    println!(
        "| {name} | {how} | {theirs:.3} s | {ours:.3} s | {:.2}× |",
        ours / theirs
    );
}

/// A forward of a fixed batch, synchronised.
fn forward<L: BertLinear>(model: &Bert<L>, device: &Device) -> Tensor<3> {
    let ids: Vec<i64> = (0..32).map(|i| (i * 977 + 101) % 30522).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 16]), device);
    let output = model.forward(ids);
    device.sync().unwrap();
    output
}

fn compare_forwards(
    name: &str,
    device: &Device,
    original: &Path,
    compressed: &Path,
    shared: Option<&SharedDevice>,
) {
    let decoded = load_bert(device, &mut BertConfig::original_store(original));
    let weights = match shared {
        Some(shared) => CodedWeights::open_shared(compressed, shared),
        None => CodedWeights::open(compressed, device),
    }
    .unwrap();
    let mut coded = BertConfig::minilm_l6().init_kept_coded(&weights).unwrap();
    coded
        .load_from(&mut BertConfig::compressed_store(compressed, shared))
        .unwrap();
    let theirs = median_seconds(|| forward(&decoded, device));
    let ours = median_seconds(|| forward(&coded, device));
    let memory = weights.memory();
    let decoded_bytes = decoded.num_params() as u64 * 4;
    let coded_bytes = coded.num_params() as u64 * 4 + memory.coded_bytes + memory.buffer_bytes;
    println!(
        "| {name} | forward of 2×16 tokens, loaded decoded against kept coded | {theirs:.4} s | {ours:.4} s | {:.2}× |",
        ours / theirs
    );
    println!(
        "| {name} | weights held (kept coded: {:.2} MB coded, {:.2} MB buffers) | {:.2} MB | {:.2} MB | {:.2}× |",
        memory.coded_bytes as f64 / 1e6,
        memory.buffer_bytes as f64 / 1e6,
        decoded_bytes as f64 / 1e6,
        coded_bytes as f64 / 1e6,
        coded_bytes as f64 / decoded_bytes as f64
    );
}

fn main() {
    let original = std::env::args_os()
        .skip(1)
        .find(|arg| !arg.to_string_lossy().starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/testdata/all-MiniLM-L6-v2.bf16.safetensors")
        });
    let scratch = tempfile::tempdir().unwrap();
    let compressed = scratch.path().join("model.ecf.safetensors");
    ecfloat::container::compress_file(&original, &compressed, &Default::default()).unwrap();
    println!("{}", original.display());
    println!("| device | what | burn-store, original | ecfloat, compressed | ratio |");
    println!("|---|---|---|---|---|");
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    compare_loads("ndarray", &ndarray, &original, &compressed, None);
    compare_forwards("ndarray", &ndarray, &original, &compressed, None);
    match SharedDevice::open() {
        Ok(shared) => {
            let device = shared.device();
            compare_loads("wgpu (shared)", device, &original, &compressed, None);
            compare_loads(
                "wgpu (shared)",
                device,
                &original,
                &compressed,
                Some(&shared),
            );
            compare_forwards(
                "wgpu (shared)",
                device,
                &original,
                &compressed,
                Some(&shared),
            );
        }
        Err(e) => println!("wgpu: not measured ({e})"),
    }
}
