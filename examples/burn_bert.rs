//! all-MiniLM-L6-v2 as a burn BERT, from its compressed checkpoint against
//! burn-store's `SafetensorsStore` loading of the original with the same
//! options, on burn's CPU backend (ndarray) and on a wgpu device shared
//! with ecfloat's decoder where an adapter is found, in two modes: loaded
//! decoded (`ecfloat::burn::EcfStore`; on wgpu, decoded on the device) and
//! with every linear layer's weight kept coded (`CodedWeights`). Prints
//! `identical` for each, or what differs and exits 1.
//!
//! ```sh
//! cargo run --release --features burn --example burn_bert [-- ORIGINAL.safetensors]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_store::ModuleSnapshot;
use ecfloat::burn::bert::{Bert, BertConfig, BertLinear};
use ecfloat::burn::{CodedWeights, SharedDevice};

/// The last hidden state of a fixed batch (2 sequences of 16 tokens), as
/// bytes.
fn embeddings<L: BertLinear>(model: &Bert<L>, device: &Device) -> Vec<u8> {
    let ids: Vec<i64> = (0..32).map(|i| (i * 977 + 101) % 30522).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 16]), device);
    model.forward(ids).into_data().as_bytes().to_vec()
}

/// Whether each mode's output on `device` is the original's, in order:
/// loaded decoded, kept coded.
fn compare(
    original: &Path,
    compressed: &Path,
    device: &Device,
    shared: Option<&SharedDevice>,
) -> Result<[bool; 2], String> {
    let config = BertConfig::minilm_l6();
    let mut theirs: Bert = config.init(device);
    theirs
        .load_from(&mut BertConfig::original_store(original))
        .map_err(|e| e.to_string())?;
    let want = embeddings(&theirs, device);

    let mut decoded: Bert = config.init(device);
    decoded
        .load_from(&mut BertConfig::compressed_store(compressed, shared))
        .map_err(|e| e.to_string())?;

    let weights = match shared {
        Some(shared) => CodedWeights::open_shared(compressed, shared),
        None => CodedWeights::open(compressed, device),
    }
    .map_err(|e| e.to_string())?;
    let mut coded = config
        .init_kept_coded(&weights)
        .map_err(|e| e.to_string())?;
    coded
        .load_from(&mut BertConfig::compressed_store(compressed, shared))
        .map_err(|e| e.to_string())?;
    Ok([
        embeddings(&decoded, device) == want,
        embeddings(&coded, device) == want,
    ])
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
    let mut devices = vec![("ndarray", Device::ndarray(), None)];
    match SharedDevice::open() {
        Ok(shared) => devices.push(("wgpu", shared.device().clone(), Some(shared))),
        Err(e) => println!("wgpu: not run ({e})"),
    }
    let mut all_identical = true;
    for (name, device, shared) in &devices {
        match compare(&original, &compressed, device, shared.as_ref()) {
            Ok(identical) => {
                for (mode, identical) in ["loaded decoded", "kept coded"].iter().zip(identical) {
                    let verdict = if identical {
                        "identical"
                    } else {
                        "outputs differ"
                    };
                    println!("{name}, {mode}: {verdict}");
                    all_identical &= identical;
                }
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
