//! `compress`: a safetensors file in, a compressed safetensors file out.
//!
//! Tensors are encoded one at a time from the memory-mapped input and their
//! coded bytes spooled to an anonymous temporary file, so memory holds one
//! tensor's planes, not the whole model's. The output is then assembled:
//! header, the tensors kept as they were (largest elements first, so each
//! stays aligned to its element size), the deflated source header, then the
//! coded tensors.

use std::io::{BufWriter, Seek, Write};
use std::path::Path;
use std::time::Instant;

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use rayon::prelude::*;

use crate::codec::{self, EncodeOptions, EncodedTensor, FloatKind};
use crate::error::{Error, Result};

use super::Progress;
use super::schema::{self, CodedHeader};
use super::source::{SourceFile, TensorEntry};
use super::write::{AtomicOutput, OutputTensor, header_bytes};

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
    let spool_dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let spool_file = tempfile::tempfile_in(spool_dir).map_err(|e| Error::io(spool_dir, e))?;
    let mut spool = BufWriter::with_capacity(1 << 20, spool_file);

    let source_header = miniz_oxide::deflate::compress_to_vec(source.header_bytes(), 9);
    let mut coded = vec![OutputTensor {
        name: schema::SOURCE_HEADER_TENSOR.to_string(),
        dtype: "U8".to_string(),
        shape: vec![source_header.len() as u64],
        len: source_header.len() as u64,
    }];
    spool
        .write_all(&source_header)
        .map_err(|e| Error::io(output, e))?;
    // The whole file's checksum, taken tensor by tensor as they stream past
    // (they cover the data section in order), so no pass maps it all.
    let mut file_hash = Xxh3::new();
    file_hash.update(&source.bytes()[..source.bytes().len() - source.data().len()]);
    // Small tensors are encoded several at a time, in parallel; a large one
    // alone, in parallel blocks; then it is hashed and its source pages
    // released. A writer thread spools each batch while the next one is
    // encoded, so the cores never wait on the disk; the hand-over is a
    // rendezvous, so memory holds one source batch and two encoded ones.
    let (batch_sender, batch_receiver) = std::sync::mpsc::sync_channel(0);
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> Result<_> {
            let mut reports = Vec::with_capacity(tensors.len());
            let mut raw = Vec::new();
            for (batch, encoded) in batch_receiver {
                let batch: &[TensorEntry] = batch;
                let encoded: Vec<Result<Option<Coded>>> = encoded;
                for (tensor, encoded) in batch.iter().zip(encoded) {
                    let source_bytes = tensor.len() as u64;
                    let mut report = TensorReport {
                        name: tensor.name.clone(),
                        dtype: format!("{:?}", tensor.dtype),
                        elements: tensor.shape.iter().map(|&d| d as u64).product(),
                        source_bytes,
                        stored_bytes: source_bytes,
                        coded: false,
                    };
                    match encoded? {
                        Some(Coded { header, encoded }) => {
                            for plane in [&header, &encoded.index, &encoded.head, &encoded.rest] {
                                spool.write_all(plane).map_err(|e| Error::io(output, e))?;
                            }
                            let len = header.len() as u64 + encoded.stored_bytes();
                            coded.push(OutputTensor {
                                name: tensor.name.clone(),
                                dtype: "U8".to_string(),
                                shape: vec![len],
                                len,
                            });
                            report.stored_bytes = len;
                            report.coded = true;
                        }
                        None => raw.push(tensor),
                    }
                    reports.push(report);
                    options.progress.advance(source_bytes);
                }
            }
            Ok((reports, raw))
        });
        for batch in super::batches(&tensors, super::BATCH_BYTES, |t| t.len() as u64) {
            let encoded: Vec<Result<Option<Coded>>> = batch
                .par_iter()
                .map(|tensor| encode_if_smaller(input, &source, tensor, &options.encode))
                .collect();
            for tensor in batch {
                file_hash.update(&source.data()[tensor.range.clone()]);
            }
            if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
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
    let (reports, mut raw) = written?;

    // Descending element size keeps every raw tensor aligned to its element.
    raw.sort_by_key(|t| std::cmp::Reverse(t.dtype.bitsize()));
    let mut layout: Vec<OutputTensor> = raw
        .iter()
        .map(|t| OutputTensor {
            name: t.name.clone(),
            dtype: format!("{:?}", t.dtype),
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            len: t.len() as u64,
        })
        .collect();
    layout.extend(coded);

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
            schema::format_checksum(file_hash.digest()),
        ),
    ]);

    let header = header_bytes(&metadata, &layout);
    out.write_all(&header)?;
    for tensor in &raw {
        out.write_all(&source.data()[tensor.range.clone()])?;
        source.release(tensor.range.clone());
    }
    let mut spool_file = spool
        .into_inner()
        .map_err(|e| Error::io(output, e.into_error()))?;
    spool_file.rewind().map_err(|e| Error::io(output, e))?;
    std::io::copy(&mut spool_file, out.file()?).map_err(|e| Error::io(output, e))?;
    let compressed_bytes = header.len() as u64 + layout.iter().map(|t| t.len).sum::<u64>();
    out.commit()?;
    Ok(CompressReport {
        source_bytes: source.bytes().len() as u64,
        compressed_bytes,
        tensors: reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A tensor's coded header and planes, as they are stored.
struct Coded {
    header: Vec<u8>,
    encoded: EncodedTensor,
}

/// The coded header and planes of a float tensor, if coding makes it
/// smaller; `None` for a tensor to keep as it is.
fn encode_if_smaller(
    input: &Path,
    source: &SourceFile,
    tensor: &TensorEntry,
    options: &EncodeOptions,
) -> Result<Option<Coded>> {
    let bytes = &source.data()[tensor.range.clone()];
    let dtype = format!("{:?}", tensor.dtype);
    let Some(kind) = FloatKind::from_safetensors_name(&dtype).filter(|_| !bytes.is_empty()) else {
        return Ok(None);
    };
    let encoded =
        codec::encode(kind, bytes, options).map_err(|e| Error::codec(input, &tensor.name, e))?;
    let mut header = Vec::new();
    CodedHeader {
        params: encoded.params.clone(),
        checksum: xxh3_64(bytes),
        index_len: encoded.index.len() as u64,
        head_len: encoded.head.len() as u64,
        rest_len: encoded.rest.len() as u64,
    }
    .write(&mut header);
    // A coded tensor's header entry is a few bytes shorter than a raw
    // one's (a 1-D U8 shape), so its stored bytes decide.
    let smaller = header.len() as u64 + encoded.stored_bytes() < bytes.len() as u64;
    Ok(smaller.then_some(Coded { header, encoded }))
}
