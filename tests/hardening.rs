//! Hostile and unlucky input: files that claim far more than they hold,
//! directory manifests that do not add up, outputs that are not files,
//! interrupted runs, symbolic links, and messages that must name the
//! tensor, the same one every run.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{
    CodedPlanes, constant_bf16_params, ecf, ecf_path, stderr, write_coded_file, write_sample,
};

/// Address space `ecf` may use in the bomb tests: far below what any of the
/// files claims, far above what bounded decoding needs.
const ADDRESS_SPACE_KIB: u64 = 1 << 20;

/// Runs `ecf args` on two threads with its address space limited to
/// [`ADDRESS_SPACE_KIB`], so that any allocation in proportion to what a
/// file claims fails instead of succeeding lazily.
fn ecf_in_bounded_memory(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" --threads 2 --quiet \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_ecf"))
        .args(args)
        .env("MALLOC_ARENA_MAX", "2")
        .output()
        .unwrap()
}

/// Constant blocks claiming `elements` BF16 elements: two index bytes per
/// block of `block_elements`, no head or rest bytes.
fn constant_blocks(path: &Path, elements: u64, block_elements: u32) {
    let params = constant_bf16_params(elements, block_elements);
    let blocks = params.block_count() as usize;
    write_coded_file(
        path,
        &CodedPlanes {
            params,
            checksum: 0x0123_4567_89ab_cdef,
            index: [1u8, 0x7f].repeat(blocks),
            head: Vec::new(),
            rest: Vec::new(),
        },
    );
}

fn assert_fails_cleanly(output: &Output, what: &str, message: &str) {
    let error = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{what}: {error}");
    assert!(error.contains(message), "{what}: {error}");
    assert!(!error.contains("panicked"), "{what}: {error}");
}

#[test]
#[cfg_attr(not(unix), ignore = "needs sh and ulimit to bound the address space")]
fn constant_blocks_claiming_gigabytes_are_decoded_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.ecf.safetensors");
    // 4 KB on disk, 4 GiB decoded: 2^31 BF16 elements in 2048 blocks.
    constant_blocks(&bomb, 1 << 31, 1 << 20);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 8 << 10);
    let bomb = bomb.to_str().unwrap();

    // Every element is decoded and hashed, a window at a time; the claimed
    // checksum does not match.
    let output = ecf_in_bounded_memory(&["verify", bomb]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        common::stdout(&output).contains("do not match the checksum"),
        "{}",
        common::stdout(&output)
    );
    // analyze studies the same bytes, and refuses to report on them.
    let output = ecf_in_bounded_memory(&["analyze", bomb, "--json"]);
    assert_fails_cleanly(&output, "analyze", "do not match the checksum");
    let output = ecf_in_bounded_memory(&["inspect", bomb, "--json"]);
    assert!(output.status.success(), "inspect: {}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["tensors"][0]["exponent_entropy"], 0.0);
}

