//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod harness;
pub mod kernel_cost;
pub mod kernel_on_cpu;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ecfloat::backend::Backend;
use ecfloat::codec::FloatKind;
use ecfloat::conformance::{self, Family};
use ecfloat::container::write::TensorData;
use ecfloat::synth;

/// Where the real weights are looked for.
pub fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata")
}

/// `../shared/testdata`, or `None` where it is absent.
pub fn testdata() -> Option<PathBuf> {
    Some(testdata_dir()).filter(|dir| dir.is_dir())
}

/// The `.safetensors` files of the test data, sorted.
pub fn testdata_files() -> Vec<PathBuf> {
    let Some(dir) = testdata() else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

pub struct SampleTensor {
    pub name: &'static str,
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// A small safetensors file with a tensor of every coded dtype, an integer
/// tensor and metadata.
pub fn sample_tensors() -> Vec<SampleTensor> {
    let mut tensors: Vec<SampleTensor> = [
        ("layers.0.attn.weight", FloatKind::Bf16, 300u64, 128u64),
        ("layers.0.mlp.weight", FloatKind::F16, 200, 100),
        ("layers.1.attn.weight", FloatKind::F8E4M3, 128, 128),
        ("layers.1.mlp.weight", FloatKind::F8E5M2, 100, 100),
        ("head.weight", FloatKind::F32, 64, 200),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, kind, rows, cols))| SampleTensor {
        name,
        dtype: kind.safetensors_name(),
        shape: vec![rows, cols],
        bytes: synth::to_bytes(
            &synth::heavy_tailed((rows * cols) as usize, cols as usize, 0.02, i as u64),
            kind,
        ),
    })
    .collect();
    tensors.push(SampleTensor {
        name: "position_ids",
        dtype: "I64",
        shape: vec![1, 7],
        bytes: (0..7i64).flat_map(i64::to_le_bytes).collect(),
    });
    tensors
}

pub fn write_safetensors(path: &Path, tensors: &[SampleTensor], metadata: &[(&str, String)]) {
    let tensors: Vec<TensorData> = tensors
        .iter()
        .map(|t| TensorData {
            name: t.name,
            dtype: t.dtype,
            shape: &t.shape,
            bytes: &t.bytes,
        })
        .collect();
    ecfloat::container::write::write_safetensors(path, metadata, &tensors).unwrap();
}

/// Writes the sample model to `dir/sample.safetensors`.
pub fn write_sample(dir: &Path) -> PathBuf {
    let path = dir.join("sample.safetensors");
    write_safetensors(&path, &sample_tensors(), &[("format", "pt".to_string())]);
    path
}

pub fn ecf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ecf"))
        .args(args)
        .output()
        .expect("the ecf binary runs")
}

pub fn ecf_path(args: &[&str], path: &Path) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.push(path.to_str().unwrap());
    ecf(&all)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Flips one bit in the middle of coded tensor `name`'s rest plane in the
/// file at `path`: raw mantissa bits, which only the tensor's checksum can
/// tell from the original's.
#[allow(dead_code)]
pub fn flip_rest_bit(path: &Path, name: &str) {
    use ecfloat::container::{CompressedFile, Storage};

    let file = CompressedFile::open(path).unwrap();
    let tensor = file.tensor(name).unwrap();
    let Storage::Coded(coded) = &tensor.storage else {
        panic!("{name} is not coded");
    };
    let data_start = std::fs::metadata(path).unwrap().len() as usize - file.data().len();
    let rest = coded.rest_range.clone();
    assert!(!rest.is_empty(), "{name} has no rest plane");
    let middle = data_start + (rest.start + rest.end) / 2;
    drop(file);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[middle] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// The safetensors header of `bytes` as JSON, and where the data starts.
pub fn read_header(bytes: &[u8]) -> (serde_json::Value, usize) {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + len]).unwrap(), 8 + len)
}

/// `bytes` with its header replaced by `header` (data unchanged).
pub fn with_header(bytes: &[u8], header: &serde_json::Value) -> Vec<u8> {
    let (_, data_start) = read_header(bytes);
    let mut json = serde_json::to_vec(header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[data_start..]);
    out
}

