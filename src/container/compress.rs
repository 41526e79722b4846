//! `compress`: a safetensors file in, a compressed safetensors file out.
//!
//! The output is, in order: the header, the tensors kept as they were
//! (largest elements first, so each stays aligned to its element size), the
//! deflated source header, then the coded tensors. Which tensors are kept is
//! settled first; then room for the header is reserved, the kept tensors
//! written, and the coded ones encoded a batch at a time from the
//! memory-mapped input and written as they come, so memory holds a batch's
//! planes, not the whole model's, and every byte is written once. The
//! header goes into its room last.

use std::hash::Hasher;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use twox_hash::XxHash3_64;

use crate::codec::{self, EncodeOptions, EncodedTensor, FloatKind};
use crate::error::{Error, Result};

use super::Progress;
use super::schema::{self, CodedHeader};
use super::source::{SourceFile, TensorEntry};
use super::write::{AtomicOutput, OutputTensor, header_bytes, pad_header};

#[derive(Clone, Debug, Default)]
pub struct CompressOptions {
    pub encode: EncodeOptions,
    /// Replace an existing output file.
    pub force: bool,
    /// Told the source bytes of each tensor once it is done.
    pub progress: Progress,
}

/// What happened to one tensor.
#[derive(Clone, Debug)]
pub struct TensorReport {
    pub name: String,
    pub dtype: String,
    pub elements: u64,
    pub source_bytes: u64,
    /// Bytes of its planes (coded) or of its data (kept raw).
    pub stored_bytes: u64,
    pub coded: bool,
}

#[derive(Clone, Debug)]
pub struct CompressReport {
    pub source_bytes: u64,
    pub compressed_bytes: u64,
    pub tensors: Vec<TensorReport>,
    pub seconds: f64,
}

impl CompressReport {
    pub fn ratio(&self) -> f64 {
        self.compressed_bytes as f64 / self.source_bytes.max(1) as f64
    }
}

pub fn compress_file(
    input: &Path,
    output: &Path,
    options: &CompressOptions,
) -> Result<CompressReport> {
    compress_within(input, output, options, coded_len_bound)
}

