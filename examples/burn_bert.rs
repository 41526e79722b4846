//! all-MiniLM-L6-v2 as a burn BERT, loaded from its compressed checkpoint
//! with `ecfloat::burn::EcfStore` and from the original with burn-store's
//! `SafetensorsStore`, the same options for both, on burn's CPU backend
//! (ndarray) and on wgpu where an adapter is found. Prints `identical` for
//! each, or what differs and exits 1.
//!
//! ```sh
//! cargo run --release --features burn --example burn_bert [-- ORIGINAL.safetensors]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use burn_store::{
    FloatCastAdapter, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use ecfloat::burn::EcfStore;
use ecfloat::burn::bert::{Bert, BertConfig};

/// The last hidden state of a fixed batch (2 sequences of 16 tokens) from
/// the model loaded from `store`, as bytes.
fn embeddings(device: &Device, store: &mut impl ModuleStore) -> Result<Vec<u8>, String> {
    let mut model: Bert = BertConfig::minilm_l6().init(device);
    model.load_from(store).map_err(|e| e.to_string())?;
    let ids: Vec<i64> = (0..32).map(|i| (i * 977 + 101) % 30522).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 16]), device);
    Ok(model.forward(ids).into_data().as_bytes().to_vec())
}

/// PyTorch's layouts and names to burn's, every float to F32.
fn adapter() -> impl ModuleAdapter + 'static {
    PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32))
}

fn compare(original: &Path, compressed: &Path, device: &Device) -> Result<bool, String> {
    let mut theirs = SafetensorsStore::from_file(original)
        .remap(BertConfig::key_remapper())
        .with_from_adapter(adapter());
    let mut ours = EcfStore::from_file(compressed)
        .remap(BertConfig::key_remapper())
        .with_from_adapter(adapter());
    Ok(embeddings(device, &mut ours)? == embeddings(device, &mut theirs)?)
}

fn main() -> ExitCode {
    let original = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/testdata/all-MiniLM-L6-v2.bf16.safetensors")
        });
    let scratch = match tempfile::tempdir() {
        Ok(scratch) => scratch,
        Err(e) => {
            eprintln!("cannot make a scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let compressed = scratch.path().join("model.ecf.safetensors");
    if let Err(e) = ecfloat::container::compress_file(&original, &compressed, &Default::default()) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    #[allow(deprecated)]
    let mut devices = vec![("ndarray", Device::ndarray())];
    match ecfloat::backend::open("wgpu") {
        Ok(_) => devices.push((
            "wgpu",
            Device::from(burn::backend::wgpu::WgpuDevice::default()),
        )),
        Err(e) => println!("wgpu: not run ({e})"),
    }
    let mut all_identical = true;
    for (name, device) in devices {
        match compare(&original, &compressed, &device) {
            Ok(true) => println!("{name}, loaded decoded: identical"),
            Ok(false) => {
                println!("{name}, loaded decoded: outputs differ");
                all_identical = false;
            }
            Err(e) => {
                println!("{name}: {e}");
                all_identical = false;
            }
        }
    }
    if all_identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
