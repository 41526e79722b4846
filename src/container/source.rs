//! Reading plain safetensors files: the input of `compress` and the layout
//! `decompress` rebuilds.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata, SafeTensorError};

use crate::error::{Error, Result};

use super::schema;

/// A safetensors file mapped into memory, its header validated.
pub struct SourceFile {
    pub path: PathBuf,
    map: Mmap,
    header_len: usize,
    pub metadata: Metadata,
}

/// One tensor of a safetensors header, in data order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub range: Range<usize>,
}

impl TensorEntry {
    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

impl SourceFile {
    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| Error::NotSafetensors {
                path: path.to_path_buf(),
                reason: match other_format(&map) {
                    Some(format) => {
                        format!("it is {format}; ecf reads only safetensors files")
                    }
                    None => describe_safetensors_error(&e),
                },
            })?;
        Ok(SourceFile {
            path: path.to_path_buf(),
            map,
            header_len,
            metadata,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The header JSON exactly as stored, padding included.
    pub fn header_bytes(&self) -> &[u8] {
        &self.bytes()[8..8 + self.header_len]
    }

    pub fn data(&self) -> &[u8] {
        &self.bytes()[8 + self.header_len..]
    }

    pub fn tensors(&self) -> Vec<TensorEntry> {
        tensor_entries(&self.metadata)
    }

    /// Drops the mapped pages of data-section bytes `range` from this
    /// process's memory once they are no longer needed; they are read again
    /// from the file if touched. Keeps resident memory bounded while a
    /// large file is streamed through.
    pub fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        {
            let start = 8 + self.header_len + range.start;
            // Safety: the map is read-only and file-backed, so MADV_DONTNEED
            // only unmaps pages, which fault back in from the file unchanged.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    range.len(),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    /// The value of a `__metadata__` key.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(key))
            .map(String::as_str)
    }

    /// Whether ecfloat wrote this file, and with which format version.
    pub fn ecf_version(&self) -> Option<&str> {
        (self.metadata_value(schema::FORMAT_KEY) == Some(schema::FORMAT_NAME))
            .then(|| self.metadata_value(schema::VERSION_KEY).unwrap_or("?"))
    }
}

/// Tensors of a validated header in data order.
pub fn tensor_entries(metadata: &Metadata) -> Vec<TensorEntry> {
    metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = metadata
                .info(&name)
                .expect("offset_keys names header tensors");
            TensorEntry {
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: info.data_offsets.0..info.data_offsets.1,
                name,
            }
        })
        .collect()
}

/// Maps `path` read-only; an empty file (which cannot be mapped) is not a
/// safetensors file.
pub fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(Error::NotSafetensors {
            path: path.to_path_buf(),
            reason: "the file is empty".to_string(),
        });
    }
    // Safety: the map is read-only; like every mmap-based reader we rely on
    // the file not being truncated while it is open.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(map)
}

/// The format of a file that is not safetensors, from its first bytes,
/// where they say: the weight formats people are likely to pass instead.
fn other_format(bytes: &[u8]) -> Option<&'static str> {
    const SIGNATURES: [(&[u8], &str); 5] = [
        (b"GGUF", "a GGUF file"),
        (b"PK\x03\x04", "a ZIP archive (PyTorch saves .bin and .pt files as these)"),
        (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5)"),
        (b"\x93NUMPY", "a NumPy array file"),
        (b"lmgg", "a GGML file"),
    ];
    if let Some((_, format)) = SIGNATURES.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return Some(format);
    }
    // Pickle protocol 2 to 5 opens with PROTO and its number.
    (bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]))
        .then_some("a Python pickle (an older PyTorch .bin file)")
}

/// A one-line reason a buffer is not a safetensors file.
pub fn describe_safetensors_error(error: &SafeTensorError) -> String {
    match error {
        SafeTensorError::HeaderTooSmall => {
            "the file is shorter than the 8-byte header length".to_string()
        }
        SafeTensorError::HeaderTooLarge => {
            "the header length field exceeds the 100 MB safetensors allows".to_string()
        }
        SafeTensorError::InvalidHeaderLength => {
            "the header length field points past the end of the file (truncated?)".to_string()
        }
        SafeTensorError::InvalidHeader(_) => "the header is not UTF-8 text".to_string(),
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            format!("the header is not a valid safetensors JSON header: {e}")
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the data section's length differs from what the header's offsets describe (truncated or extended file)".to_string()
        }
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor {name}: data offsets overlap, leave a gap, or run backwards")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's byte length does not match its dtype and shape".to_string()
        }
        SafeTensorError::ValidationOverflow => {
            "a tensor's shape overflows when computing its byte length".to_string()
        }
        other => other.to_string(),
    }
}
