//! Whole checkpoint directories, as Hugging Face ships them: shards
//! (`*.safetensors`), an index (`*.safetensors.index.json`) mapping tensors
//! to shards, and other files (config, tokenizer).
//!
//! Compressing a directory compresses every shard to `NAME.ecf.safetensors`,
//! rewrites each index to the new shard names, copies every other file
//! unchanged, and records in `ecfloat.json` what it did and each original
//! index byte for byte, so decompressing gives back every original file
//! exactly. The output directory is written under a temporary name and
//! renamed into place when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::{
    CompressOptions, CompressReport, DecodeChecks, Decoder, Progress, compress_file,
    decompress_file, verify_file_with,
};

/// The manifest a compressed directory carries.
pub const MANIFEST: &str = "ecfloat.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    version: u32,
    /// Source shard name → compressed shard name.
    shards: BTreeMap<String, String>,
    /// Index name → the original index, byte for byte.
    indexes: BTreeMap<String, String>,
}

/// What happened to a directory.
#[derive(Debug, Default)]
pub struct DirectoryReport {
    /// (shard, its report) per compressed shard.
    pub shards: Vec<(String, CompressReport)>,
    /// Files copied unchanged, with their sizes.
    pub copied: Vec<(String, u64)>,
    pub source_bytes: u64,
    pub output_bytes: u64,
    pub seconds: f64,
}

fn is_shard(name: &str) -> bool {
    name.ends_with(".safetensors")
}

fn is_index(name: &str) -> bool {
    name.ends_with(".safetensors.index.json")
}

/// Whether a file name looks like model weights in a format ecfloat does
/// not read (PyTorch pickles, GGUF, ONNX, NumPy, TensorFlow): a directory
/// compress copies such files and says so.
pub fn is_unread_weights(name: &str) -> bool {
    const EXTENSIONS: [&str; 10] = [
        ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".onnx", ".npz", ".h5", ".msgpack",
    ];
    let name = name.to_ascii_lowercase();
    EXTENSIONS.iter().any(|extension| name.ends_with(extension))
}

/// `model-00001-of-00002.safetensors` → `model-00001-of-00002.ecf.safetensors`.
pub fn compressed_shard_name(name: &str) -> String {
    format!("{}.ecf.safetensors", name.trim_end_matches(".safetensors"))
}

/// Sorted entries of a directory.
fn entries(directory: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(directory)
        .map_err(|e| Error::io(directory, e))?
        .map(|entry| {
            let entry = entry.map_err(|e| Error::io(directory, e))?;
            Ok((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ))
        })
        .collect::<Result<_>>()?;
    entries.sort();
    Ok(entries)
}

/// Copies a file or a whole directory tree unchanged.
fn copy_tree(from: &Path, to: &Path) -> Result<u64> {
    if from.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
        let mut bytes = 0;
        for (name, path) in entries(from)? {
            bytes += copy_tree(&path, &to.join(name))?;
        }
        Ok(bytes)
    } else {
        std::fs::copy(from, to).map_err(|e| Error::io(from, e))
    }
}

/// A directory built under a temporary name beside `target` and renamed to
/// it when complete; dropped uncommitted, it is removed.
struct StagedDirectory {
    staging: Option<tempfile::TempDir>,
    target: PathBuf,
    force: bool,
}

impl StagedDirectory {
    fn create(target: &Path, force: bool, input: &Path) -> Result<Self> {
        if target.exists() {
            let same = target.canonicalize().ok() == input.canonicalize().ok();
            if same {
                return Err(Error::OutputIsInput {
                    path: target.to_path_buf(),
                });
            }
            if !force {
                return Err(Error::OutputExists {
                    path: target.to_path_buf(),
                });
            }
        }
        let parent = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let staging = tempfile::Builder::new()
            .prefix(".ecf-partial-")
            .tempdir_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        Ok(StagedDirectory {
            staging: Some(staging),
            target: target.to_path_buf(),
            force,
        })
    }

    fn path(&self) -> &Path {
        self.staging.as_ref().expect("not yet committed").path()
    }

    fn commit(mut self) -> Result<()> {
        let staging = self.staging.take().expect("committed once").keep();
        if self.force && self.target.exists() {
            let old = staging.with_extension("replaced");
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            std::fs::rename(&staging, &self.target).map_err(|e| Error::io(&self.target, e))?;
            let removed = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
            removed.map_err(|e| Error::io(&old, e))
        } else {
            std::fs::rename(&staging, &self.target).map_err(|e| Error::io(&self.target, e))
        }
    }
}

