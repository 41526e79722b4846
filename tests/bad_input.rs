//! Every kind of bad input gets one clear line naming the file (and the
//! tensor, where there is one) and exit status 1: never a panic, a hang or
//! a half-written output.

mod common;

use std::path::{Path, PathBuf};

use common::{ecf, ecf_path, read_header, stderr, stdout, with_header, write_sample};
use ecfloat::Error;
use ecfloat::codec::FloatKind;
use ecfloat::codec::huffman::{self, ALPHABET};
use ecfloat::codec::table;
use ecfloat::container::{
    self,
    schema::{self, CodedHeader},
};

/// A compressed sample in a fresh directory: (directory, compressed path).
fn compressed_sample() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let output = ecf_path(&["compress"], &source);
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::remove_file(&source).unwrap();
    let compressed = dir.path().join("sample.ecf.safetensors");
    (dir, compressed)
}

/// Decompresses `path` through the library, which must refuse it with an
/// error naming `path` that `expected` accepts; then runs `decompress` and
/// `verify` on it: `decompress` must fail with one line of stderr naming
/// the file and containing every one of `needles`, and leave nothing
/// behind, not even a partial file; `verify` must report the same and exit
/// 1.
fn assert_rejected(path: &Path, expected: impl Fn(&Error) -> bool, needles: &[&str]) {
    let rebuilt = path.with_file_name("library-output.safetensors");
    let error = container::decompress_file(path, &rebuilt, true, &Default::default())
        .expect_err("the library refuses it");
    assert!(expected(&error), "another kind of error: {error:?}");
    assert!(
        error.to_string().starts_with(&path.display().to_string()),
        "names the file: {error}"
    );
    assert_left_nothing(path);

    let output = ecf_path(&["decompress", "--force"], path);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "one line: {message}");
    assert!(message.starts_with("ecf: error: "), "{message}");
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "should mention {needle:?}: {message}"
        );
    }
    assert_left_nothing(path);

    // Every backend sees only what the host validated: a malformed file is
    // refused, or caught by its checksums, the same way on each.
    for backend in ["cpu", "wgpu", "cuda"] {
        if common::harness::require_backend(backend).is_err() {
            continue;
        }
        let output = ecf_path(&["verify", "--backend", backend], path);
        let report = format!("{}{}", stdout(&output), stderr(&output));
        assert_eq!(output.status.code(), Some(1), "{backend}: {report}");
        for needle in needles {
            assert!(
                report.contains(needle),
                "{backend}: verify should mention {needle:?}: {report}"
            );
        }
    }
}

