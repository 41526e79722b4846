//! The command line as people meet it: standard output that goes away or
//! fills up, default names, messages for the wrong kind of input, help.

mod common;

use std::process::{Command, Stdio};

use common::{ecf, ecf_path, stderr, stdout, write_sample};

fn ecf_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ecf"));
    command.args(args);
    command
}

/// Runs `ecf args` with its standard output a pipe whose reader is gone,
/// as in `ecf … | head -0`.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let mut child = ecf_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let source = source.to_str().unwrap();
    for args in [
        vec!["inspect", source],
        vec!["analyze", source],
        vec!["backends"],
        vec!["inspect", source, "--json"],
        vec!["selftest", "--backend", "cpu"],
    ] {
        let output = with_closed_stdout(&args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "ecf {args:?}: {}",
            stderr(&output)
        );
        assert_eq!(stderr(&output), "", "ecf {args:?} printed on stderr");
    }
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "needs /dev/full, a device that is always full"
)]
fn a_full_stdout_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let source = source.to_str().unwrap();
    for args in [vec!["inspect", source], vec!["compress", source]] {
        let full = std::fs::File::create("/dev/full").unwrap();
        let output = ecf_command(&args)
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "ecf {args:?}");
        let message = stderr(&output);
        assert!(
            message.starts_with("ecf: error: standard output: No space left on device"),
            "ecf {args:?}: {message}"
        );
        assert!(!message.contains("panicked"), "{message}");
    }
}

#[test]
fn decompress_says_a_plain_file_is_not_compressed_before_naming_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let output = ecf_path(&["decompress"], &source);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("not an ecfloat-compressed file"),
        "{message}"
    );
    assert!(!message.contains("-o"), "{message}");
}

#[test]
fn decompress_names_the_output_of_a_dot_ecf_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let original = std::fs::read(&source).unwrap();
    let compressed = dir.path().join("model.ecf");
    let output = ecf(&[
        "compress",
        source.to_str().unwrap(),
        "-o",
        compressed.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = ecf_path(&["decompress"], &compressed);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read(dir.path().join("model.safetensors")).unwrap(),
        original
    );
}

#[test]
fn a_directory_without_safetensors_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    for command in ["analyze", "inspect", "bench"] {
        let output = ecf_path(&[command], dir.path());
        assert_eq!(output.status.code(), Some(1), "ecf {command}");
        assert!(
            stderr(&output).contains("no .safetensors files in this directory"),
            "ecf {command}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn other_weight_formats_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "model.gguf",
            b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00",
            "a GGUF file",
        ),
        (
            "pytorch_model.bin",
            b"PK\x03\x04\x14\x00\x00\x00",
            "a ZIP archive",
        ),
        (
            "old.bin",
            b"\x80\x02}q\x00(X\x01\x00\x00\x00",
            "a Python pickle",
        ),
    ];
    for (name, bytes, format) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        for command in ["compress", "inspect", "analyze"] {
            let output = ecf_path(&[command], &path);
            assert_eq!(output.status.code(), Some(1));
            let message = stderr(&output);
            assert!(
                message.contains(format) && message.contains("ecf reads only safetensors files"),
                "ecf {command} {name}: {message}"
            );
        }
    }
}

#[test]
fn inspect_takes_a_checkpoint_directory() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("model");
    std::fs::create_dir(&checkpoint).unwrap();
    for shard in ["a", "b"] {
        let path = write_sample(dir.path());
        std::fs::rename(path, checkpoint.join(format!("{shard}.safetensors"))).unwrap();
    }
    let output = ecf_path(&["inspect", "--json"], &checkpoint);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["files"].as_array().unwrap().len(), 2);
    let single = ecf_path(&["inspect", "--json"], &checkpoint.join("a.safetensors"));
    let single: serde_json::Value = serde_json::from_str(&stdout(&single)).unwrap();
    assert_eq!(
        report["tensors"].as_array().unwrap().len(),
        2 * single["tensors"].as_array().unwrap().len()
    );
    assert_eq!(
        report["source_bytes"].as_u64().unwrap(),
        2 * single["source_bytes"].as_u64().unwrap()
    );

    let compressed = dir.path().join("model.ecf");
    assert!(ecf_path(&["compress"], &checkpoint).status.success());
    let output = ecf_path(&["inspect"], &compressed);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("a directory of 2 safetensors files"));
}

#[test]
fn backends_says_which_one_auto_picks() {
    let output = ecf(&["backends", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let listing: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let picked: Vec<&serde_json::Value> = listing
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["auto"] == true)
        .collect();
    assert_eq!(picked.len(), 1, "{listing}");
    let picked = picked[0];
    // Never a GPU driver that runs on the CPU: the CPU decoder is faster.
    assert!(
        picked["backend"] == "cpu" || picked["info"]["hardware_gpu"] == true,
        "{listing}"
    );
    let wgpu = &listing[1];
    if wgpu["available"] == true && wgpu["info"]["hardware_gpu"] == false {
        assert!(wgpu["auto"] == false);
    }
}

#[test]
fn no_display_server_messages_reach_the_user() {
    let output = ecf_command(&["backends"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(
        !stderr(&output).contains("XDG_RUNTIME_DIR"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn help_describes_every_argument_and_shows_examples() {
    for command in [
        "compress",
        "decompress",
        "inspect",
        "verify",
        "bench",
        "analyze",
        "selftest",
    ] {
        let output = ecf(&[command, "--help"]);
        assert!(output.status.success());
        let help = stdout(&output);
        // clap prints an argument without a description as its name alone.
        for line in help.lines().filter(|l| l.starts_with("  ")) {
            let trimmed = line.trim();
            assert!(
                trimmed.contains("  ") || !trimmed.starts_with(['-', '<', '[']),
                "ecf {command} --help: {trimmed:?} has no description"
            );
        }
    }
    let help = stdout(&ecf(&["verify", "--help"]));
    assert!(
        help.contains("[possible values: auto, cpu, wgpu, cuda]"),
        "{help}"
    );
    assert!(stdout(&ecf(&["--help"])).contains("Examples:"));
}

#[test]
fn figures_use_one_unit_system_and_plurals() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let output = ecf_path(&["compress"], &source);
    let text = stdout(&output);
    assert!(text.contains(" MB") && !text.contains("MiB"), "{text}");
    let output = ecf_path(
        &["bench", "--repeats", "1", "--largest", "--backend", "cpu"],
        &source,
    );
    let text = stdout(&output);
    assert!(text.contains("1 float tensor,"), "{text}");
    assert!(
        !text.contains("threads (") && !text.contains("1 runs"),
        "{text}"
    );
}
