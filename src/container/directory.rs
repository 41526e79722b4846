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
pub(crate) fn is_unread_weights(name: &str) -> bool {
    const EXTENSIONS: [&str; 10] = [
        ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".onnx", ".npz", ".h5", ".msgpack",
    ];
    let name = name.to_ascii_lowercase();
    EXTENSIONS.iter().any(|extension| name.ends_with(extension))
}

/// `model-00001-of-00002.safetensors` → `model-00001-of-00002.ecf.safetensors`.
pub(crate) fn compressed_shard_name(name: &str) -> String {
    format!("{}.ecf.safetensors", name.trim_end_matches(".safetensors"))
}

/// What a directory entry is, as ecfloat treats it.
enum EntryKind {
    /// A regular file, or a symbolic link to one (read through: Hugging
    /// Face's cache builds checkpoints of links into its blob store).
    File,
    Directory,
}

/// Sorted entries of a directory, each checked to be something a
/// checkpoint holds: files, directories, and links to files. A link to a
/// directory is not followed, so that no loop and no link out of the
/// checkpoint pulls in other files; devices, FIFOs and sockets are refused.
fn entries(directory: &Path) -> Result<Vec<(String, PathBuf, EntryKind)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(directory).map_err(|e| Error::io(directory, e))? {
        let entry = entry.map_err(|e| Error::io(directory, e))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|name| Error::Unsupported {
                path: directory.join(&name),
                tensor: None,
                message: "the file name is not valid UTF-8".to_string(),
            })?;
        let own = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        let kind = if own.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| Error::io(&path, e))?;
            match std::fs::metadata(&path) {
                Ok(followed) if followed.is_file() => EntryKind::File,
                Ok(followed) => {
                    return Err(unsupported_entry(
                        &path,
                        format!(
                            "is a symbolic link to {} ({}); ecf follows links to files only, so that a loop or a link out of the checkpoint cannot pull in other directories",
                            target.display(),
                            super::write::describe_file_type(&followed.file_type())
                        ),
                    ));
                }
                Err(_) => {
                    return Err(unsupported_entry(
                        &path,
                        format!(
                            "is a symbolic link to {}, which does not exist",
                            target.display()
                        ),
                    ));
                }
            }
        } else if own.is_file() {
            EntryKind::File
        } else if own.is_dir() {
            EntryKind::Directory
        } else {
            return Err(unsupported_entry(
                &path,
                format!(
                    "is {}; a checkpoint directory holds only files and directories",
                    super::write::describe_file_type(&own.file_type())
                ),
            ));
        };
        entries.push((name, path, kind));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

fn unsupported_entry(path: &Path, message: String) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        tensor: None,
        message,
    }
}

/// Copies a file or a whole directory tree unchanged.
fn copy_tree(from: &Path, kind: &EntryKind, to: &Path) -> Result<u64> {
    match kind {
        EntryKind::Directory => {
            std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
            let mut bytes = 0;
            for (name, path, kind) in entries(from)? {
                bytes += copy_tree(&path, &kind, &to.join(name))?;
            }
            Ok(bytes)
        }
        EntryKind::File => std::fs::copy(from, to).map_err(|e| Error::io(from, e)),
    }
}

/// Refuses an output directory inside the input (it would be written into
/// what is being read) and an input inside the output (replacing the
/// output would delete it).
fn check_nesting(input: &Path, output: &Path) -> Result<()> {
    let canonical_input = input.canonicalize().map_err(|e| Error::io(input, e))?;
    let output_parent = super::write::parent_directory(output);
    let Ok(parent) = output_parent.canonicalize() else {
        return Ok(()); // Creating the output will say what is wrong.
    };
    let canonical_output = match output.file_name() {
        Some(name) => parent.join(name),
        None => parent,
    };
    if canonical_output != canonical_input && canonical_output.starts_with(&canonical_input) {
        return Err(Error::Usage(format!(
            "{}: the output is inside the input directory {}, which it would be written into while it is read; choose an output outside it",
            output.display(),
            input.display()
        )));
    }
    if canonical_input.starts_with(&canonical_output) && canonical_output != canonical_input {
        return Err(Error::Usage(format!(
            "{}: the input {} is inside this output directory, which replacing would delete",
            output.display(),
            input.display()
        )));
    }
    Ok(())
}