/// Only `path` is left in its directory: no output, no partial file.
fn assert_left_nothing(path: &Path) {
    let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(entries, [path], "only the input is left");
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// Where the coded tensor `name`'s bytes lie in the file.
fn coded_range(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let (header, data_start) = read_header(bytes);
    let offsets = &header[name]["data_offsets"];
    data_start + offsets[0].as_u64().unwrap() as usize
        ..data_start + offsets[1].as_u64().unwrap() as usize
}

/// The coded header of the BF16 sample tensor and where its planes start.
fn bf16_planes(bytes: &[u8]) -> (CodedHeader, usize) {
    let range = coded_range(bytes, "layers.0.attn.weight");
    let (header, len) = CodedHeader::read(
        &bytes[range.clone()],
        schema::FORMAT_VERSION,
        FloatKind::Bf16,
        300 * 128,
    )
    .unwrap();
    (header, range.start + len)
}

#[test]
fn rejects_a_file_that_is_not_safetensors() {
    let (dir, path) = compressed_sample();
    let _ = dir;
    write(
        &path,
        b"#!/bin/sh\necho this is a shell script, not a model\n",
    );
    assert_rejected(
        &path,
        |e| matches!(e, Error::NotSafetensors { .. }),
        &["not a safetensors file"],
    );
}

#[test]
fn rejects_an_empty_file() {
    let (_dir, path) = compressed_sample();
    write(&path, b"");
    assert_rejected(
        &path,
        |e| matches!(e, Error::NotSafetensors { .. }),
        &["empty"],
    );
}

#[test]
fn rejects_a_truncated_file() {
    let (_dir, path) = compressed_sample();
    let bytes = std::fs::read(&path).unwrap();
    write(&path, &bytes[..bytes.len() - 1000]);
    assert_rejected(
        &path,
        |e| matches!(e, Error::NotSafetensors { .. }),
        &["truncated"],
    );
    write(&path, &bytes[..20]);
    assert_rejected(
        &path,
        |e| matches!(e, Error::NotSafetensors { .. }),
        &["past the end"],
    );
}

#[test]
fn rejects_corrupt_header_json() {
    let (_dir, path) = compressed_sample();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'[';
    write(&path, &bytes);
    assert_rejected(
        &path,
        |e| matches!(e, Error::NotSafetensors { .. }),
        &["not a valid safetensors JSON header"],
    );
}

#[test]
fn rejects_offsets_past_the_end() {
    let (_dir, path) = compressed_sample();
    let bytes = std::fs::read(&path).unwrap();
    let (mut header, _) = read_header(&bytes);
    let offsets = header["position_ids"]["data_offsets"]
        .as_array()
        .unwrap()
        .clone();
    let end = offsets[1].as_u64().unwrap();
    header["position_ids"]["data_offsets"] = serde_json::json!([offsets[0], end + (1 << 40)]);
    write(&path, &with_header(&bytes, &header));
    assert_rejected(
        &path,
        |e| matches!(e, Error::NotSafetensors { .. }),
        &["not a safetensors file"],
    );
}

#[test]
fn rejects_planes_whose_lengths_disagree() {
    let (_dir, path) = compressed_sample();
    let mut bytes = std::fs::read(&path).unwrap();
    let range = coded_range(&bytes, "layers.0.attn.weight");
    let (mut header, len) = CodedHeader::read(
        &bytes[range.clone()],
        schema::FORMAT_VERSION,
        FloatKind::Bf16,
        300 * 128,
    )
    .unwrap();
    header.rest_len += 1;
    let mut rewritten = Vec::new();
    header.write(&mut rewritten);
    assert_eq!(rewritten.len(), len, "same varint widths");
    bytes[range.start..range.start + len].copy_from_slice(&rewritten);
    write(&path, &bytes);
    assert_rejected(
        &path,
        |e| matches!(e, Error::Corrupt { tensor: Some(t), .. } if t == "layers.0.attn.weight"),
        &["tensor layers.0.attn.weight", "do not fill"],
    );
}

#[test]
fn rejects_code_lengths_that_are_not_a_prefix_code() {
    let (_dir, path) = compressed_sample();
    let mut bytes = std::fs::read(&path).unwrap();
    let (header, planes) = bf16_planes(&bytes);
    let index = planes..planes + header.index_len as usize;
    assert_eq!(bytes[index.start], 2, "the first block sends a new table");
    let table_start = index.start + 1;
    let alphabet = header.params.alphabet();
    let (lengths, used) = table::read_table(&bytes[table_start..index.end], alphabet).unwrap();
    // Lengthen one code by a bit: the code is then incomplete. Pick one
    // whose table still takes the same number of bytes.
    let broken = (0..ALPHABET)
        .filter(|&s| lengths[s] > 0 && lengths[s] < 12)
        .find_map(|symbol| {
            let mut changed = lengths;
            changed[symbol] += 1;
            let mut encoded = Vec::new();
            table::write_table(&changed, alphabet, &mut encoded);
            (encoded.len() == used).then_some(encoded)
        })
        .expect("some one-bit change keeps the table's size");
    assert!(huffman::validate_lengths(&table::read_table(&broken, alphabet).unwrap().0).is_err());
    bytes[table_start..table_start + used].copy_from_slice(&broken);
    write(&path, &bytes);
    assert_rejected(
        &path,
        |e| matches!(e, Error::Codec { tensor: Some(t), .. } if t == "layers.0.attn.weight"),
        &["tensor layers.0.attn.weight", "not a complete prefix code"],
    );
}

#[test]
fn rejects_an_unknown_format_version() {
    // A version is its exact spelling: "+2" and "02" are not version 2.
    for version in ["99", "+2", "02", "2.0", " 2", "0x2"] {
        let (_dir, path) = compressed_sample();
        let bytes = std::fs::read(&path).unwrap();
        let (mut header, _) = read_header(&bytes);
        header["__metadata__"]["ecf.version"] = serde_json::json!(version);
        write(&path, &with_header(&bytes, &header));
        assert_rejected(
            &path,
            |e| matches!(e, Error::UnsupportedVersion { found, .. } if found == version),
            &[&format!(
                "format version {version:?} is not supported; this build reads versions 1, 2"
            )],
        );
    }
}

#[test]
fn rejects_a_file_checksum_not_spelt_in_lowercase() {
    let (_dir, path) = compressed_sample();
    let bytes = std::fs::read(&path).unwrap();
    let (header, _) = read_header(&bytes);
    let digest = header["__metadata__"]["ecf.source_xxh3"]
        .as_str()
        .unwrap()
        .to_string();
    // Each the same number, spelt as FORMAT.md §1 does not allow.
    let uppercase = digest.to_uppercase();
    let signed = format!("+{}", &digest[1..]);
    for spelling in [uppercase, signed] {
        if spelling == digest || (spelling.starts_with('+') && !digest.starts_with('0')) {
            continue;
        }
        let mut header = header.clone();
        header["__metadata__"]["ecf.source_xxh3"] = serde_json::json!(spelling);
        write(&path, &with_header(&bytes, &header));
        assert_rejected(
            &path,
            |e| matches!(e, Error::Corrupt { .. }),
            &[&format!(
                "checksum {spelling:?} is not 16 lowercase hex digits"
            )],
        );
    }
}

#[test]
fn rejects_a_header_that_repeats_a_key() {
    // Whichever value a parser keeps, one reader would see another file:
    // both orders are refused, before anything else is read.
    for (first, second) in [("3", "2"), ("2", "3")] {
        let (_dir, path) = compressed_sample();
        let bytes = std::fs::read(&path).unwrap();
        let (header, data_start) = read_header(&bytes);
        let json = serde_json::to_string(&header).unwrap();
        let original = "\"ecf.version\":\"2\"";
        assert_eq!(json.matches(original).count(), 1, "{json}");
        let mut json = json
            .replace(
                original,
                &format!("\"ecf.version\":\"{first}\",\"ecf.version\":\"{second}\""),
            )
            .into_bytes();
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut rewritten = (json.len() as u64).to_le_bytes().to_vec();
        rewritten.extend_from_slice(&json);
        rewritten.extend_from_slice(&bytes[data_start..]);
        write(&path, &rewritten);
        assert_rejected(
            &path,
            |e| matches!(e, Error::NotSafetensors { .. }),
            &["the key \"ecf.version\" appears twice in one JSON object"],
        );
    }
}

#[test]
fn a_buffer_of_the_wrong_size_is_an_error_and_left_untouched() {
    use ecfloat::container::{CompressedFile, cpu_decoder};

    let (_dir, path) = compressed_sample();
    let file = CompressedFile::open(&path).unwrap();
    let decoder = cpu_decoder();
    for name in ["layers.0.attn.weight", "position_ids"] {
        let tensor = file.tensor(name).unwrap();
        let len = tensor.source.len();
        for size in [len - 8, len + 8] {
            let mut buffer = vec![0xa5u8; size];
            let error = file
                .read_tensor_into(tensor, &decoder, &mut buffer)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(name) && error.contains(&format!("not the {size}")),
                "{error}"
            );
            assert!(buffer.iter().all(|&b| b == 0xa5), "{name}: written to");
        }
        let mut buffer = vec![0u8; len];
        file.read_tensor_into(tensor, &decoder, &mut buffer)
            .unwrap();
    }
}

