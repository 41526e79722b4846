//! The compressed file: a valid safetensors file that carries the coded
//! planes of every compressed tensor, the untouched bytes of every other
//! tensor, and enough metadata to rebuild the source file byte for byte.
//!
//! * [`schema`] — metadata keys and the per-tensor record.
//! * [`read`] — opens and validates a compressed file.
//! * [`write`](mod@write) — writes safetensors files atomically.
//! * [`compress`] / [`decompress`] — whole-file operations.
//! * [`checkpoint`] — a file or a directory of shards as one set of tensors.
//!
//! `docs/FORMAT.md` is the specification.

pub mod checkpoint;
pub mod compress;
pub mod decompress;
pub mod directory;
pub mod read;
pub mod schema;
pub mod source;
pub mod write;

pub use checkpoint::CompressedCheckpoint;
pub use compress::{CompressOptions, CompressReport, compress_file};
pub use decompress::{
    DecodeChecks, Decoder, cpu_decoder, decompress_file, verify_file, verify_file_with,
};
pub use directory::{
    DirectoryReport, compress_directory, decompress_directory, verify_directory_with,
};
pub use read::{CodedTensor, CompressedFile, Storage, StoredTensor};
pub use source::SourceFile;

/// Source bytes of small tensors encoded, or decoded, together (in
/// parallel); memory holds two such batches at most.
pub(crate) const BATCH_BYTES: u64 = 64 << 20;

/// Consecutive runs of `items` of at most `limit` bytes in all, by `len`
/// (an item larger than the limit alone): the batches compress and
/// decompress hold in memory at once.
pub(crate) fn batches<T>(items: &[T], limit: u64, len: impl Fn(&T) -> u64) -> Vec<&[T]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, item) in items.iter().enumerate() {
        if index > start && bytes + len(item) > limit {
            batches.push(&items[start..index]);
            start = index;
            bytes = 0;
        }
        bytes += len(item);
    }
    if start < items.len() {
        batches.push(&items[start..]);
    }
    batches
}

/// `model.safetensors` → `model.ecf.safetensors`; directory `model` →
/// `model.ecf`: where `compress` writes without `-o`.
pub fn compressed_name(input: &std::path::Path) -> std::path::PathBuf {
    let name = input.file_name().unwrap_or_default().to_string_lossy();
    if input.is_dir() {
        return input.with_file_name(format!("{name}.ecf"));
    }
    let stem = name.strip_suffix(".safetensors").unwrap_or(&name);
    input.with_file_name(format!("{stem}.ecf.safetensors"))
}

/// `model.ecf.safetensors` or `model.ecf` → `model.safetensors`; directory
/// `model.ecf` → `model`: where `decompress` writes without `-o`.
pub fn decompressed_name(input: &std::path::Path) -> crate::error::Result<std::path::PathBuf> {
    let name = input.file_name().unwrap_or_default().to_string_lossy();
    let (stem, extension) = if input.is_dir() {
        (name.strip_suffix(".ecf"), "")
    } else {
        (
            name.strip_suffix(".ecf.safetensors")
                .or_else(|| name.strip_suffix(".ecf")),
            ".safetensors",
        )
    };
    match stem {
        Some(stem) if !stem.is_empty() => Ok(input.with_file_name(format!("{stem}{extension}"))),
        _ => Err(crate::error::Error::Usage(format!(
            "{}: cannot derive an output name (expected {}); pass -o OUT",
            input.display(),
            if input.is_dir() {
                "DIR.ecf"
            } else {
                "NAME.ecf.safetensors or NAME.ecf"
            }
        ))),
    }
}

