//! Opening a compressed file: every name, offset, length and table is
//! checked here, before any decoder — CPU or GPU — sees a byte of it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata};

use crate::codec::index::{IndexSummary, IndexWalker};
use crate::codec::{BlockIndex, EncodedView, FloatKind, TensorParams};
use crate::error::{Error, Result};

use super::schema::{self, CodedHeader};
use super::source::{SourceFile, TensorEntry, tensor_entries};

/// A compressed file, mapped and validated.
pub struct CompressedFile {
    file: SourceFile,
    /// The source file's header JSON, byte for byte.
    pub source_header: Vec<u8>,
    pub source_metadata: Metadata,
    /// XXH3-64 of the whole source file.
    pub source_checksum: u64,
    /// Every tensor of the source file, in the source's data order.
    pub tensors: Vec<StoredTensor>,
}

pub struct StoredTensor {
    /// Name, dtype, shape and byte range in the source file.
    pub source: TensorEntry,
    /// Bytes the tensor occupies in the compressed file.
    pub stored_range: Range<usize>,
    pub storage: Storage,
}

pub enum Storage {
    /// The bytes are stored unchanged at `stored_range`.
    Raw,
    Coded(Box<CodedTensor>),
}

pub struct CodedTensor {
    pub params: TensorParams,
    /// XXH3-64 of the decoded bytes.
    pub checksum: u64,
    /// Ranges of the planes in the data section.
    pub index_range: Range<usize>,
    pub head_range: Range<usize>,
    pub rest_range: Range<usize>,
    /// What its block index holds, every record of which was checked when
    /// the file was opened; read it with [`CompressedFile::block_index`] or
    /// [`CompressedFile::index_walker`].
    pub summary: IndexSummary,
}

impl CodedTensor {
    /// Fails unless `actual`, the XXH3-64 of the bytes decoded from tensor
    /// `name` of file `path`, is the checksum recorded at compression.
    pub fn check_checksum(&self, path: &Path, name: &str, actual: u64) -> Result<()> {
        if actual == self.checksum {
            return Ok(());
        }
        Err(Error::ChecksumMismatch {
            path: path.to_path_buf(),
            tensor: Some(name.to_string()),
            expected: self.checksum,
            actual,
        })
    }
}

/// Inflates raw DEFLATE `input`, which must be one whole stream and
/// nothing after it, into at most `limit` bytes.
fn inflate_exactly(input: &[u8], limit: usize) -> std::result::Result<Vec<u8>, String> {
    use miniz_oxide::inflate::TINFLStatus;
    use miniz_oxide::inflate::core::{
        DecompressorOxide, decompress, inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
    };
    let mut output = vec![0; input.len().saturating_mul(4).clamp(1024, limit)];
    let mut decompressor = Box::<DecompressorOxide>::default();
    let (mut read, mut written) = (0, 0);
    loop {
        let (status, consumed, produced) = decompress(
            &mut decompressor,
            &input[read..],
            &mut output,
            written,
            TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        );
        read += consumed;
        written += produced;
        match status {
            TINFLStatus::Done if read == input.len() => {
                output.truncate(written);
                return Ok(output);
            }
            TINFLStatus::Done => {
                return Err(format!(
                    "{} bytes follow the end of the DEFLATE stream",
                    input.len() - read
                ));
            }
            TINFLStatus::HasMoreOutput if output.len() < limit => {
                output.resize(output.len().saturating_mul(2).min(limit), 0);
            }
            TINFLStatus::HasMoreOutput => {
                return Err(format!("it inflates past {limit} bytes"));
            }
            other => return Err(format!("{other:?}")),
        }
    }
}

/// Fails unless ecfloat wrote `file` in a format version this build reads;
/// returns the version.
pub fn check_compressed(file: &SourceFile) -> Result<u32> {
    let path = &file.path;
    let version = file.ecf_version().ok_or_else(|| Error::NotCompressed {
        path: path.to_path_buf(),
    })?;
    schema::parse_version(version).ok_or_else(|| Error::UnsupportedVersion {
        path: path.to_path_buf(),
        found: version.to_string(),
    })
}