/// Compresses a checkpoint directory into `output` (a new directory).
pub fn compress_directory(
    input: &Path,
    output: &Path,
    options: &CompressOptions,
) -> Result<DirectoryReport> {
    let started = std::time::Instant::now();
    if input.join(MANIFEST).exists() {
        return Err(Error::AlreadyCompressed {
            path: input.to_path_buf(),
            version: "1".to_string(),
        });
    }
    let staged = StagedDirectory::create(output, options.force, input)?;
    let mut manifest = Manifest {
        format: super::schema::FORMAT_NAME.to_string(),
        version: super::schema::FORMAT_VERSION,
        shards: BTreeMap::new(),
        indexes: BTreeMap::new(),
    };
    let mut report = DirectoryReport::default();
    let mut shard_bytes = 0;
    for (name, path) in entries(input)? {
        if path.is_file() && is_shard(&name) {
            shard_bytes += super::SourceFile::open(&path)?.data().len() as u64;
        }
    }
    let shard_options = CompressOptions {
        force: false,
        progress: options.progress.begin_all(shard_bytes),
        ..options.clone()
    };
    for (name, path) in entries(input)? {
        if path.is_file() && is_shard(&name) {
            let target = compressed_shard_name(&name);
            let shard = compress_file(&path, &staged.path().join(&target), &shard_options)?;
            report.source_bytes += shard.source_bytes;
            report.output_bytes += shard.compressed_bytes;
            manifest.shards.insert(name.clone(), target);
            report.shards.push((name, shard));
        }
    }
    for (name, path) in entries(input)? {
        if path.is_file() && is_shard(&name) {
            continue;
        }
        if path.is_file() && is_index(&name) {
            let original = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let rewritten = rewrite_index(&path, &original, &manifest.shards)?;
            let target = staged.path().join(&name);
            std::fs::write(&target, &rewritten).map_err(|e| Error::io(&target, e))?;
            report.source_bytes += original.len() as u64;
            report.output_bytes += rewritten.len() as u64;
            manifest.indexes.insert(name, original);
            continue;
        }
        let bytes = copy_tree(&path, &staged.path().join(&name))?;
        report.source_bytes += bytes;
        report.output_bytes += bytes;
        report.copied.push((name, bytes));
    }
    if manifest.shards.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no .safetensors files in this directory",
            input.display()
        )));
    }
    let manifest_path = staged.path().join(MANIFEST);
    let manifest_text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    std::fs::write(&manifest_path, &manifest_text).map_err(|e| Error::io(&manifest_path, e))?;
    report.output_bytes += manifest_text.len() as u64;
    staged.commit()?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The index with every shard file name replaced by its compressed name.
fn rewrite_index(path: &Path, original: &str, shards: &BTreeMap<String, String>) -> Result<String> {
    let mut index: serde_json::Value = serde_json::from_str(original)
        .map_err(|e| Error::corrupt(path, None, format!("the index is not valid JSON: {e}")))?;
    let map = index
        .get_mut("weight_map")
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| Error::corrupt(path, None, "the index has no weight_map object"))?;
    for (tensor, shard) in map.iter_mut() {
        let name = shard.as_str().unwrap_or_default();
        let renamed = shards.get(name).ok_or_else(|| {
            Error::corrupt(
                path,
                Some(tensor),
                format!("is mapped to {name}, which is not in the directory"),
            )
        })?;
        *shard = serde_json::Value::String(renamed.clone());
    }
    Ok(serde_json::to_string_pretty(&index).expect("JSON serialises") + "\n")
}

fn read_manifest(input: &Path) -> Result<Manifest> {
    let path = input.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|_| Error::NotCompressed {
        path: input.to_path_buf(),
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::corrupt(&path, None, format!("the manifest is invalid: {e}")))?;
    if manifest.version != super::schema::FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path,
            found: manifest.version.to_string(),
            supported: super::schema::FORMAT_VERSION,
        });
    }
    for name in manifest
        .shards
        .keys()
        .chain(manifest.shards.values())
        .chain(manifest.indexes.keys())
    {
        if name.contains('/') || name.contains('\\') || name == ".." || name.is_empty() {
            return Err(Error::corrupt(
                &path,
                None,
                format!("{name:?} is not a plain file name"),
            ));
        }
    }
    Ok(manifest)
}

/// Rebuilds every original file of a compressed directory into `output`.
pub fn decompress_directory(
    input: &Path,
    output: &Path,
    force: bool,
    progress: &Progress,
) -> Result<DirectoryReport> {
    let started = std::time::Instant::now();
    let manifest = read_manifest(input)?;
    let progress = progress.begin_all(decoded_shard_bytes(input, &manifest)?);
    let staged = StagedDirectory::create(output, force, input)?;
    let mut report = DirectoryReport::default();
    let compressed: BTreeMap<&str, &str> = manifest
        .shards
        .iter()
        .map(|(source, shard)| (shard.as_str(), source.as_str()))
        .collect();
    for (name, path) in entries(input)? {
        if name == MANIFEST {
            continue;
        }
        if let Some(source) = compressed.get(name.as_str()) {
            let checks = decompress_file(&path, &staged.path().join(source), false, &progress)?;
            report.source_bytes += std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
            report.output_bytes += checks.source_bytes;
            continue;
        }
        if let Some(original) = manifest.indexes.get(&name) {
            let target = staged.path().join(&name);
            std::fs::write(&target, original).map_err(|e| Error::io(&target, e))?;
            report.output_bytes += original.len() as u64;
            continue;
        }
        let bytes = copy_tree(&path, &staged.path().join(&name))?;
        report.source_bytes += bytes;
        report.output_bytes += bytes;
        report.copied.push((name, bytes));
    }
    for shard in compressed.keys() {
        if !input.join(shard).exists() {
            return Err(Error::corrupt(
                input,
                Some(shard),
                "is listed in the manifest but missing",
            ));
        }
    }
    staged.commit()?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Decodes every shard of a compressed directory with `decode` and checks
/// every checksum.
pub fn verify_directory_with(
    input: &Path,
    decode: &Decoder,
    progress: &Progress,
) -> Result<Vec<(String, DecodeChecks)>> {
    let manifest = read_manifest(input)?;
    let progress = progress.begin_all(decoded_shard_bytes(input, &manifest)?);
    manifest
        .shards
        .values()
        .map(|shard| {
            Ok((
                shard.clone(),
                verify_file_with(&input.join(shard), decode, &progress)?,
            ))
        })
        .collect()
}

/// Bytes of tensors the shards of a compressed directory decode to: the
/// progress total.
fn decoded_shard_bytes(input: &Path, manifest: &Manifest) -> Result<u64> {
    manifest
        .shards
        .values()
        .map(|shard| Ok(super::CompressedFile::open(&input.join(shard))?.source_data_len()))
        .sum()
}

/// Fails unless `input` is a compressed directory this build reads.
pub fn check_compressed(input: &Path) -> Result<()> {
    read_manifest(input).map(drop)
}
