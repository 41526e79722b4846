//! Sharded checkpoint directories: shards compressed, the index rewritten
//! to the new names, other files copied, and every original file rebuilt
//! byte for byte.

mod common;

use std::path::Path;

use common::{ecf, stderr};

/// A Hugging Face-style checkpoint: two shards, an index, a config, and a
/// tokenizer directory.
fn checkpoint(dir: &Path) {
    let tensors = common::sample_tensors();
    let (first, second) = tensors.split_at(3);
    let mut weight_map = serde_json::Map::new();
    for (number, part) in [first, second].into_iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", number + 1);
        common::write_safetensors(&dir.join(&name), part, &[("format", "pt".to_string())]);
        for tensor in part {
            weight_map.insert(tensor.name.to_string(), name.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 1234}, "weight_map": weight_map});
    // Indented oddly on purpose: the original must come back byte for byte.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)
            .unwrap()
            .replace("  ", "\t"),
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), r#"{"hidden_size": 128}"#).unwrap();
    std::fs::create_dir(dir.join("tokenizer")).unwrap();
    std::fs::write(dir.join("tokenizer/vocab.txt"), "a\nb\nc\n").unwrap();
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        let relative = entry
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        found.push((relative, std::fs::read(&entry).unwrap()));
    }
    found.sort();
    found
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            paths.extend(walk(&path));
        } else {
            paths.push(path);
        }
    }
    paths
}

#[test]
fn a_sharded_checkpoint_round_trips_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let original = root.path().join("model");
    std::fs::create_dir(&original).unwrap();
    checkpoint(&original);

    let output = ecf(&["compress", original.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = common::stdout(&output);
    assert!(
        text.contains("% of the original, every file)")
            && text.contains("safetensors files alone: "),
        "{text}"
    );
    let compressed = root.path().join("model.ecf");
    assert!(
        compressed
            .join("model-00001-of-00002.ecf.safetensors")
            .exists()
    );
    // The ratio of the safetensors files alone is the one inspect gives.
    let report = |output: std::process::Output| -> serde_json::Value {
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let again = report(ecf(&[
        "compress",
        "--force",
        "--json",
        original.to_str().unwrap(),
    ]));
    let inspected = report(ecf(&["inspect", "--json", compressed.to_str().unwrap()]));
    assert_eq!(again["weights"]["ratio"], inspected["ratio"]);
    assert_ne!(again["ratio"], inspected["ratio"]);
    assert!(
        compressed.join("tokenizer/vocab.txt").exists(),
        "other files are copied"
    );
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(compressed.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    for shard in index["weight_map"].as_object().unwrap().values() {
        let shard = shard.as_str().unwrap();
        assert!(shard.ends_with(".ecf.safetensors"), "{shard}");
        assert!(compressed.join(shard).exists(), "{shard}");
    }

    let output = ecf(&["verify", compressed.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));

    std::fs::rename(&original, root.path().join("original")).unwrap();
    let output = ecf(&["decompress", compressed.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        files(&root.path().join("model")),
        files(&root.path().join("original"))
    );
}

#[test]
fn refuses_to_replace_an_output_directory_without_force() {
    let root = tempfile::tempdir().unwrap();
    let original = root.path().join("model");
    std::fs::create_dir(&original).unwrap();
    checkpoint(&original);
    std::fs::create_dir(root.path().join("model.ecf")).unwrap();
    std::fs::write(root.path().join("model.ecf/keep"), "precious").unwrap();
    let output = ecf(&["compress", original.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--force"), "{}", stderr(&output));
    assert!(root.path().join("model.ecf/keep").exists());
    let output = ecf(&["compress", "--force", original.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !root.path().join("model.ecf/keep").exists(),
        "replaced whole"
    );
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".ecf-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn rejects_a_directory_that_is_not_compressed() {
    let root = tempfile::tempdir().unwrap();
    checkpoint(root.path());
    let output = ecf(&[
        "decompress",
        root.path().to_str().unwrap(),
        "-o",
        root.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("not an ecfloat-compressed"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn rejects_a_manifest_naming_paths_outside_the_directory() {
    let root = tempfile::tempdir().unwrap();
    let original = root.path().join("model");
    std::fs::create_dir(&original).unwrap();
    checkpoint(&original);
    assert!(
        ecf(&["compress", original.to_str().unwrap()])
            .status
            .success()
    );
    let manifest = root.path().join("model.ecf/ecfloat.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "\"model-00001-of-00002.safetensors\"",
            "\"../escape.safetensors\"",
        ),
    )
    .unwrap();
    let output = ecf(&[
        "decompress",
        root.path().join("model.ecf").to_str().unwrap(),
        "-o",
        root.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("is not the plain name of a file in the directory"),
        "{}",
        stderr(&output)
    );
}

/// What a progress bar is told: one total, then advances adding up to it.
#[derive(Clone, Default)]
struct Recorded(std::sync::Arc<std::sync::Mutex<(Vec<u64>, u64)>>);

impl ecfloat::container::ProgressSink for Recorded {
    fn begin(&self, total: u64) {
        self.0.lock().unwrap().0.push(total);
    }

    fn advance(&self, bytes: u64) {
        self.0.lock().unwrap().1 += bytes;
    }
}

/// A file and a directory each announce one total, the bytes of the
/// original safetensors data, and advance by exactly that much, whichever
/// way they go.
#[test]
fn progress_announces_one_total_and_reaches_it() {
    use ecfloat::container::{self, CompressOptions, Progress, SourceFile};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    checkpoint(&model);
    let shards = ["model-00001-of-00002", "model-00002-of-00002"]
        .map(|name| model.join(format!("{name}.safetensors")));
    let data = |path: &Path| SourceFile::open(path).unwrap().data().len() as u64;
    let shard_bytes: u64 = shards.iter().map(|s| data(s)).sum();
    let recorded = |run: &dyn Fn(Progress)| {
        let sink = Recorded::default();
        run(Progress::new(sink.clone()));
        let (totals, done) = &*sink.0.lock().unwrap();
        (totals.clone(), *done)
    };

    let compressed = dir.path().join("shard.ecf.safetensors");
    let options = |progress| CompressOptions {
        progress,
        ..CompressOptions::default()
    };
    let file_bytes = data(&shards[0]);
    assert_eq!(
        recorded(&|p| {
            container::compress_file(&shards[0], &compressed, &options(p)).unwrap();
        }),
        (vec![file_bytes], file_bytes)
    );
    let rebuilt = dir.path().join("shard.safetensors");
    assert_eq!(
        recorded(&|p| {
            container::decompress_file(&compressed, &rebuilt, false, &p).unwrap();
        }),
        (vec![file_bytes], file_bytes)
    );

    let compressed = dir.path().join("model.ecf");
    assert_eq!(
        recorded(&|p| {
            container::compress_directory(&model, &compressed, &options(p)).unwrap();
        }),
        (vec![shard_bytes], shard_bytes)
    );
    let rebuilt = dir.path().join("model-again");
    assert_eq!(
        recorded(&|p| {
            container::decompress_directory(&compressed, &rebuilt, false, &p).unwrap();
        }),
        (vec![shard_bytes], shard_bytes)
    );
}