/// A directory built under a temporary name beside `target` and renamed to
/// it when complete; dropped uncommitted, or when a signal stops the
/// process, it is removed.
struct StagedDirectory {
    staging: Option<tempfile::TempDir>,
    target: PathBuf,
    force: bool,
    _partial: super::write::PartialOutput,
}

impl StagedDirectory {
    fn create(target: &Path, force: bool, input: &Path) -> Result<Self> {
        if let Ok(existing) = std::fs::symlink_metadata(target) {
            let same = target.canonicalize().ok() == input.canonicalize().ok();
            if same {
                return Err(Error::OutputIsInput {
                    path: target.to_path_buf(),
                });
            }
            if !existing.is_dir() && !existing.is_file() {
                return Err(Error::OutputNotAFile {
                    path: target.to_path_buf(),
                    kind: super::write::describe_file_type(&existing.file_type()),
                });
            }
            if !force {
                return Err(Error::OutputExists {
                    path: target.to_path_buf(),
                });
            }
        }
        let parent = super::write::parent_directory(target);
        let staging = tempfile::Builder::new()
            .prefix(super::write::TEMPORARY_PREFIX)
            .tempdir_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        Ok(StagedDirectory {
            _partial: super::write::PartialOutput::register(staging.path()),
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
    check_nesting(input, output)?;
    let entries = entries(input)?;
    let is_shard_file =
        |name: &str, kind: &EntryKind| matches!(kind, EntryKind::File) && is_shard(name);
    let mut shard_bytes = 0;
    for (name, path, kind) in &entries {
        if is_shard_file(name, kind) {
            shard_bytes += super::SourceFile::open(path)?.data().len() as u64;
        }
    }
    if !entries
        .iter()
        .any(|(name, _, kind)| is_shard_file(name, kind))
    {
        return Err(Error::NoSafetensors {
            path: input.to_path_buf(),
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
    let shard_options = CompressOptions {
        force: false,
        progress: options.progress.begin_all(shard_bytes),
        ..options.clone()
    };
    for (name, path, kind) in &entries {
        if is_shard_file(name, kind) {
            let target = compressed_shard_name(name);
            let shard = compress_file(path, &staged.path().join(&target), &shard_options)?;
            report.source_bytes += shard.source_bytes;
            report.output_bytes += shard.compressed_bytes;
            manifest.shards.insert(name.clone(), target);
            report.shards.push((name.clone(), shard));
        }
    }
    for (name, path, kind) in &entries {
        if is_shard_file(name, kind) {
            continue;
        }
        if matches!(kind, EntryKind::File) && is_index(name) {
            let original = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let rewritten = rewrite_index(path, &original, &manifest.shards)?;
            let target = staged.path().join(name);
            std::fs::write(&target, &rewritten).map_err(|e| Error::io(&target, e))?;
            report.source_bytes += original.len() as u64;
            report.output_bytes += rewritten.len() as u64;
            manifest.indexes.insert(name.clone(), original);
            continue;
        }
        let bytes = copy_tree(path, kind, &staged.path().join(name))?;
        report.source_bytes += bytes;
        report.output_bytes += bytes;
        report.copied.push((name.clone(), bytes));
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

/// Reads and checks a compressed directory's manifest: its version, that
/// every name is a plain file name in the directory, that it maps sources
/// and shards one to one, that every shard it lists is there and that no
/// rebuilt file would land on another.
fn read_manifest(input: &Path) -> Result<Manifest> {
    let path = input.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotCompressed {
                path: input.to_path_buf(),
            });
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    super::schema::check_unique_keys(text.as_bytes()).map_err(|reason| {
        Error::corrupt(&path, None, format!("the manifest is ambiguous: {reason}"))
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::corrupt(&path, None, format!("the manifest is invalid: {e}")))?;
    if manifest.format != super::schema::FORMAT_NAME {
        return Err(Error::corrupt(
            &path,
            None,
            format!(
                "format {:?} is not {:?}",
                manifest.format,
                super::schema::FORMAT_NAME
            ),
        ));
    }
    if !super::schema::READABLE_VERSIONS.contains(&manifest.version) {
        return Err(Error::UnsupportedVersion {
            path,
            found: manifest.version.to_string(),
        });
    }
    let invalid = |message: String| Err(Error::corrupt(&path, None, message));
    for name in manifest
        .shards
        .keys()
        .chain(manifest.shards.values())
        .chain(manifest.indexes.keys())
    {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains(['/', '\\', '\0'])
            || name == MANIFEST
        {
            return invalid(format!(
                "{name:?} is not the plain name of a file in the directory"
            ));
        }
    }
    if manifest.shards.is_empty() {
        return invalid("it lists no shards".to_string());
    }
    let mut sources_of_shard: BTreeMap<&str, &str> = BTreeMap::new();
    for (source, shard) in &manifest.shards {
        if let Some(other) = sources_of_shard.insert(shard, source) {
            return invalid(format!(
                "it rebuilds both {other} and {source} from the one shard {shard}"
            ));
        }
        if !is_shard(source) || !is_shard(shard) {
            return invalid(format!(
                "{source} -> {shard}: shards and their sources are .safetensors files"
            ));
        }
    }
    for source in manifest.shards.keys() {
        if manifest.indexes.contains_key(source) {
            return invalid(format!(
                "{source} is listed both as a shard and as an index"
            ));
        }
    }
    for name in manifest.indexes.keys() {
        if sources_of_shard.contains_key(name.as_str()) {
            return invalid(format!("{name} is listed both as a shard and as an index"));
        }
    }
    for shard in manifest.shards.values() {
        let shard_path = input.join(shard);
        if !shard_path.is_file() {
            return Err(Error::corrupt(
                &path,
                None,
                format!("it lists the shard {shard}, which is not in the directory"),
            ));
        }
    }
    // Any other file is copied as it is: it must not land on a rebuilt one.
    for source in manifest.shards.keys() {
        if !sources_of_shard.contains_key(source.as_str()) && input.join(source).exists() {
            return Err(Error::corrupt(
                &path,
                None,
                format!(
                    "the directory holds a file {source}, and the shard {} would be rebuilt onto it",
                    manifest.shards[source]
                ),
            ));
        }
    }
    Ok(manifest)
}

/// Rebuilds every original file of a compressed directory into `output`:
/// every shard the manifest lists, its original indexes, and every other
/// file copied.
pub fn decompress_directory(
    input: &Path,
    output: &Path,
    force: bool,
    progress: &Progress,
) -> Result<DirectoryReport> {
    let started = std::time::Instant::now();
    let manifest = read_manifest(input)?;
    check_nesting(input, output)?;
    let mut needed: u64 = manifest
        .indexes
        .values()
        .map(|text| text.len() as u64)
        .sum();
    let mut shard_bytes = 0;
    for shard in manifest.shards.values() {
        let file = super::CompressedFile::open(&input.join(shard))?;
        needed += file.source_len();
        shard_bytes += file.source_data_len();
    }
    let entries = entries(input)?;
    let compressed: std::collections::BTreeSet<&str> =
        manifest.shards.values().map(String::as_str).collect();
    let is_copied = |name: &str| {
        name != MANIFEST && !compressed.contains(name) && !manifest.indexes.contains_key(name)
    };
    for (name, path, kind) in &entries {
        if is_copied(name) {
            needed += tree_bytes(path, kind)?;
        }
    }
    super::write::check_free_space(output, needed)?;
    let progress = progress.begin_all(shard_bytes);
    let staged = StagedDirectory::create(output, force, input)?;
    let mut report = DirectoryReport::default();
    for (source, shard) in &manifest.shards {
        let path = input.join(shard);
        let checks = decompress_file(&path, &staged.path().join(source), false, &progress)?;
        report.source_bytes += std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len();
        report.output_bytes += checks.source_bytes;
    }
    for (name, original) in &manifest.indexes {
        let target = staged.path().join(name);
        std::fs::write(&target, original).map_err(|e| Error::io(&target, e))?;
        report.output_bytes += original.len() as u64;
    }
    for (name, path, kind) in &entries {
        if is_copied(name) {
            let bytes = copy_tree(path, kind, &staged.path().join(name))?;
            report.source_bytes += bytes;
            report.output_bytes += bytes;
            report.copied.push((name.clone(), bytes));
        }
    }
    staged.commit()?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Bytes of a file, or of every file under a directory.
fn tree_bytes(path: &Path, kind: &EntryKind) -> Result<u64> {
    match kind {
        EntryKind::File => Ok(std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len()),
        EntryKind::Directory => entries(path)?
            .iter()
            .map(|(_, path, kind)| tree_bytes(path, kind))
            .sum(),
    }
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