/// The conformance checks every backend runs; see `tests/conformance.rs`.
pub fn check_family(backend: &dyn Backend, family: Family) {
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

pub fn check_real_weights(backend: &dyn Backend) -> harness::Ran {
    for file in harness::require_testdata_files()? {
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
    Ok(())
}

/// Verifies every checked-in vector, of every format version, on `backend`.
pub fn check_vectors(backend: &dyn Backend) {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut checked = 0;
    let versions = ecfloat::container::schema::READABLE_VERSIONS;
    let files = versions.iter().flat_map(|version| {
        std::fs::read_dir(directory.join(format!("v{version}")))
            .unwrap()
            .map(|entry| entry.unwrap().path())
    });
    for path in files {
        if path.to_string_lossy().ends_with(".ecf.safetensors") {
            let checks =
                ecfloat::tools::verify::verify_file_on(&path, backend, &Default::default())
                    .unwrap();
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

/// Opens the backend a group of tests decodes on, or says why it cannot.
pub type OpenBackend = fn() -> Result<Box<dyn Backend>, harness::Skip>;

/// The conformance suite for one backend: a test per case family, named
/// `<module>::<test>`, each decoding on the backend `open` returns.
pub fn conformance_trials(module: &str, open: OpenBackend) -> Vec<libtest_mimic::Trial> {
    let family = |name: &str, family: Family| {
        harness::trial(format!("{module}::{name}"), move || {
            check_family(open()?.as_ref(), family);
            Ok(())
        })
    };
    vec![
        family("decodes_heavy_tailed_weights", Family::HeavyTailed),
        family("decodes_a_single_exponent", Family::SingleExponent),
        family("decodes_all_exponents", Family::AllExponents),
        family(
            "decodes_nan_inf_zeros_and_subnormals",
            Family::SpecialValues,
        ),
        family("decodes_the_longest_codes", Family::LongestCodes),
        family("decodes_empty_single_and_odd_lengths", Family::Lengths),
        family("decodes_random_bits", Family::RandomBits),
        family("decodes_every_block_mode", Family::MixedBlockModes),
        family(
            "decodes_chunks_with_sync_exceptions",
            Family::SyncExceptions,
        ),
        family("decodes_constant_rest_bits", Family::ConstantRestBits),
        family("decodes_skewed_signs", Family::SkewedSigns),
        harness::trial(
            format!("{module}::decodes_many_tensors_into_one_buffer"),
            move || {
                let backend = open()?;
                let mut cases = Family::Lengths.cases();
                cases.extend(Family::MixedBlockModes.cases());
                cases.extend(Family::SpecialValues.cases());
                conformance::check_batch(backend.as_ref(), &cases)
                    .unwrap_or_else(|e| panic!("{}: {e}", backend.name()));
                Ok(())
            },
        ),
        harness::trial(
            format!("{module}::refuses_jobs_that_overlap_or_overrun"),
            move || {
                let backend = open()?;
                conformance::check_job_validation(backend.as_ref())
                    .unwrap_or_else(|e| panic!("{}: {e}", backend.name()));
                Ok(())
            },
        ),
        harness::trial(format!("{module}::decodes_real_weights"), move || {
            harness::require_testdata()?;
            check_real_weights(open()?.as_ref())
        }),
        harness::trial(format!("{module}::decodes_checked_in_vectors"), move || {
            check_vectors(open()?.as_ref());
            Ok(())
        }),
    ]
}

/// Replaces the index plane of the coded tensor `name` (of `elements`
/// elements of `kind`) in a compressed file, moving the tensors after it.
pub fn replace_coded_index(path: &Path, name: &str, kind: FloatKind, elements: u64, index: &[u8]) {
    rewrite_coded_tensor(path, name, kind, elements, |_, old_index| {
        *old_index = index.to_vec()
    });
}

/// Lets `edit` change the coded header and the index plane of the coded
/// tensor `name` (of `elements` elements of `kind`) in a compressed file,
/// moving the tensors after it; the header's plane lengths follow.
pub fn rewrite_coded_tensor(
    path: &Path,
    name: &str,
    kind: FloatKind,
    elements: u64,
    edit: impl FnOnce(&mut ecfloat::container::schema::CodedHeader, &mut Vec<u8>),
) {
    use ecfloat::container::schema::{self, CodedHeader};
    let mut edit = Some(edit);
    let bytes = std::fs::read(path).unwrap();
    let (mut header, data_start) = read_header(&bytes);
    let mut tensors: Vec<(String, usize, usize)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| *key != "__metadata__")
        .map(|(key, entry)| {
            let offsets = &entry["data_offsets"];
            let offset = |i: usize| offsets[i].as_u64().unwrap() as usize;
            (key.clone(), offset(0), offset(1))
        })
        .collect();
    tensors.sort_by_key(|t| t.1);
    let data = &bytes[data_start..];
    let mut new_data = Vec::new();
    for (tensor, start, end) in tensors {
        let mut tensor_bytes = data[start..end].to_vec();
        if tensor == name {
            let (mut coded, len) =
                CodedHeader::read(&tensor_bytes, schema::FORMAT_VERSION, kind, elements).unwrap();
            let index_end = len + coded.index_len as usize;
            let mut index = tensor_bytes[len..index_end].to_vec();
            let planes = tensor_bytes[index_end..].to_vec();
            (edit.take().expect("one tensor of that name"))(&mut coded, &mut index);
            coded.index_len = index.len() as u64;
            tensor_bytes.clear();
            coded.write(&mut tensor_bytes);
            tensor_bytes.extend_from_slice(&index);
            tensor_bytes.extend_from_slice(&planes);
            header[&tensor]["shape"] = serde_json::json!([tensor_bytes.len()]);
        }
        let offset = new_data.len();
        new_data.extend_from_slice(&tensor_bytes);
        header[&tensor]["data_offsets"] = serde_json::json!([offset, new_data.len()]);
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&json);
    file.extend_from_slice(&new_data);
    std::fs::write(path, file).unwrap();
}

/// Planes of a coded tensor, as a hostile file may give them.
pub struct CodedPlanes {
    pub params: ecfloat::codec::TensorParams,
    /// The checksum it claims for its decoded bytes.
    pub checksum: u64,
    pub index: Vec<u8>,
    pub head: Vec<u8>,
    pub rest: Vec<u8>,
}

/// Writes a compressed file of one coded tensor `weight` from `planes`,
/// without the encoder: the file any program could write, claiming any
/// size. Its whole-file checksum is `0`, which no real file has.
pub fn write_coded_file(path: &Path, planes: &CodedPlanes) {
    use ecfloat::container::schema::{self, CodedHeader};
    use ecfloat::container::write::{OutputTensor, SafetensorsWriter};
    let params = &planes.params;
    let kind = params.kind();
    let source_header = serde_json::json!({
        "weight": {
            "dtype": kind.safetensors_name(),
            "shape": [params.elements],
            "data_offsets": [0, params.decoded_bytes()],
        }
    });
    let mut source_json = serde_json::to_vec(&source_header).unwrap();
    source_json.resize(source_json.len().next_multiple_of(8), b' ');
    let deflated = miniz_oxide::deflate::compress_to_vec(&source_json, 6);
    let mut coded = Vec::new();
    CodedHeader {
        params: params.clone(),
        checksum: planes.checksum,
        index_len: planes.index.len() as u64,
        head_len: planes.head.len() as u64,
        rest_len: planes.rest.len() as u64,
    }
    .write(&mut coded);
    for plane in [&planes.index, &planes.head, &planes.rest] {
        coded.extend_from_slice(plane);
    }
    let layout = [
        OutputTensor {
            name: schema::SOURCE_HEADER_TENSOR.to_string(),
            dtype: "U8".to_string(),
            shape: vec![deflated.len() as u64],
            len: deflated.len() as u64,
        },
        OutputTensor {
            name: "weight".to_string(),
            dtype: "U8".to_string(),
            shape: vec![coded.len() as u64],
            len: coded.len() as u64,
        },
    ];
    let metadata = [
        (schema::FORMAT_KEY, schema::FORMAT_NAME.to_string()),
        (schema::VERSION_KEY, schema::FORMAT_VERSION.to_string()),
        (schema::SOURCE_CHECKSUM_KEY, schema::format_checksum(0)),
    ];
    let mut writer = SafetensorsWriter::create(path, &metadata, &layout).unwrap();
    writer.write(&deflated).unwrap();
    writer.write(&coded).unwrap();
    writer.finish().unwrap();
}

/// BF16 parameters with every rest bit constant, so that blocks of one
/// constant head need no plane bytes at all.
pub fn constant_bf16_params(elements: u64, block_elements: u32) -> ecfloat::codec::TensorParams {
    use ecfloat::codec::{ChunkGeometry, FieldSplit, TensorParams};
    TensorParams {
        split: FieldSplit {
            kind: FloatKind::Bf16,
            sign_in_head: false,
            head_bits: 8,
            rest_const_bits: 8,
            rest_const_value: 0,
        },
        elements,
        block_elements,
        geometry: ChunkGeometry {
            chunk_bits: 1024,
            warmup_bits: 64,
        },
    }
}