/// A path's safetensors files: the path itself, or the `.safetensors`
/// files of a directory, sorted by name; a directory without any is an
/// error.
pub fn safetensors_files(path: &std::path::Path) -> crate::error::Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)
        .map_err(|e| crate::error::Error::io(path, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    if files.is_empty() {
        return Err(crate::error::Error::NoSafetensors {
            path: path.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

/// Fails unless `path` is a compressed file or directory this build reads:
/// [`Error::NotCompressed`](crate::Error::NotCompressed) for a plain one.
pub fn check_compressed(path: &std::path::Path) -> crate::error::Result<()> {
    if path.is_dir() {
        directory::check_compressed(path)
    } else {
        read::check_compressed(&SourceFile::open(path)?).map(drop)
    }
}

/// Where an operation reports how far it is, in bytes of the original
/// (uncompressed) data.
pub trait ProgressSink: Send + Sync {
    /// The bytes the whole operation will go through.
    fn begin(&self, total: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
}

/// A handle on an optional [`ProgressSink`]; does nothing by default.
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<std::sync::Arc<dyn ProgressSink>>,
    /// Set once a directory has announced the total of all its files, so
    /// that each file's own total does not replace it.
    total_announced: bool,
}

impl Progress {
    pub fn new(sink: impl ProgressSink + 'static) -> Self {
        Progress {
            sink: Some(std::sync::Arc::new(sink)),
            total_announced: false,
        }
    }

    pub fn begin(&self, total: u64) {
        if let Some(sink) = &self.sink
            && !self.total_announced
        {
            sink.begin(total);
        }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some(sink) = &self.sink {
            sink.advance(bytes);
        }
    }

    /// Announces `total` for a whole directory and returns the progress its
    /// files report to.
    pub(crate) fn begin_all(&self, total: u64) -> Progress {
        self.begin(total);
        Progress {
            sink: self.sink.clone(),
            total_announced: true,
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.sink.is_some() {
            "Progress(shown)"
        } else {
            "Progress(none)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{batches, compressed_name, decompressed_name};
    use crate::error::Error;
    use std::path::Path;

    #[test]
    fn output_names_are_derived_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        assert_eq!(
            compressed_name(&at("m.safetensors")),
            at("m.ecf.safetensors")
        );
        assert_eq!(compressed_name(&at("m")), at("m.ecf.safetensors"));
        for (input, output) in [
            ("m.ecf.safetensors", "m.safetensors"),
            ("m.ecf", "m.safetensors"),
        ] {
            assert_eq!(
                decompressed_name(&at(input)).unwrap(),
                at(output),
                "{input}"
            );
        }
        // Nothing to strip, or nothing left once stripped: the caller must
        // name the output.
        for input in ["m.safetensors", ".ecf.safetensors", ".ecf"] {
            assert!(
                matches!(decompressed_name(&at(input)), Err(Error::Usage(_))),
                "{input}"
            );
        }
        std::fs::create_dir(at("model.ecf")).unwrap();
        assert_eq!(decompressed_name(&at("model.ecf")).unwrap(), at("model"));
        std::fs::create_dir(at("model")).unwrap();
        assert!(matches!(
            decompressed_name(Path::new(&at("model"))),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn batches_fill_up_to_the_limit_and_never_split_an_item() {
        let lens = |items: &[u64], limit| -> Vec<Vec<u64>> {
            batches(items, limit, |&len| len)
                .into_iter()
                .map(<[u64]>::to_vec)
                .collect()
        };
        assert!(lens(&[], 6).is_empty());
        // Exactly the limit is one batch; one byte more starts another.
        assert_eq!(lens(&[2, 4], 6), [vec![2, 4]]);
        assert_eq!(lens(&[2, 5], 6), [vec![2], vec![5]]);
        // An item larger than the limit stands alone, wherever it is.
        assert_eq!(lens(&[10, 1, 1], 6), [vec![10], vec![1, 1]]);
        assert_eq!(
            lens(&[3, 3, 3, 10, 1, 1], 6),
            [vec![3, 3], vec![3], vec![10], vec![1, 1]]
        );
        // Empty items join whatever batch is open.
        assert_eq!(lens(&[0, 6, 0], 6), [vec![0, 6, 0]]);
    }
}
