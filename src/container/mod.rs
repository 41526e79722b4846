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
pub mod read;
pub mod schema;
pub mod source;
pub mod write;

pub use compress::{CompressOptions, CompressReport, compress_file};
pub use decompress::{DecodeChecks, decompress_file, verify_file, verify_file_on};
pub use read::{CompressedFile, Storage, StoredTensor};
pub use source::SourceFile;
