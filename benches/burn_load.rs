//! Loading all-MiniLM-L6-v2 into burn, against burn-store's own loading of
//! the original in the same run:
//! `cargo bench --features burn --bench burn_load [-- ORIGINAL]`.
//!
//! ORIGINAL is the BF16 MiniLM checkpoint (default: the test data's),
//! compressed first, untimed. As the median of 5 runs after a warm-up, on
//! burn's CPU backend (ndarray) and on the wgpu device ecfloat shares with
//! burn (lavapipe, on a machine without a GPU), it times:
//!
//! - `burn-store`: `SafetensorsStore` of the original into a burn BERT,
//!   every float made F32 (`FloatCastAdapter`) and PyTorch's layouts
//!   burn's (`PyTorchToBurnAdapter`);
//! - `EcfStore`: the same from the compressed file, decoded on the CPU;
//! - on wgpu, `decode on device`: every float tensor of the compressed file
//!   decoded by the WGSL decoder into burn tensors and widened to F32 on
//!   the device ([`ecfloat::burn::SharedDevice::decode_tensor`]), against
//!   burn-store's loading of the same tensors, without a module.
//!
//! Each load ends with the device synchronised.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor};
use burn_store::{
    FloatCastAdapter, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use ecfloat::burn::bert::BertConfig;
use ecfloat::burn::{EcfStore, SharedDevice};
use ecfloat::container::CompressedCheckpoint;

mod common;

use common::median_seconds;

fn adapter() -> impl ModuleAdapter + 'static {
    PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32))
}

/// A BERT loaded from `store` on `device`, synchronised.
fn load_bert<S: ModuleStore>(device: &Device, store: &mut S) {
    let mut model = BertConfig::minilm_l6().init(device);
    model.load_from(store).unwrap();
    device.sync().unwrap();
}

fn compare_stores(name: &str, device: &Device, original: &Path, compressed: &Path) {
    let theirs = median_seconds(|| {
        let mut store = SafetensorsStore::from_file(original)
            .remap(BertConfig::key_remapper())
            .with_from_adapter(adapter());
        load_bert(device, &mut store)
    });
    let ours = median_seconds(|| {
        let mut store = EcfStore::from_file(compressed)
            .remap(BertConfig::key_remapper())
            .with_from_adapter(adapter());
        load_bert(device, &mut store)
    });
    println!(
        "| {name} | BERT through a store | {:.3} s | {:.3} s | {:.2}× |",
        theirs,
        ours,
        ours / theirs
    );
}

/// Every float tensor of the original, made F32 tensors on `shared`'s
/// device by burn-store, and decoded there by ecfloat.
fn compare_device_decode(shared: &SharedDevice, original: &Path, compressed: &Path) {
    let device = shared.device();
    let theirs = median_seconds(|| {
        let mut store = SafetensorsStore::from_file(original);
        let tensors: Vec<_> = store.get_all_tensors().unwrap().values().cloned().collect();
        let made: Vec<Tensor<1>> = tensors
            .into_iter()
            .filter(|tensor| tensor.dtype.is_float())
            .map(|tensor| {
                let (dtype, elements) = (tensor.dtype, tensor.shape.iter().product::<usize>());
                let data = burn::tensor::TensorData::from_bytes(
                    tensor.into_bytes().unwrap(),
                    vec![elements],
                    dtype,
                )
                .convert_dtype(DType::F32);
                Tensor::<1>::from_data(data, device)
            })
            .collect();
        device.sync().unwrap();
        made
    });
    let ours = median_seconds(|| {
        let checkpoint = CompressedCheckpoint::open(compressed).unwrap();
        let names: Vec<String> = checkpoint.names().map(str::to_string).collect();
        let made: Vec<Tensor<1>> = names
            .iter()
            .filter_map(|name| {
                let (_, stored) = checkpoint.get(name).unwrap();
                let elements = stored.source.shape.iter().product::<usize>();
                let float = matches!(
                    stored.source.dtype,
                    safetensors::Dtype::BF16 | safetensors::Dtype::F16
                );
                match stored.source.shape.len() {
                    1 if float => Some(
                        shared
                            .decode_tensor::<1>(&checkpoint, name, DType::F32)
                            .unwrap(),
                    ),
                    2 if float => Some(
                        shared
                            .decode_tensor::<2>(&checkpoint, name, DType::F32)
                            .unwrap()
                            .reshape([elements]),
                    ),
                    _ => None,
                }
            })
            .collect();
        device.sync().unwrap();
        made
    });
    println!(
        "| wgpu (shared) | every 16-bit float tensor as F32, no module | {:.3} s | {:.3} s | {:.2}× |",
        theirs,
        ours,
        ours / theirs
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
    compare_stores("ndarray", &Device::ndarray(), &original, &compressed);
    match SharedDevice::open() {
        Ok(shared) => {
            compare_stores("wgpu (shared)", shared.device(), &original, &compressed);
            compare_device_decode(&shared, &original, &compressed);
        }
        Err(e) => println!("wgpu: not measured ({e})"),
    }
}