/// [`compress_file`], reserving the header's room from `coded_len_bound`
/// (source bytes to a bound on a coded tensor's bytes).
fn compress_within(
    input: &Path,
    output: &Path,
    options: &CompressOptions,
    coded_len_bound: fn(u64) -> u64,
) -> Result<CompressReport> {
    let started = Instant::now();
    let source = SourceFile::open(input)?;
    if let Some(version) = source.ecf_version() {
        return Err(Error::AlreadyCompressed {
            path: input.to_path_buf(),
            version: version.to_string(),
        });
    }
    let tensors = source.tensors();
    if tensors
        .iter()
        .any(|t| t.name == schema::SOURCE_HEADER_TENSOR)
    {
        return Err(Error::Unsupported {
            path: input.to_path_buf(),
            tensor: Some(schema::SOURCE_HEADER_TENSOR.to_string()),
            message: "this tensor name is reserved for ecfloat's own use".to_string(),
        });
    }
    let mut out = AtomicOutput::create(output, options.force, &[input])?;
    options.progress.begin(source.data().len() as u64);

    // Each tensor's float format where it is stored coded.
    let coded_kinds: Vec<Option<FloatKind>> = tensors
        .par_iter()
        .map(|tensor| coded_kind(input, &source, tensor, &options.encode))
        .collect::<Result<_>>()?;
    // Descending element size keeps every stored tensor aligned to its
    // element.
    let mut stored: Vec<&TensorEntry> = tensors
        .iter()
        .zip(&coded_kinds)
        .filter(|(_, kind)| kind.is_none())
        .map(|(tensor, _)| tensor)
        .collect();
    stored.sort_by_key(|t| std::cmp::Reverse(t.dtype.bitsize()));
    let source_header = miniz_oxide::deflate::compress_to_vec(source.header_bytes(), 9);
    let layout_with = |coded_len: &dyn Fn(usize) -> u64| -> Vec<OutputTensor> {
        let coded = tensors
            .iter()
            .zip(&coded_kinds)
            .enumerate()
            .filter(|(_, (_, kind))| kind.is_some())
            .map(|(index, (tensor, _))| coded_entry(&tensor.name, coded_len(index)));
        stored
            .iter()
            .map(|t| OutputTensor {
                name: t.name.clone(),
                dtype: format!("{:?}", t.dtype),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                len: t.len() as u64,
            })
            .chain([coded_entry(
                schema::SOURCE_HEADER_TENSOR,
                source_header.len() as u64,
            )])
            .chain(coded)
            .collect()
    };
    // The header comes first but holds the coded tensors' sizes, known only
    // once they are written: room for it is reserved from a bound on each,
    // so every byte is written once, in place.
    let reserved_header = header_bytes(
        &file_metadata(&source, 0),
        &layout_with(&|index| coded_len_bound(tensors[index].len() as u64)),
    );
    out.write_all(&vec![0; reserved_header.len()])?;
    for tensor in &stored {
        out.write_all(&source.data()[tensor.range.clone()])?;
        source.release(tensor.range.clone());
    }
    out.write_all(&source_header)?;

    // The whole file's checksum, taken tensor by tensor as they stream past
    // (they cover the data section in order), so no pass maps it all.
    let mut file_hash = XxHash3_64::new();
    file_hash.write(&source.bytes()[..source.bytes().len() - source.data().len()]);
    // Small tensors are encoded several at a time, in parallel; a large one
    // alone, in parallel blocks; then it is hashed and its source pages
    // released. A writer thread writes each batch while the next one is
    // encoded, so the cores never wait on the disk; the hand-over is a
    // rendezvous, so memory holds one source batch and two encoded ones.
    let numbered: Vec<(usize, &TensorEntry)> = tensors.iter().enumerate().collect();
    let (batch_sender, batch_receiver) = std::sync::mpsc::sync_channel(0);
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> Result<_> {
            let mut reports = Vec::with_capacity(tensors.len());
            let mut coded_lens = vec![0u64; tensors.len()];
            for (batch, encoded) in batch_receiver {
                let batch: &[(usize, &TensorEntry)] = batch;
                let encoded: Vec<Result<Option<Coded>>> = encoded;
                for (&(index, tensor), encoded) in batch.iter().zip(encoded) {
                    let source_bytes = tensor.len() as u64;
                    let mut report = TensorReport {
                        name: tensor.name.clone(),
                        dtype: format!("{:?}", tensor.dtype),
                        elements: tensor.shape.iter().map(|&d| d as u64).product(),
                        source_bytes,
                        stored_bytes: source_bytes,
                        coded: false,
                    };
                    if let Some(Coded { header, encoded }) = encoded? {
                        for plane in [&header, &encoded.index, &encoded.head, &encoded.rest] {
                            out.write_all(plane)?;
                        }
                        let len = header.len() as u64 + encoded.stored_bytes();
                        coded_lens[index] = len;
                        report.stored_bytes = len;
                        report.coded = true;
                    }
                    reports.push(report);
                    options.progress.advance(source_bytes);
                }
            }
            Ok((reports, coded_lens))
        });
        for batch in super::batches(&numbered, super::BATCH_BYTES, |(_, t)| t.len() as u64) {
            let encoded: Vec<Result<Option<Coded>>> = batch
                .par_iter()
                .map(|&(index, tensor)| {
                    coded_kinds[index]
                        .map(|kind| encode_tensor(input, &source, tensor, kind, &options.encode))
                        .transpose()
                })
                .collect();
            for (_, tensor) in batch {
                file_hash.write(&source.data()[tensor.range.clone()]);
            }
            if let (Some((_, first)), Some((_, last))) = (batch.first(), batch.last()) {
                source.release(first.range.start..last.range.end);
            }
            if batch_sender.send((batch, encoded)).is_err() {
                break; // The writer stopped on an error, which join returns.
            }
        }
        drop(batch_sender);
        writer
            .join()
            .expect("the compress writer thread does not panic")
    });
    let (reports, coded_lens) = written?;

    let layout = layout_with(&|index| coded_lens[index]);
    let data_bytes: u64 = layout.iter().map(|t| t.len).sum();
    let header = header_bytes(&file_metadata(&source, file_hash.finish()), &layout);
    let header_len = match pad_header(&header, reserved_header.len()) {
        Some(padded) => {
            let file = out.file()?;
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.write_all(&padded))
                .map_err(|e| Error::io(output, e))?;
            out.commit()?;
            padded.len()
        }
        None => {
            // A coded tensor outgrew its bound (which takes options far from
            // the defaults): the data moves behind the header.
            let mut moved = AtomicOutput::create(output, options.force, &[input])?;
            moved.write_all(&header)?;
            let (file, moved_file) = (out.file()?, moved.file()?);
            file.seek(SeekFrom::Start(reserved_header.len() as u64))
                .and_then(|_| std::io::copy(file, moved_file))
                .map_err(|e| Error::io(output, e))?;
            moved.commit()?;
            header.len()
        }
    };
    Ok(CompressReport {
        source_bytes: source.bytes().len() as u64,
        compressed_bytes: header_len as u64 + data_bytes,
        tensors: reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The header entry of a coded tensor (or of the deflated source header)
/// of `len` bytes.
fn coded_entry(name: &str, len: u64) -> OutputTensor {
    OutputTensor {
        name: name.to_string(),
        dtype: "U8".to_string(),
        shape: vec![len],
        len,
    }
}

/// The compressed file's metadata: the source's, less any `ecf.` keys,
/// then ecfloat's own.
fn file_metadata(source: &SourceFile, source_checksum: u64) -> Vec<(&str, String)> {
    let mut metadata: Vec<(&str, String)> = source
        .metadata
        .metadata()
        .iter()
        .flatten()
        .filter(|(key, _)| !key.starts_with("ecf."))
        .map(|(key, value)| (key.as_str(), value.clone()))
        .collect();
    metadata.sort();
    metadata.extend([
        (schema::FORMAT_KEY, schema::FORMAT_NAME.to_string()),
        (schema::VERSION_KEY, schema::FORMAT_VERSION.to_string()),
        (
            schema::SOURCE_CHECKSUM_KEY,
            schema::format_checksum(source_checksum),
        ),
    ]);
    metadata
}

/// Source tensors of fewer bytes than this are coded only where that makes
/// them smaller, which a first pass finds out by encoding them; larger
/// float tensors are always coded, so which tensors are stored is known
/// before the first coded byte is written. Coding never makes a large
/// tensor more than a few bytes per block larger (a block that codes
/// badly is stored raw in its planes).
const ALWAYS_CODED_BYTES: u64 = 64 << 10;

/// A bound on the coded size of a tensor of `source_len` bytes with the
/// default blocks, generous enough that its decimal digits are rarely more
/// than the true size's.
fn coded_len_bound(source_len: u64) -> u64 {
    source_len + source_len / 16 + 4096
}

/// The float format of `tensor` if it is stored coded (see
/// [`ALWAYS_CODED_BYTES`]); `None` for one stored as it is: not a
/// non-empty tensor of a float dtype the codec knows, or a small one that
/// coding does not shrink.
fn coded_kind(
    input: &Path,
    source: &SourceFile,
    tensor: &TensorEntry,
    options: &EncodeOptions,
) -> Result<Option<FloatKind>> {
    let Some(kind) = FloatKind::from_safetensors_name(&format!("{:?}", tensor.dtype))
        .filter(|_| !tensor.is_empty())
    else {
        return Ok(None);
    };
    if tensor.len() as u64 >= ALWAYS_CODED_BYTES {
        return Ok(Some(kind));
    }
    let coded = encode_tensor(input, source, tensor, kind, options)?;
    let smaller = coded.header.len() as u64 + coded.encoded.stored_bytes() < tensor.len() as u64;
    Ok(smaller.then_some(kind))
}

/// A tensor's coded header and planes, as they are stored.
struct Coded {
    header: Vec<u8>,
    encoded: EncodedTensor,
}

/// The coded header and planes of `tensor`, of float format `kind`.
fn encode_tensor(
    input: &Path,
    source: &SourceFile,
    tensor: &TensorEntry,
    kind: FloatKind,
    options: &EncodeOptions,
) -> Result<Coded> {
    let bytes = &source.data()[tensor.range.clone()];
    let encoded =
        codec::encode(kind, bytes, options).map_err(|e| Error::codec(input, &tensor.name, e))?;
    let mut header = Vec::new();
    CodedHeader {
        params: encoded.params.clone(),
        checksum: XxHash3_64::oneshot(bytes),
        index_len: encoded.index.len() as u64,
        head_len: encoded.head.len() as u64,
        rest_len: encoded.rest.len() as u64,
    }
    .write(&mut header);
    Ok(Coded { header, encoded })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::decompress_file;
    use crate::container::write::{TensorData, write_safetensors};

    /// A source of float tensors that coding cannot shrink, one small and
    /// one large, beside a compressible one.
    fn write_source(path: &Path) -> Vec<u8> {
        let weights = crate::synth::to_bytes(
            &crate::synth::heavy_tailed(200_000, 500, 0.02, 7),
            FloatKind::Bf16,
        );
        let small_noise = crate::synth::random_bytes(4000, 1);
        let large_noise = crate::synth::random_bytes(400_000, 2);
        let tensors = [
            ("weights", "BF16", vec![400u64, 500], &weights),
            ("small_noise", "F32", vec![1000], &small_noise),
            ("large_noise", "F16", vec![200_000], &large_noise),
        ];
        let tensors: Vec<TensorData> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| TensorData {
                name,
                dtype,
                shape,
                bytes,
            })
            .collect();
        write_safetensors(path, &[], &tensors).unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn large_float_tensors_are_coded_even_where_that_does_not_shrink_them() {
        let directory = tempfile::tempdir().unwrap();
        let (source, output) = (directory.path().join("s"), directory.path().join("c"));
        let original = write_source(&source);
        let report = compress_file(&source, &output, &CompressOptions::default()).unwrap();
        let stored: Vec<&str> = report
            .tensors
            .iter()
            .filter(|t| !t.coded)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(stored, ["small_noise"]);
        let large = report
            .tensors
            .iter()
            .find(|t| t.name == "large_noise")
            .unwrap();
        assert!(
            large.stored_bytes >= large.source_bytes,
            "noise does not shrink"
        );
        assert!(large.stored_bytes < large.source_bytes + 100);
        let rebuilt = directory.path().join("r");
        decompress_file(&output, &rebuilt, false, &Default::default()).unwrap();
        assert!(std::fs::read(&rebuilt).unwrap() == original);
    }

    #[test]
    fn a_header_outgrowing_its_room_moves_the_data_behind_it() {
        let directory = tempfile::tempdir().unwrap();
        let source = directory.path().join("s");
        let original = write_source(&source);
        let (roomy, cramped) = (directory.path().join("a"), directory.path().join("b"));
        let options = CompressOptions::default();
        compress_file(&source, &roomy, &options).unwrap();
        compress_within(&source, &cramped, &options, |_| 0).unwrap();
        let (roomy, cramped) = (
            std::fs::read(&roomy).unwrap(),
            std::fs::read(&cramped).unwrap(),
        );
        // The same file but for the spaces after the header's JSON.
        let json_len = |file: &[u8]| u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        let json = |file: &[u8]| file[8..8 + json_len(file)].trim_ascii_end().to_vec();
        assert_eq!(json(&roomy), json(&cramped));
        assert!(roomy[8 + json_len(&roomy)..] == cramped[8 + json_len(&cramped)..]);
        assert!(
            json_len(&cramped) - json(&cramped).len() < 8,
            "no room was reserved"
        );
        let rebuilt = directory.path().join("r");
        decompress_file(
            &directory.path().join("b"),
            &rebuilt,
            false,
            &Default::default(),
        )
        .unwrap();
        assert!(std::fs::read(&rebuilt).unwrap() == original);
    }
}