#[test]
fn flipped_bits_in_the_coded_stream_are_caught() {
    let (_dir, path) = compressed_sample();
    let original = std::fs::read(&path).unwrap();
    let (header, planes) = bf16_planes(&original);
    let head = planes + header.index_len as usize;
    let rest = head + header.head_len as usize;
    // A flip in the rest plane always survives decoding: only the checksum
    // can catch it. A flip in the head stream may also break its framing.
    let in_the_tensor = |e: &Error| match e {
        Error::ChecksumMismatch { tensor, .. } | Error::Codec { tensor, .. } => {
            tensor.as_deref() == Some("layers.0.attn.weight")
        }
        _ => false,
    };
    let mut bytes = original.clone();
    bytes[rest + 100] ^= 0x10;
    write(&path, &bytes);
    assert_rejected(
        &path,
        |e| matches!(e, Error::ChecksumMismatch { .. }) && in_the_tensor(e),
        &["tensor layers.0.attn.weight", "checksum"],
    );
    let mut bytes = original.clone();
    bytes[head + 100] ^= 0x10;
    write(&path, &bytes);
    assert_rejected(&path, in_the_tensor, &["tensor layers.0.attn.weight"]);
}

#[test]
fn rejects_an_uncompressed_file_given_to_decompress() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_sample(dir.path());
    let renamed = dir.path().join("plain.ecf.safetensors");
    std::fs::rename(&source, &renamed).unwrap();
    assert_rejected(
        &renamed,
        |e| matches!(e, Error::NotCompressed { .. }),
        &["not an ecfloat-compressed file"],
    );
}