impl CompressedFile {
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_source(SourceFile::open(path)?)
    }

    /// `file`, already opened, read as a compressed file.
    pub fn from_source(file: SourceFile) -> Result<Self> {
        let path = file.path.clone();
        let path = path.as_path();
        let version = check_compressed(&file)?;
        let corrupt = |message: String| Error::corrupt(path, None, message);
        let checksum_text = file
            .metadata_value(schema::SOURCE_CHECKSUM_KEY)
            .ok_or_else(|| {
                corrupt(format!(
                    "metadata key {} is missing",
                    schema::SOURCE_CHECKSUM_KEY
                ))
            })?;
        let source_checksum = schema::parse_checksum(checksum_text)
            .map_err(|e| corrupt(format!("{}: {e}", schema::SOURCE_CHECKSUM_KEY)))?;

        let mut stored: BTreeMap<String, TensorEntry> = file
            .tensors()
            .into_iter()
            .map(|entry| (entry.name.clone(), entry))
            .collect();
        let header_entry = stored
            .remove(schema::SOURCE_HEADER_TENSOR)
            .filter(|e| e.dtype == Dtype::U8)
            .ok_or_else(|| {
                corrupt(format!(
                    "the U8 tensor {} is missing",
                    schema::SOURCE_HEADER_TENSOR
                ))
            })?;
        let source_header = inflate_exactly(
            &file.data()[header_entry.range.clone()],
            schema::MAX_HEADER_BYTES,
        )
        .map_err(|e| corrupt(format!("the recorded source header does not inflate: {e}")))?;
        schema::check_unique_keys(&source_header).map_err(|reason| {
            corrupt(format!("the recorded source header is ambiguous: {reason}"))
        })?;
        let source_metadata: Metadata = serde_json::from_slice(&source_header).map_err(|e| {
            let named = serde_json::from_slice(&source_header)
                .ok()
                .and_then(|header| super::source::tensor_problem(&header, None));
            corrupt(format!(
                "the recorded source header is invalid: {}",
                named.unwrap_or_else(|| e.to_string())
            ))
        })?;

        let mut tensors = Vec::new();
        for source in tensor_entries(&source_metadata) {
            let entry = stored.remove(&source.name).ok_or_else(|| {
                Error::corrupt(
                    path,
                    Some(&source.name),
                    "is in the source header but not stored",
                )
            })?;
            let storage = resolve(&file, version, &source, &entry)
                .map_err(|message| Error::corrupt(path, Some(&source.name), message))?;
            let storage = match storage {
                Resolved::Raw => Storage::Raw,
                Resolved::Coded(coded) => {
                    let view = view_of(file.data(), &coded);
                    let summary = IndexWalker::new(&view)
                        .and_then(IndexWalker::summarise)
                        .map_err(|e| Error::codec(path, &source.name, e))?;
                    Storage::Coded(Box::new(CodedTensor { summary, ..coded }))
                }
            };
            tensors.push(StoredTensor {
                source,
                stored_range: entry.range,
                storage,
            });
        }
        if let Some(name) = stored.keys().next() {
            return Err(Error::corrupt(
                path,
                Some(name),
                "is stored but is not in the source header",
            ));
        }
        Ok(CompressedFile {
            file,
            source_header,
            source_metadata,
            source_checksum,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The data section of the compressed file.
    pub fn data(&self) -> &[u8] {
        self.file.data()
    }

    /// Bytes of the compressed file.
    pub fn stored_len(&self) -> u64 {
        self.file.bytes().len() as u64
    }

    /// Bytes of the source file's tensors: what decoding goes through.
    pub fn source_data_len(&self) -> u64 {
        self.source_metadata.data_len() as u64
    }

    /// Bytes of the source file it decompresses to.
    pub fn source_len(&self) -> u64 {
        8 + self.source_header.len() as u64 + self.source_metadata.data_len() as u64
    }

    pub fn view<'a>(&'a self, coded: &'a CodedTensor) -> EncodedView<'a> {
        view_of(self.data(), coded)
    }

    /// Drops a tensor's mapped pages from memory once it has been used (see
    /// [`SourceFile::release`]).
    pub fn release(&self, tensor: &StoredTensor) {
        self.file.release(tensor.stored_range.clone());
    }

    /// A coded tensor's whole block index, parsed: memory in proportion to
    /// its blocks (for decoding it in one piece, as a device does).
    pub fn block_index(&self, name: &str, coded: &CodedTensor) -> Result<BlockIndex> {
        BlockIndex::parse(&self.view(coded)).map_err(|e| Error::codec(self.path(), name, e))
    }

    /// Reads a coded tensor's block index a window at a time.
    pub fn index_walker<'a>(
        &'a self,
        name: &str,
        coded: &'a CodedTensor,
    ) -> Result<IndexWalker<'a>> {
        IndexWalker::new(&self.view(coded)).map_err(|e| Error::codec(self.path(), name, e))
    }

    /// The tensor named `name`, as the source file had it.
    pub fn tensor(&self, name: &str) -> Result<&StoredTensor> {
        self.tensors
            .iter()
            .find(|t| t.source.name == name)
            .ok_or_else(|| Error::NoSuchTensor {
                path: self.path().to_path_buf(),
                tensor: name.to_string(),
            })
    }

    /// A tensor's original bytes, decoded by `decode` (the CPU decoder, or
    /// a backend's, see [`super::Decoder`]) a window of blocks at a time
    /// and checked against the checksum recorded at compression; memory in
    /// proportion to the tensor. Allocating them is an error, not an abort,
    /// when they do not fit.
    pub fn decode_tensor(&self, tensor: &StoredTensor, decode: &super::Decoder) -> Result<Vec<u8>> {
        let name = &tensor.source.name;
        let coded = match &tensor.storage {
            Storage::Raw => return Ok(self.stored_bytes(tensor).to_vec()),
            Storage::Coded(coded) => coded,
        };
        let len = coded.params.decoded_bytes() as usize;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len).map_err(|_| {
            Error::corrupt(
                self.path(),
                Some(name),
                format!("cannot allocate the {len} bytes it decodes to"),
            )
        })?;
        self.decode_windows(name, coded, decode, |window| {
            bytes.extend_from_slice(window);
            Ok(())
        })?;
        Ok(bytes)
    }

    /// Decodes coded tensor `name` with `decode` a window of blocks at a
    /// time into one reused buffer, hands each window's bytes to `visit` in
    /// order (stopping at its first error), and then checks the tensor's
    /// checksum: memory bounded by a window, whatever the tensor claims.
    pub fn decode_windows(
        &self,
        name: &str,
        coded: &CodedTensor,
        decode: &super::Decoder,
        mut visit: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let view = self.view(coded);
        let mut walker = self.index_walker(name, coded)?;
        let mut hash = twox_hash::XxHash3_64::new();
        let mut buffer = Vec::new();
        while let Some(window) = walker
            .next_window_of_bytes(super::BATCH_BYTES)
            .map_err(|e| Error::codec(self.path(), name, e))?
        {
            buffer.resize(window.params.decoded_bytes() as usize, 0);
            decode(&window.view(&view), &window.index, &mut buffer)
                .map_err(|e| e.in_tensor(self.path(), name))?;
            std::hash::Hasher::write(&mut hash, &buffer);
            visit(&buffer)?;
        }
        coded.check_checksum(self.path(), name, std::hash::Hasher::finish(&hash))
    }

    /// Writes a tensor's original bytes into `out`, which must hold exactly
    /// them: a coded tensor decoded by `decode` a window at a time and
    /// checked against its checksum, a raw one copied.
    pub fn read_tensor_into(
        &self,
        tensor: &StoredTensor,
        decode: &super::Decoder,
        out: &mut [u8],
    ) -> Result<()> {
        let name = &tensor.source.name;
        let len = tensor.source.len();
        if len != out.len() {
            return Err(Error::Usage(format!(
                "{}: tensor {name} is {len} bytes, not the {} of the buffer given",
                self.path().display(),
                out.len()
            )));
        }
        let coded = match &tensor.storage {
            Storage::Raw => {
                let stored = self.stored_bytes(tensor);
                if stored.len() != len {
                    return Err(Error::corrupt(
                        self.path(),
                        Some(name),
                        format!("stores {} bytes, not {len}", stored.len()),
                    ));
                }
                out.copy_from_slice(stored);
                return Ok(());
            }
            Storage::Coded(coded) => coded,
        };
        let mut written = 0;
        let out_len = out.len();
        self.decode_windows(name, coded, decode, |window| {
            let place = out
                .get_mut(written..written + window.len())
                .ok_or_else(|| {
                    Error::corrupt(
                        self.path(),
                        Some(name),
                        format!("decodes to more than the {out_len} bytes of the buffer given"),
                    )
                })?;
            place.copy_from_slice(window);
            written += window.len();
            Ok(())
        })?;
        // Every byte of `out` written, whatever the windows added up to.
        if written != out_len {
            return Err(Error::corrupt(
                self.path(),
                Some(name),
                format!("decodes to {written} bytes, not {out_len}"),
            ));
        }
        Ok(())
    }

    /// The stored bytes of a tensor: its data if raw, its header and planes
    /// if coded.
    pub fn stored_bytes(&self, tensor: &StoredTensor) -> &[u8] {
        &self.data()[tensor.stored_range.clone()]
    }
}