#[test]
#[cfg_attr(not(unix), ignore = "needs sh and ulimit to bound the address space")]
fn an_output_larger_than_the_free_space_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.ecf.safetensors");
    // 2 MB on disk, 2 TiB decoded.
    constant_blocks(&bomb, 1 << 40, 1 << 20);
    let output = ecf_in_bounded_memory(&["decompress", bomb.to_str().unwrap()]);
    assert_fails_cleanly(&output, "decompress", "are free there");
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(written.len(), 1, "nothing but the input: {written:?}");
    let output = ecf_in_bounded_memory(&["bench", bomb.to_str().unwrap()]);
    assert_fails_cleanly(
        &output,
        "bench",
        "bench holds every tensor in memory three times",
    );
    // inspect reads the index, not the claimed elements: fast and small.
    let started = std::time::Instant::now();
    let output = ecf_in_bounded_memory(&["inspect", bomb.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(started.elapsed().as_secs() < 30);
}

#[test]
#[cfg_attr(not(unix), ignore = "needs sh and ulimit to bound the address space")]
fn a_huge_block_index_is_read_a_window_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.ecf.safetensors");
    // 2^23 blocks of 1024 elements in a 16 MB index: parsed whole, its
    // records alone would take over 300 MB; claimed, 16 GiB decoded.
    constant_blocks(&bomb, 1 << 33, 1 << 10);
    let output = ecf_in_bounded_memory(&["inspect", bomb.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["tensors"][0]["blocks"], 1u64 << 23);
    // Bounded by the address space, not by the 300 MB a parsed index
    // takes: a second limit, well under that, still passes.
    let output = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 400000 && exec \"$0\" --threads 1 --quiet inspect \"$1\"")
        .arg(env!("CARGO_BIN_EXE_ecf"))
        .arg(&bomb)
        .env("MALLOC_ARENA_MAX", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn empty_planes_claiming_elements_are_rejected_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.ecf.safetensors");
    write_coded_file(
        &bomb,
        &CodedPlanes {
            params: constant_bf16_params(1 << 31, 1 << 20),
            checksum: 0,
            index: Vec::new(),
            head: Vec::new(),
            rest: Vec::new(),
        },
    );
    for command in ["inspect", "verify", "analyze", "decompress", "bench"] {
        let output = ecf_path(&[command], &bomb);
        assert_fails_cleanly(
            &output,
            command,
            "tensor weight: invalid block index: 2048 blocks need at least 2048 index bytes",
        );
    }
}

/// A compressed checkpoint directory of two shards.
fn compressed_checkpoint(root: &Path) -> std::path::PathBuf {
    let model = root.join("model");
    std::fs::create_dir(&model).unwrap();
    for shard in ["a", "b"] {
        let sample = write_sample(root);
        std::fs::rename(sample, model.join(format!("{shard}.safetensors"))).unwrap();
    }
    std::fs::write(model.join("config.json"), "{}").unwrap();
    let output = ecf_path(&["compress"], &model);
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::remove_dir_all(&model).unwrap();
    root.join("model.ecf")
}

fn edit_manifest(directory: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = directory.join("ecfloat.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[test]
fn directory_manifests_are_checked_before_anything_is_rebuilt() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 6] = [
        (
            "two sources, one shard",
            |m| m["shards"]["b.safetensors"] = "a.ecf.safetensors".into(),
            "rebuilds both a.safetensors and b.safetensors from the one shard a.ecf.safetensors",
        ),
        (
            "a missing shard",
            |m| m["shards"]["c.safetensors"] = "c.ecf.safetensors".into(),
            "it lists the shard c.ecf.safetensors, which is not in the directory",
        ),
        (
            "a path out of the directory",
            |m| m["shards"]["../escape.safetensors"] = "a.ecf.safetensors".into(),
            "\"../escape.safetensors\" is not the plain name of a file in the directory",
        ),
        (
            "a later format version",
            |m| m["version"] = 3.into(),
            "format version \"3\" is not supported",
        ),
        (
            "a rebuilt shard onto a copied file",
            |m| m["shards"]["config.json"] = m["shards"]["a.safetensors"].take(),
            "shards and their sources are .safetensors files",
        ),
        (
            "no shards",
            |m| m["shards"] = serde_json::json!({}),
            "it lists no shards",
        ),
    ];
    for (what, edit, message) in cases {
        let root = tempfile::tempdir().unwrap();
        let compressed = compressed_checkpoint(root.path());
        edit_manifest(&compressed, edit);
        if what == "a rebuilt shard onto a copied file" {
            edit_manifest(&compressed, |m| {
                m["shards"].as_object_mut().unwrap().remove("a.safetensors");
            });
        }
        for command in ["decompress", "verify"] {
            let output = ecf_path(&[command], &compressed);
            assert_fails_cleanly(&output, &format!("{what}: {command}"), message);
        }
        assert!(
            !root.path().join("model").exists(),
            "{what}: nothing is rebuilt"
        );
    }
}

#[test]
fn a_manifest_that_repeats_a_key_is_refused() {
    // Whichever value a parser keeps, one reader would see another manifest.
    for (first, second) in [("2", "99"), ("99", "2")] {
        let root = tempfile::tempdir().unwrap();
        let compressed = compressed_checkpoint(root.path());
        let path = compressed.join("ecfloat.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = replace_once(
            &text,
            "\"version\": 2",
            &format!("\"version\": {first},\n  \"version\": {second}"),
        );
        std::fs::write(&path, text).unwrap();
        for command in ["decompress", "verify"] {
            let output = ecf_path(&[command], &compressed);
            assert_fails_cleanly(
                &output,
                &format!("version {first} then {second}: {command}"),
                "the key \"version\" appears twice in one JSON object",
            );
        }
    }
}

/// `text` with its one occurrence of `from` replaced by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from} in {text}");
    text.replace(from, to)
}

#[test]
fn a_copied_file_that_would_land_on_a_rebuilt_shard_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let compressed = compressed_checkpoint(root.path());
    std::fs::write(compressed.join("a.safetensors"), "not the shard").unwrap();
    let output = ecf_path(&["decompress"], &compressed);
    assert_fails_cleanly(
        &output,
        "decompress",
        "holds a file a.safetensors, and the shard a.ecf.safetensors would be rebuilt onto it",
    );
}

