//! The `ecf` command line, end to end.

mod common;

use common::{ecf, ecf_path, stderr, stdout, write_sample};

#[test]
fn compress_then_decompress_rebuilds_the_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let original = std::fs::read(&source).unwrap();
    let compressed = dir.path().join("sample.ecf.safetensors");
    let output = ecf_path(&["compress"], &source);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        compressed.exists(),
        "default output is NAME.ecf.safetensors"
    );
    assert!(std::fs::metadata(&compressed).unwrap().len() < original.len() as u64);

    std::fs::remove_file(&source).unwrap();
    let output = ecf_path(&["decompress"], &compressed);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read(&source).unwrap(),
        original,
        "default output drops .ecf"
    );
}

#[test]
fn compressed_file_is_a_valid_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    assert!(ecf_path(&["compress"], &source).status.success());
    let bytes = std::fs::read(dir.path().join("sample.ecf.safetensors")).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let position_ids = parsed.tensor("position_ids").unwrap();
    assert_eq!(
        position_ids.dtype(),
        safetensors::Dtype::I64,
        "raw tensors keep their dtype"
    );
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = metadata.metadata().clone().unwrap();
    assert_eq!(metadata["ecf.format"], "ecfloat");
    assert_eq!(metadata["ecf.version"], "2");
    assert_eq!(metadata["format"], "pt", "source metadata is kept");
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let target = dir.path().join("sample.ecf.safetensors");
    std::fs::write(&target, b"precious").unwrap();
    let output = ecf_path(&["compress"], &source);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--force"), "{}", stderr(&output));
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    let output = ecf_path(&["compress", "--force"], &source);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_ne!(std::fs::read(&target).unwrap(), b"precious");
    // Nothing else is left beside it.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["sample.ecf.safetensors", "sample.safetensors"]);
}

#[test]
fn docs_prints_the_documents_the_help_points_at() {
    for (name, path) in [("json", "docs/JSON.md"), ("format", "docs/FORMAT.md")] {
        let output = ecf(&["docs", name]);
        assert!(output.status.success(), "{}", stderr(&output));
        let shipped =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path));
        assert_eq!(stdout(&output), shipped.unwrap(), "{name}");
    }
    let help = stdout(&ecf(&["inspect", "--help"]));
    assert!(help.contains("`ecf docs json`"), "{help}");
    assert_eq!(ecf(&["docs", "manual"]).status.code(), Some(2));
}

#[test]
fn an_output_in_a_missing_directory_is_named_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let target = dir.path().join("missing/sample.ecf.safetensors");
    let output = ecf(&[
        "compress",
        source.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let expected = format!(
        "{}: no directory {} to write it in",
        target.display(),
        dir.path().join("missing").display()
    );
    assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
    assert!(!stderr(&output).contains("partial"), "{}", stderr(&output));
}

#[test]
fn never_writes_over_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let original = std::fs::read(&source).unwrap();
    let path = source.to_str().unwrap();
    let output = ecf(&["compress", path, "-o", path, "--force"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("replace the input"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read(&source).unwrap(), original);
}

#[test]
fn inspect_reports_every_tensor_and_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    assert!(ecf_path(&["compress"], &source).status.success());
    let compressed = dir.path().join("sample.ecf.safetensors");
    let output = ecf_path(&["inspect", "--json"], &compressed);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["compressed"], true);
    let tensors = report["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 6);
    let bf16 = tensors.iter().find(|t| t["dtype"] == "BF16").unwrap();
    assert_eq!(bf16["coded"], true);
    let entropy = bf16["exponent_entropy"].as_f64().unwrap();
    assert!(entropy > 1.0 && entropy < 4.0, "{entropy}");
    assert!(bf16["bits_per_element"].as_f64().unwrap() < 16.0);
    let integer = tensors.iter().find(|t| t["dtype"] == "I64").unwrap();
    assert_eq!(integer["coded"], false);
    assert!(report["ratio"].as_f64().unwrap() < 1.0);
    assert!(report["bound_ratio"].as_f64().unwrap() < 1.0);

    let text = ecf_path(&["inspect"], &compressed);
    assert!(stdout(&text).contains("layers.0.attn.weight"));
    let plain = ecf_path(&["inspect"], &source);
    assert!(plain.status.success());
    assert!(stdout(&plain).contains("not compressed"));
}

#[test]
fn verify_and_bench_report_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    assert!(ecf_path(&["compress"], &source).status.success());
    let compressed = dir.path().join("sample.ecf.safetensors");
    let output = ecf_path(&["verify", "--backend", "cpu", "--json"], &compressed);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["ok"], true);

    let output = ecf_path(
        &["--threads", "1", "bench", "--repeats", "2", "--json"],
        &compressed,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert!(report["decode"]["gb_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["copy"]["gb_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["threads"], 1);
}

#[test]
fn verify_says_which_checks_ran() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    assert!(ecf_path(&["compress"], &source).status.success());
    let compressed = dir.path().join("sample.ecf.safetensors");
    let output = ecf_path(&["verify", "--backend", "cpu"], &compressed);
    assert!(
        stdout(&output).contains("file checksum matches"),
        "{}",
        stdout(&output)
    );

    // A tensor that fails: no file was rebuilt, so none was compared.
    common::flip_rest_bit(&compressed, "layers.0.attn.weight");
    let output = ecf_path(&["verify", "--backend", "cpu"], &compressed);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("1 failed; file checksum not compared: 1 tensor failed"),
        "{text}"
    );
    let output = ecf_path(&["verify", "--backend", "cpu", "--json"], &compressed);
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        report["files"][0]["file_checksum_matches"],
        serde_json::Value::Null
    );
}

