//! The compressed file: a valid safetensors file that carries the coded
//! planes of every compressed tensor, the untouched bytes of every other
//! tensor, and enough metadata to rebuild the source file byte for byte.
//!
//! * [`schema`] — metadata keys and the per-tensor record.
//! * [`read`] — opens and validates a compressed file.
//! * [`write`] — writes safetensors files atomically.
//! * [`compress`] / [`decompress`] — whole-file operations.
//!
//! `docs/FORMAT.md` is the specification.

pub mod compress;
pub mod decompress;
pub mod directory;
pub mod read;
pub mod schema;
pub mod source;
pub mod write;

pub use compress::{CompressOptions, CompressReport, compress_file};
pub use decompress::{
    DecodeChecks, Decoder, cpu_decoder, decompress_file, verify_file, verify_file_with,
};
pub use directory::{
    DirectoryReport, compress_directory, decompress_directory, verify_directory_with,
};
pub use read::{CompressedFile, Storage, StoredTensor};
pub use source::SourceFile;

/// A path's safetensors files: the path itself, or the `.safetensors`
/// files of a directory, sorted by name.
pub fn safetensors_files(path: &std::path::Path) -> crate::error::Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)
        .map_err(|e| crate::error::Error::io(path, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

/// Tells a progress display how many source bytes are done; does nothing by
/// default.
#[derive(Clone, Default)]
pub struct Progress(Option<std::sync::Arc<dyn Fn(u64) + Send + Sync>>);

impl Progress {
    pub fn new(advance: impl Fn(u64) + Send + Sync + 'static) -> Self {
        Progress(Some(std::sync::Arc::new(advance)))
    }

    pub fn advance(&self, bytes: u64) {
        if let Some(advance) = &self.0 {
            advance(bytes);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(shown)"
        } else {
            "Progress(none)"
        })
    }
}