#[test]
fn rejects_a_missing_or_foreign_format_name() {
    for format in [None, Some("ecfloat2"), Some("ECFLOAT")] {
        let (_dir, path) = compressed_sample();
        let bytes = std::fs::read(&path).unwrap();
        let (mut header, _) = read_header(&bytes);
        let metadata = header["__metadata__"].as_object_mut().unwrap();
        match format {
            Some(name) => metadata.insert("ecf.format".to_string(), serde_json::json!(name)),
            None => metadata.remove("ecf.format"),
        };
        write(&path, &with_header(&bytes, &header));
        assert_rejected(
            &path,
            |e| matches!(e, Error::NotCompressed { .. }),
            &["not an ecfloat-compressed file"],
        );
    }
}

/// What FORMAT.md accepts as changing no decoded byte (its preamble): each
/// variation of the header's text beyond its meaning decompresses to the
/// original bytes and verifies on every backend.
#[test]
fn header_text_beyond_its_meaning_is_accepted_everywhere() {
    let (dir, path) = compressed_sample();
    let original = std::fs::read(write_sample(tempfile::tempdir().unwrap().path())).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (header, data_start) = read_header(&bytes);
    let compact = serde_json::to_string(&header).unwrap();
    let reordered: serde_json::Map<String, serde_json::Value> = header
        .as_object()
        .unwrap()
        .iter()
        .rev()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let mut other_metadata = header.clone();
    let metadata = other_metadata["__metadata__"].as_object_mut().unwrap();
    metadata.remove("format");
    metadata.insert("note".to_string(), serde_json::json!("added"));
    let variations = [
        (
            "pretty-printed",
            serde_json::to_string_pretty(&header).unwrap(),
        ),
        ("a tab and a newline after it", format!("{compact}\t\n")),
        ("a space before it", format!(" {compact}")),
        (
            "its tensors in another order",
            serde_json::to_string(&reordered).unwrap(),
        ),
        (
            "other metadata than ecf.*",
            serde_json::to_string(&other_metadata).unwrap(),
        ),
    ];
    for (what, json) in variations {
        let mut json = json.into_bytes();
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&json);
        file.extend_from_slice(&bytes[data_start..]);
        let changed = dir.path().join("changed.ecf.safetensors");
        write(&changed, &file);
        let rebuilt = dir.path().join("rebuilt.safetensors");
        let output = ecf(&[
            "decompress",
            "--force",
            changed.to_str().unwrap(),
            "-o",
            rebuilt.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{what}: {}", stderr(&output));
        assert!(std::fs::read(&rebuilt).unwrap() == original, "{what}");
        for backend in ["cpu", "wgpu", "cuda"] {
            if common::harness::require_backend(backend).is_err() {
                continue;
            }
            let output = ecf_path(&["verify", "--backend", backend], &changed);
            assert!(
                output.status.success(),
                "{what}, {backend}: {}",
                stderr(&output)
            );
        }
    }
}

/// FORMAT.md §1: set bits after the end of the source header's final
/// DEFLATE block, within its last byte, change nothing and are accepted.
#[test]
fn set_bits_after_the_final_deflate_block_are_accepted() {
    let (dir, path) = compressed_sample();
    let original = std::fs::read(write_sample(tempfile::tempdir().unwrap().path())).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (header, data_start) = read_header(&bytes);
    let offsets = &header[ecfloat::container::schema::SOURCE_HEADER_TENSOR]["data_offsets"];
    let deflated = data_start..data_start + offsets[1].as_u64().unwrap() as usize;
    let deflated = deflated.start + offsets[0].as_u64().unwrap() as usize..deflated.end;
    let last = deflated.end - 1;
    let inflated = miniz_oxide::inflate::decompress_to_vec(&bytes[deflated.clone()]).unwrap();
    let mut padding_bits = 0;
    for bit in 0..8 {
        let mut changed = bytes.clone();
        changed[last] |= 1 << bit;
        // A bit the stream uses changes what it inflates to, or breaks it.
        if changed[last] == bytes[last]
            || miniz_oxide::inflate::decompress_to_vec(&changed[deflated.clone()]).ok()
                != Some(inflated.clone())
        {
            continue;
        }
        padding_bits += 1;
        let variant = dir.path().join("padded.ecf.safetensors");
        write(&variant, &changed);
        let rebuilt = dir.path().join("rebuilt.safetensors");
        container::decompress_file(&variant, &rebuilt, true, &Default::default()).unwrap();
        assert!(std::fs::read(&rebuilt).unwrap() == original, "bit {bit}");
        let output = ecf_path(&["verify"], &variant);
        assert!(output.status.success(), "bit {bit}: {}", stderr(&output));
    }
    assert!(
        padding_bits > 0,
        "the sample's stream ends inside its last byte"
    );
}

#[test]
fn rejects_compressing_a_compressed_file() {
    let (_dir, path) = compressed_sample();
    let output = ecf_path(&["compress", "--force"], &path);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("already compressed"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn rejects_a_missing_file() {
    let output = ecf_path(&["compress"], Path::new("/nonexistent/model.safetensors"));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/model.safetensors"),
        "{}",
        stderr(&output)
    );
}

/// A stored (not coded) tensor has no checksum of its own: a byte flipped in
/// it is caught by the whole file's, and nothing is written.
#[test]
fn a_flipped_byte_in_a_stored_tensor_fails_the_file_checksum() {
    let (_dir, path) = compressed_sample();
    let mut bytes = std::fs::read(&path).unwrap();
    let stored = coded_range(&bytes, "position_ids");
    assert_eq!(stored.len(), 7 * 8, "position_ids is stored as it was");
    bytes[stored.start + 9] ^= 0x01;
    write(&path, &bytes);
    assert_rejected(
        &path,
        |e| matches!(e, Error::ChecksumMismatch { tensor: None, .. }),
        &["checksum"],
    );
}

/// `bytes` with `extra` appended to tensor `name`'s data, the tensors after
/// it moved along.
fn with_bytes_appended(bytes: &[u8], name: &str, extra: &[u8]) -> Vec<u8> {
    let (mut header, data_start) = read_header(bytes);
    let end = header[name]["data_offsets"][1].as_u64().unwrap();
    for (key, entry) in header.as_object_mut().unwrap() {
        if key == "__metadata__" {
            continue;
        }
        let offsets = entry["data_offsets"].as_array_mut().unwrap();
        for offset in offsets.iter_mut() {
            let value = offset.as_u64().unwrap();
            // The tensor's own start lies before `end`: it stays.
            if value >= end {
                *offset = (value + extra.len() as u64).into();
            }
        }
        if key == name {
            let len = entry["data_offsets"][1].as_u64().unwrap()
                - entry["data_offsets"][0].as_u64().unwrap();
            entry["shape"] = serde_json::json!([len]);
        }
    }
    let mut data = bytes[data_start..].to_vec();
    let at = end as usize;
    data.splice(at..at, extra.iter().copied());
    let mut out = with_header(bytes, &header);
    let (_, new_start) = read_header(&out);
    out.truncate(new_start);
    out.extend_from_slice(&data);
    out
}

/// The planes must fill a coded tensor's bytes exactly: bytes after them
/// are refused, not ignored.
#[test]
fn rejects_bytes_after_the_planes() {
    let (_dir, path) = compressed_sample();
    let bytes = std::fs::read(&path).unwrap();
    write(
        &path,
        &with_bytes_appended(&bytes, "layers.0.attn.weight", &[0]),
    );
    assert_rejected(
        &path,
        |e| matches!(e, Error::Corrupt { tensor: Some(t), .. } if t == "layers.0.attn.weight"),
        &["tensor layers.0.attn.weight"],
    );
}

/// The source header is one DEFLATE stream and nothing else: a byte after
/// it is refused, not ignored, so that no two files mean the same.
#[test]
fn rejects_bytes_after_the_deflated_source_header() {
    let (_dir, path) = compressed_sample();
    let bytes = std::fs::read(&path).unwrap();
    write(
        &path,
        &with_bytes_appended(&bytes, "ecf.source_header", &[0]),
    );
    assert_rejected(
        &path,
        |e| matches!(e, Error::Corrupt { tensor: None, .. }),
        &["1 bytes follow the end of the DEFLATE stream"],
    );
}

/// Decoding one tensor checks it as decompressing the file does: a flipped
/// rest bit fails the tensor's checksum, and a name the file lacks is an
/// error naming it.
#[test]
fn decoding_one_tensor_checks_its_checksum_and_name() {
    let (_dir, path) = compressed_sample();
    let mut bytes = std::fs::read(&path).unwrap();
    let (header, planes) = bf16_planes(&bytes);
    let rest = planes + (header.index_len + header.head_len) as usize;
    bytes[rest + 100] ^= 0x10;
    write(&path, &bytes);
    let file = container::CompressedFile::open(&path).unwrap();
    let cpu = ecfloat::backend::CpuBackend::new();
    let decode = ecfloat::backend::decoder(&cpu);
    let intact = file.tensor("layers.0.mlp.weight").unwrap();
    assert_eq!(
        file.decode_tensor(intact, &decode).unwrap().len(),
        200 * 100 * 2
    );
    let flipped = file.tensor("layers.0.attn.weight").unwrap();
    let error = file.decode_tensor(flipped, &decode).unwrap_err();
    assert!(
        matches!(&error, Error::ChecksumMismatch { tensor: Some(t), .. } if t == "layers.0.attn.weight"),
        "{error:?}"
    );
    let error = file.tensor("layers.9.weight").err().unwrap();
    assert!(
        matches!(&error, Error::NoSuchTensor { tensor, .. } if tensor == "layers.9.weight"),
        "{error:?}"
    );
}