fn view_of<'a>(data: &'a [u8], coded: &'a CodedTensor) -> EncodedView<'a> {
    EncodedView {
        params: &coded.params,
        head: &data[coded.head_range.clone()],
        rest: &data[coded.rest_range.clone()],
        index: &data[coded.index_range.clone()],
    }
}

enum Resolved {
    Raw,
    Coded(CodedTensor),
}

/// Decides how a source tensor is stored and checks its stored form.
fn resolve(
    file: &SourceFile,
    version: u32,
    source: &TensorEntry,
    entry: &TensorEntry,
) -> std::result::Result<Resolved, String> {
    if entry.dtype == source.dtype && entry.shape == source.shape {
        return Ok(Resolved::Raw);
    }
    let source_dtype = format!("{:?}", source.dtype);
    let kind = FloatKind::from_safetensors_name(&source_dtype)
        .filter(|_| entry.dtype == Dtype::U8 && entry.shape.len() == 1)
        .ok_or_else(|| {
            format!(
                "stored as {:?} {:?}, which is neither its source form {source_dtype} {:?} nor a coded tensor",
                entry.dtype, entry.shape, source.shape
            )
        })?;
    let elements = source
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .ok_or("shape overflows the element count")?;
    let bytes = &file.data()[entry.range.clone()];
    let (header, header_len) = CodedHeader::read(bytes, version, kind, elements)?;
    let planes = [header.index_len, header.head_len, header.rest_len];
    let total = planes
        .iter()
        .try_fold(header_len as u64, |sum, &len| sum.checked_add(len))
        .filter(|&sum| sum == bytes.len() as u64)
        .ok_or_else(|| {
            format!(
                "planes of {planes:?} bytes after a {header_len}-byte header do not fill its {} bytes",
                bytes.len()
            )
        })?;
    debug_assert_eq!(total, bytes.len() as u64);
    let mut start = entry.range.start + header_len;
    let [index_range, head_range, rest_range] = planes.map(|len| {
        let range = start..start + len as usize;
        start = range.end;
        range
    });
    Ok(Resolved::Coded(CodedTensor {
        params: header.params,
        checksum: header.checksum,
        index_range,
        head_range,
        rest_range,
        summary: IndexSummary::default(),
    }))
}