#[test]
fn demo_checks_every_bit_and_reports_the_ratio() {
    let output = ecf(&["demo", "--repeats", "1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("every bit identical"), "{text}");
    assert!(text.contains("exponent-entropy bound"), "{text}");
}

#[test]
fn unknown_backend_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    assert!(ecf_path(&["compress"], &source).status.success());
    let output = ecf_path(
        &["verify", "--backend", "quantum"],
        &dir.path().join("sample.ecf.safetensors"),
    );
    // A usage error, as clap reports them: exit status 2, the valid values.
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("'quantum'"), "{message}");
    assert!(
        message.contains("possible values: auto, cpu, wgpu, cuda"),
        "{message}"
    );
}

#[test]
fn analyze_reports_the_same_study_for_plain_and_compressed_files() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    assert!(ecf_path(&["compress"], &source).status.success());
    let compressed = dir.path().join("sample.ecf.safetensors");
    let plot = dir.path().join("study.svg");

    let png = dir.path().join("study.png");
    let output = ecf_path(&["analyze", "--plot", png.to_str().unwrap()], &source);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("the plot is written as SVG; give a file name ending in .svg"),
        "{}",
        stderr(&output)
    );
    assert!(!png.exists(), "nothing written");

    let output = ecf_path(
        &["analyze", "--json", "--plot", plot.to_str().unwrap()],
        &source,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let plain: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let tensors = plain["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 5, "every float tensor, not the integer one");
    for tensor in tensors {
        let histogram = tensor["exponent_histogram"].as_array().unwrap();
        let counted: u64 = histogram.iter().map(|c| c.as_u64().unwrap()).sum();
        assert_eq!(counted, tensor["elements"].as_u64().unwrap());
        let alpha = tensor["alpha"].as_f64().unwrap();
        assert!((0.8..=2.0).contains(&alpha), "{alpha}");
        let [low, high] = [0, 1].map(|i| tensor["entropy_bounds"][i].as_f64().unwrap());
        assert!(low < high);
    }
    assert_eq!(plain["dtypes"].as_array().unwrap().len(), 5);
    assert_eq!(plain["limits"].as_array().unwrap().len(), 5);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Exponent distribution"));

    let output = ecf_path(&["analyze", "--json"], &compressed);
    assert!(output.status.success(), "{}", stderr(&output));
    let from_compressed: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(from_compressed["tensors"], plain["tensors"]);

    let text = stdout(&ecf_path(&["analyze"], &source));
    assert!(text.contains("bits per weight"), "{text}");
}

/// The field paths `docs/JSON.md` lists under `## \`ecf <command>\``.
fn documented_fields(command: &str) -> Vec<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/JSON.md")).unwrap();
    let heading = format!("## `ecf {command}`");
    let section = doc
        .split("\n## ")
        .map(|s| format!("## {s}"))
        .find(|s| s.lines().next() == Some(heading.as_str()))
        .unwrap_or_else(|| panic!("docs/JSON.md has no section {heading}"));
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|line| line.split('`').next().unwrap().to_string())
        .collect()
}

