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

/// The header JSON of a safetensors file's bytes, where its length prefix
/// fits in them.
fn header_json(bytes: &[u8]) -> Option<&[u8]> {
    let length: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let end = usize::try_from(u64::from_le_bytes(length))
        .ok()?
        .checked_add(8)?;
    bytes.get(8..end)
}

impl SourceFile {
    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        if let Some(json) = header_json(&map) {
            super::schema::check_unique_keys(json).map_err(|reason| Error::NotSafetensors {
                path: path.to_path_buf(),
                reason: format!("its header is ambiguous: {reason}"),
            })?;
        }
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| Error::NotSafetensors {
                path: path.to_path_buf(),
                reason: match other_format(&map) {
                    Some(format) => {
                        format!("it is {format}; ecf reads only safetensors files")
                    }
                    None => header_problem(&map).unwrap_or_else(|| describe_safetensors_error(&e)),
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
    pub(crate) fn header_bytes(&self) -> &[u8] {
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
    pub(crate) fn metadata_value(&self, key: &str) -> Option<&str> {
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

/// Tensors of a validated header in data order; empty tensors that share
/// an offset in name order, so that every run meets them in the same order.
pub(crate) fn tensor_entries(metadata: &Metadata) -> Vec<TensorEntry> {
    let mut entries: Vec<TensorEntry> = metadata
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
        .collect();
    entries.sort_by(|a, b| {
        (a.range.start, a.range.end, &a.name).cmp(&(b.range.start, b.range.end, &b.name))
    });
    entries
}

/// Maps `path` read-only; an empty file (which cannot be mapped) is not a
/// safetensors file.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
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
        (
            b"PK\x03\x04",
            "a ZIP archive (PyTorch saves .bin and .pt files as these)",
        ),
        (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5)"),
        (b"\x93NUMPY", "a NumPy array file"),
        (b"lmgg", "a GGML file"),
    ];
    if let Some((_, format)) = SIGNATURES
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
    {
        return Some(format);
    }
    // Pickle protocol 2 to 5 opens with PROTO and its number.
    (bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]))
        .then_some("a Python pickle (an older PyTorch .bin file)")
}

/// What is wrong with the tensors a safetensors file's header lists (see
/// [`tensor_problem`]); `None` when the header cannot be read as JSON at
/// all, or nothing is wrong.
fn header_problem(bytes: &[u8]) -> Option<String> {
    let header_len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let json = bytes.get(8..8usize.checked_add(header_len)?)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json).ok()?;
    tensor_problem(&header, Some((bytes.len() - 8 - header_len) as u64))
}

/// What is wrong with the tensors a safetensors header lists, naming the
/// tensor, the same way on every run (safetensors' own checks name none,
/// or whichever tensor its hash map yields first): a dtype, shape or
/// offsets that cannot be, a length its dtype and shape do not have, data
/// that overlaps or leaves gaps, and, given the data section's length,
/// data that does not fill it.
pub(crate) fn tensor_problem(
    header: &serde_json::Map<String, serde_json::Value>,
    data_len: Option<u64>,
) -> Option<String> {
    let mut spans = Vec::new();
    for (name, entry) in header.iter().filter(|(name, _)| *name != "__metadata__") {
        let field = |key: &str| entry.get(key).cloned().unwrap_or(serde_json::Value::Null);
        let dtype: Dtype = match serde_json::from_value(field("dtype")) {
            Ok(dtype) => dtype,
            Err(_) => {
                return Some(format!(
                    "tensor {name}: dtype {} is not a safetensors dtype",
                    field("dtype")
                ));
            }
        };
        let Ok(shape) = serde_json::from_value::<Vec<u64>>(field("shape")) else {
            return Some(format!(
                "tensor {name}: shape {} is not a list of sizes",
                field("shape")
            ));
        };
        let Ok([start, end]) = serde_json::from_value::<[u64; 2]>(field("data_offsets")) else {
            return Some(format!(
                "tensor {name}: data_offsets {} is not a pair of byte offsets",
                field("data_offsets")
            ));
        };
        let bits = shape
            .iter()
            .try_fold(dtype.bitsize() as u64, |bits, &d| bits.checked_mul(d));
        let Some(bits) = bits else {
            return Some(format!(
                "tensor {name}: shape {shape:?} overflows its byte length"
            ));
        };
        if end < start || bits % 8 != 0 || end - start != bits / 8 {
            return Some(format!(
                "tensor {name}: {dtype:?} {shape:?} takes {} bytes, but its data offsets [{start}, {end}] span {}",
                bits / 8,
                end as i128 - start as i128
            ));
        }
        spans.push((start, end, name));
    }
    spans.sort();
    let mut previous: Option<(u64, u64, &String)> = None;
    for &(start, end, name) in &spans {
        let expected = previous.map_or(0, |(_, end, _)| end);
        if start != expected {
            return Some(match previous {
                None => {
                    format!("tensor {name}: the first tensor's data starts at byte {start}, not 0")
                }
                Some((p_start, p_end, p_name)) if start < p_end => format!(
                    "tensor {name}: data offsets [{start}, {end}] overlap tensor {p_name}'s [{p_start}, {p_end}]"
                ),
                Some((_, _, p_name)) => format!(
                    "tensor {name}: data offsets [{start}, {end}] leave {} bytes unused after tensor {p_name}",
                    start - expected
                ),
            });
        }
        previous = Some((start, end, name));
    }
    let used = previous.map_or(0, |(_, end, _)| end);
    let data_len = data_len?;
    (used != data_len).then(|| {
        format!(
            "the header's tensors take {used} bytes of data, but the file holds {data_len} after the header (truncated or extended?)"
        )
    })
}

/// A one-line reason a buffer is not a safetensors file.
pub(crate) fn describe_safetensors_error(error: &SafeTensorError) -> String {
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
