//! The model runtime: every group decodes to exactly the source tensors,
//! two buffers alternate, and memory stays at the compressed model plus two
//! groups.

mod common;

use std::path::{Path, PathBuf};

use common::harness::{self, Ran};
use ecfloat::backend::Backend;
use ecfloat::container::{self, CompressOptions, SourceFile};
use ecfloat::runtime::{DecodedGroup, Grouping, Model, ModelOptions};

/// Compresses the real MiniLM (or, without the test data, the sample
/// model) into `dir`: (source, compressed).
fn compressed_model(dir: &Path) -> (PathBuf, PathBuf) {
    let source = match common::testdata() {
        Some(testdata) => testdata.join("all-MiniLM-L6-v2.bf16.safetensors"),
        None => common::write_sample(dir),
    };
    let compressed = dir.join("model.ecf.safetensors");
    container::compress_file(&source, &compressed, &CompressOptions::default()).unwrap();
    (source, compressed)
}

/// A test of the runtime on one backend.
type BackendTest = fn(&dyn Backend);

fn main() {
    let tests: [(&str, BackendTest); 2] = [
        (
            "decodes_every_group_exactly_with_two_buffers",
            decodes_every_group_exactly_with_two_buffers,
        ),
        (
            "a_flipped_mantissa_bit_fails_the_first_decode_naming_the_tensor",
            a_flipped_mantissa_bit_fails_the_first_decode_naming_the_tensor,
        ),
    ];
    let mut trials: Vec<_> = ["cpu", "wgpu", "cuda"]
        .into_iter()
        .flat_map(|name| {
            tests.map(|(test_name, test)| {
                harness::trial(format!("{name}::{test_name}"), move || {
                    test(harness::require_backend(name)?.as_ref());
                    Ok(())
                })
            })
        })
        .collect();
    trials.extend([
        harness::trial(
            "groups_the_real_model_by_layer",
            groups_the_real_model_by_layer,
        ),
        harness::trial("opens_a_directory_of_shards", opens_a_directory_of_shards),
    ]);
    harness::run(trials);
}

/// Checks every tensor of a decoded group against the safetensors file in
/// `sources` that holds it; returns how many it checked.
fn check_decoded_group(
    backend: &dyn Backend,
    decoded: &DecodedGroup,
    sources: &[SourceFile],
) -> usize {
    let mut checked = 0;
    for view in decoded.views() {
        let (source, entry) = sources
            .iter()
            .find_map(|source| {
                let entry = source.tensors().into_iter().find(|t| t.name == view.name)?;
                Some((source, entry))
            })
            .unwrap_or_else(|| panic!("{} is in no source file", view.name));
        // Stale bytes from an earlier group must not show through.
        let mut bytes = vec![0xA5u8; view.bytes as usize];
        backend
            .download(decoded.buffer(), view.offset, &mut bytes)
            .unwrap();
        assert!(
            bytes == source.data()[entry.range.clone()],
            "{}: {} differs",
            backend.name(),
            view.name
        );
        checked += 1;
    }
    checked
}

fn decodes_every_group_exactly_with_two_buffers(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (source_path, compressed) = compressed_model(dir.path());
    let source = SourceFile::open(&source_path).unwrap();
    let entries = source.tensors();
    let model = Model::open(&compressed, backend, ModelOptions::default()).unwrap();
    let groups = model.groups().len();
    let grouped: usize = model.groups().iter().map(|g| g.tensors.len()).sum();
    assert_eq!(grouped, entries.len());

    let mut spare = Some(model.group_buffer().unwrap());
    let mut pending = Some(
        model
            .start_decode(0, model.group_buffer().unwrap())
            .unwrap(),
    );
    let mut checked = 0;
    for group in 0..groups {
        let decoded = pending.take().unwrap().wait().unwrap();
        if group + 1 < groups {
            pending = Some(
                model
                    .start_decode(group + 1, spare.take().unwrap())
                    .unwrap(),
            );
        }
        checked += check_decoded_group(backend, &decoded, std::slice::from_ref(&source));
        spare = Some(decoded.into_buffer());
    }
    assert_eq!(checked, entries.len());

    let memory = model.memory();
    let two_groups = 2 * memory.largest_group_bytes.next_multiple_of(4);
    assert_eq!(
        memory.scratch_bytes, two_groups,
        "exactly two group buffers"
    );
    assert!(memory.peak_bytes <= memory.resident_bytes + two_groups + 64);
    assert!(memory.resident_bytes < memory.uncompressed_bytes);
    eprintln!("{}: {memory:?}", backend.name());
}