/// The path of every leaf of a document: objects and arrays of objects are
/// descended into, except the paths in `opaque`, which count as leaves.
fn field_paths(value: &serde_json::Value, path: &str, opaque: &[&str], paths: &mut Vec<String>) {
    let container = value.is_object()
        || value
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i.is_object()));
    if !container || opaque.contains(&path) {
        paths.push(path.to_string());
        return;
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        serde_json::Value::Object(map) => {
            for (key, field) in map {
                field_paths(field, &join(key), opaque, paths);
            }
        }
        serde_json::Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            for item in items {
                field_paths(item, &format!("{path}[]"), opaque, paths);
            }
        }
        _ => {}
    }
}

fn assert_documented(command: &str, output: &std::process::Output, opaque: &[&str]) {
    assert!(output.status.success(), "{command}: {}", stderr(output));
    let document: serde_json::Value = serde_json::from_str(&stdout(output)).unwrap();
    let mut printed = Vec::new();
    field_paths(&document, "", opaque, &mut printed);
    printed.sort();
    printed.dedup();
    let documented = documented_fields(command);
    for path in &printed {
        // An empty array shows as a leaf; its elements' fields are listed.
        let listed = documented.contains(path)
            || documented
                .iter()
                .any(|d| d.starts_with(&format!("{path}[]")));
        assert!(
            listed,
            "ecf {command} prints `{path}`, which docs/JSON.md does not list"
        );
    }
    for path in &documented {
        let shown = printed.iter().any(|p| {
            p == path || p.starts_with(&format!("{path}.")) || p.starts_with(&format!("{path}[]"))
        });
        // The elements of an array that is empty here cannot show their fields.
        let under_empty_array = printed.iter().any(|p| path.starts_with(&format!("{p}[]")));
        // Nor can the fields of an object that is null here.
        let under_null = printed.iter().any(|p| path.starts_with(&format!("{p}.")));
        assert!(
            shown || under_empty_array || under_null,
            "docs/JSON.md lists `{path}` for ecf {command}, which it does not print"
        );
    }
}

#[test]
fn json_output_matches_its_documentation() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let compressed = dir.path().join("sample.ecf.safetensors");
    let json = |args: &[&str], path: &std::path::Path| {
        ecf_path(&[&["--quiet"], args, &["--json"]].concat(), path)
    };

    assert_documented("compress", &json(&["compress"], &source), &[]);
    assert_documented(
        "decompress",
        &json(
            &[
                "decompress",
                "-o",
                dir.path().join("back.safetensors").to_str().unwrap(),
            ],
            &compressed,
        ),
        &[],
    );
    assert_documented("inspect", &json(&["inspect"], &compressed), &[]);
    assert_documented("verify", &json(&["verify"], &compressed), &[]);
    assert_documented(
        "bench",
        &json(&["bench", "--repeats", "1"], &compressed),
        &[],
    );
    assert_documented(
        "bench --model",
        &json(&["bench", "--model", "--repeats", "1"], &compressed),
        &[],
    );
    assert_documented("analyze", &json(&["analyze"], &compressed), &[]);
    assert_documented(
        "selftest",
        &ecf(&["selftest", "--backend", "cpu", "--json"]),
        &[],
    );
    assert_documented(
        "backends",
        &ecf(&["backends", "--json"]),
        &["[].info.limits"],
    );
    assert_documented(
        "demo",
        &ecf(&["demo", "--repeats", "1", "--json"]),
        &["inspection", "backends[].bench"],
    );
}