#[test]
#[cfg_attr(not(unix), ignore = "makes a FIFO with mkfifo and writes to /dev/null")]
fn outputs_that_are_not_regular_files_are_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for (target, kind) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/null"), "a device"),
    ] {
        let output = ecf(&[
            "compress",
            source.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
            "--force",
        ]);
        assert_fails_cleanly(
            &output,
            kind,
            &format!("is {kind}; ecf writes only regular files"),
        );
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

/// Names in `dir`.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether process `pid` has an output open in `dir` other than `source`:
/// on Linux, an open file there, named or not (outputs are written
/// unnamed); elsewhere, a file under the temporary name outputs get.
fn writing_output(pid: u32, dir: &Path, source: &Path) -> bool {
    if cfg!(target_os = "linux") {
        let dir = dir.canonicalize().unwrap();
        let source = source.canonicalize().unwrap();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .any(|open| open.starts_with(&dir) && open != source)
    } else {
        file_names(dir)
            .iter()
            .any(|name| name.starts_with(".ecf-partial-"))
    }
}

#[test]
#[cfg_attr(not(unix), ignore = "sends signals with kill")]
fn an_interrupted_run_leaves_no_partial_output() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    // Large enough to take a while on one thread: 64 Mi BF16 elements.
    let source = dir.path().join("big.safetensors");
    let values = ecfloat::synth::heavy_tailed_bytes(ecfloat::codec::FloatKind::Bf16, 64 << 20, 3);
    ecfloat::container::write::write_safetensors(
        &source,
        &[],
        &[ecfloat::container::write::TensorData {
            name: "weight",
            dtype: "BF16",
            shape: &[64 << 20],
            bytes: &values,
        }],
    )
    .unwrap();
    drop(values);
    // A killed process runs no handler: only an output without a name
    // until it is complete (Linux's O_TMPFILE) leaves nothing then.
    let signals: &[(&str, i32)] = if cfg!(target_os = "linux") {
        &[("INT", 2), ("TERM", 15), ("KILL", 9)]
    } else {
        &[("INT", 2), ("TERM", 15)]
    };
    for &(signal, number) in signals {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ecf"))
            .args(["--threads", "1", "--quiet", "compress", "--force"])
            .arg(&source)
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !writing_output(child.id(), dir.path(), &source) {
            assert!(started.elapsed().as_secs() < 60, "no output was opened");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        if status.success() {
            // It finished before the signal arrived.
            std::fs::remove_file(dir.path().join("big.ecf.safetensors")).unwrap();
            continue;
        }
        assert_eq!(status.signal(), Some(number), "dies of SIG{signal}");
        assert_eq!(file_names(dir.path()), ["big.safetensors"], "SIG{signal}");
    }
}

#[test]
#[cfg_attr(not(unix), ignore = "makes symbolic links")]
fn directory_links_and_nesting_are_explained() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let sample = write_sample(root.path());
    // A link to a file elsewhere (as Hugging Face's cache makes) is read.
    std::os::unix::fs::symlink(&sample, model.join("a.safetensors")).unwrap();
    let output = ecf_path(&["compress"], &model);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        root.path()
            .join("model.ecf/a.ecf.safetensors")
            .metadata()
            .unwrap()
            .is_file()
    );

    // A link to a directory, a loop among them, is not followed.
    std::os::unix::fs::symlink(&model, model.join("loop")).unwrap();
    let output = ecf_path(&["compress", "--force"], &model);
    assert_fails_cleanly(&output, "loop", "loop: is a symbolic link to");
    assert!(stderr(&output).contains("follows links to files only"));
    assert!(stderr(&output).len() < 400, "{}", stderr(&output));
    std::fs::remove_file(model.join("loop")).unwrap();

    let output = ecf(&[
        "compress",
        model.to_str().unwrap(),
        "-o",
        model.join("inside.ecf").to_str().unwrap(),
    ]);
    assert_fails_cleanly(
        &output,
        "nested",
        "the output is inside the input directory",
    );
}

/// A file whose header gives tensor `name` a byte length its dtype and
/// shape do not have.
fn with_wrong_length(dir: &Path, name: &str) -> std::path::PathBuf {
    let source = write_sample(dir);
    let bytes = std::fs::read(&source).unwrap();
    let (mut header, _) = common::read_header(&bytes);
    let shape = header[name]["shape"].as_array().unwrap().clone();
    let mut wrong = shape.clone();
    wrong[0] = (shape[0].as_u64().unwrap() + 1).into();
    header[name]["shape"] = wrong.into();
    std::fs::write(&source, common::with_header(&bytes, &header)).unwrap();
    source
}

#[test]
fn header_errors_name_their_tensor_the_same_way_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let source = with_wrong_length(dir.path(), "position_ids");
    let mut messages = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let output = ecf_path(&["inspect"], &source);
        assert_fails_cleanly(
            &output,
            "inspect",
            "tensor position_ids: I64 [2, 7] takes 112 bytes",
        );
        messages.insert(stderr(&output));
    }
    assert_eq!(messages.len(), 1, "{messages:?}");

    // Two tensors claiming the same bytes: the one named is always the same.
    let source = dir.path().join("overlap.safetensors");
    let tensors = ["a", "b", "c"].map(|name| common::SampleTensor {
        name,
        dtype: "F32",
        shape: vec![4],
        bytes: vec![0; 16],
    });
    common::write_safetensors(&source, &tensors, &[]);
    let bytes = std::fs::read(&source).unwrap();
    let (mut header, _) = common::read_header(&bytes);
    header["b"]["data_offsets"] = header["a"]["data_offsets"].clone();
    std::fs::write(&source, common::with_header(&bytes, &header)).unwrap();
    let mut messages = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let output = ecf_path(&["inspect"], &source);
        assert_fails_cleanly(
            &output,
            "overlap",
            "tensor b: data offsets [0, 16] overlap tensor a's [0, 16]",
        );
        messages.insert(stderr(&output));
    }
    assert_eq!(messages.len(), 1, "{messages:?}");
}