/// The one corruption only a tensor's checksum sees, a flipped raw
/// mantissa bit: the group's first decode is refused, naming the file and
/// the tensor, and the other groups decode.
fn a_flipped_mantissa_bit_fails_the_first_decode_naming_the_tensor(backend: &dyn Backend) {
    let dir = tempfile::tempdir().unwrap();
    let source = common::write_sample(dir.path());
    let compressed = dir.path().join("sample.ecf.safetensors");
    container::compress_file(&source, &compressed, &CompressOptions::default()).unwrap();
    let name = "layers.0.attn.weight";
    common::flip_rest_bit(&compressed, name);
    let model = Model::open(&compressed, backend, ModelOptions::default()).unwrap();
    let broken = model.group_of(name).unwrap();
    for _ in 0..2 {
        let error = model
            .decode_group(broken, model.group_buffer().unwrap())
            .err()
            .expect("a flipped bit is refused")
            .to_string();
        assert!(
            error.contains(name)
                && error.contains("sample.ecf.safetensors")
                && error.contains("checksum"),
            "{}: {error}",
            backend.name()
        );
    }
    let sources = [SourceFile::open(&source).unwrap()];
    for group in (0..model.groups().len()).filter(|&g| g != broken) {
        let decoded = model
            .decode_group(group, model.group_buffer().unwrap())
            .unwrap();
        check_decoded_group(backend, &decoded, &sources);
    }
}

fn groups_the_real_model_by_layer() -> Ran {
    let testdata = harness::require_testdata()?;
    let dir = tempfile::tempdir().unwrap();
    let compressed = dir.path().join("minilm.ecf.safetensors");
    let source = testdata.join("all-MiniLM-L6-v2.bf16.safetensors");
    container::compress_file(&source, &compressed, &CompressOptions::default()).unwrap();
    let backend = ecfloat::backend::CpuBackend::new();
    let model = Model::open(&compressed, &backend, ModelOptions::default()).unwrap();
    let layers: Vec<&str> = model
        .groups()
        .iter()
        .map(|g| g.name.as_str())
        .filter(|name| name.starts_with("encoder.layer."))
        .collect();
    assert_eq!(
        layers,
        (0..6)
            .map(|i| format!("encoder.layer.{i}"))
            .collect::<Vec<_>>()
    );
    let layer = model
        .group_of("encoder.layer.3.attention.self.query.weight")
        .unwrap();
    assert_eq!(model.groups()[layer].name, "encoder.layer.3");

    // A caller's grouping: everything in one group.
    let options = ModelOptions {
        grouping: Grouping::Custom(Box::new(|_| "all".to_string())),
    };
    let model = Model::open(&compressed, &backend, options).unwrap();
    assert_eq!(model.groups().len(), 1);
    Ok(())
}

fn opens_a_directory_of_shards() -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let tensors = common::sample_tensors();
    let (first, second) = tensors.split_at(3);
    let mut sources = Vec::new();
    for (number, part) in [first, second].into_iter().enumerate() {
        let source = dir.path().join(format!("part{number}.safetensors"));
        common::write_safetensors(&source, part, &[]);
        let output = dir
            .path()
            .join(format!("shards/part{number}.ecf.safetensors"));
        std::fs::create_dir_all(output.parent().unwrap()).unwrap();
        container::compress_file(&source, &output, &CompressOptions::default()).unwrap();
        sources.push(SourceFile::open(&source).unwrap());
    }
    let backend = ecfloat::backend::CpuBackend::new();
    let model = Model::open(
        &dir.path().join("shards"),
        &backend,
        ModelOptions::default(),
    )
    .unwrap();
    assert_eq!(model.tensors().len(), tensors.len());
    let checked: usize = (0..model.groups().len())
        .map(|group| {
            let decoded = model
                .decode_group(group, model.group_buffer().unwrap())
                .unwrap();
            check_decoded_group(&backend, &decoded, &sources)
        })
        .sum();
    assert_eq!(checked, tensors.len());
    Ok(())
}
