//! `decompress` and `verify`: rebuild the source file from a compressed one,
//! tensor by tensor in the source's data order, checking every tensor's
//! checksum and the whole file's.

use std::hash::Hasher;
use std::path::Path;
use std::time::Instant;

use crate::codec::decode::decode_blocks;
use crate::codec::{BlockIndex, EncodedView};
use crate::error::{Error, Result};

use rayon::prelude::*;
use twox_hash::XxHash3_64;

use super::Progress;
use super::read::{CodedTensor, CompressedFile, Storage};
use super::write::AtomicOutput;

/// The outcome of checking one tensor.
#[derive(Debug)]
pub struct TensorCheck {
    pub name: String,
    pub coded: bool,
    pub bytes: u64,
    /// `None` when the tensor decoded to its recorded checksum.
    pub error: Option<Error>,
}

/// What decoding a whole file found.
#[derive(Debug)]
pub struct DecodeChecks {
    pub tensors: Vec<TensorCheck>,
    /// XXH3-64 of the rebuilt file, and the source file's recorded one.
    pub file_checksum: u64,
    pub expected_file_checksum: u64,
    pub source_bytes: u64,
    pub decoded_bytes: u64,
    pub seconds: f64,
}

impl DecodeChecks {
    pub fn file_matches(&self) -> bool {
        self.file_checksum == self.expected_file_checksum
    }

    pub fn all_ok(&self) -> bool {
        self.file_matches() && self.tensors.iter().all(|t| t.error.is_none())
    }
}

/// Decodes one coded tensor, whose index was parsed from it, into `out`
/// (exactly its decoded bytes): the CPU decoder, or a backend's
/// `decode_to_host`. A corrupt tensor is [`Error::CorruptJob`] (job 0).
pub type Decoder<'a> = dyn Fn(&EncodedView, &BlockIndex, &mut [u8]) -> Result<()> + Sync + 'a;

/// The CPU decoder as a [`Decoder`].
pub fn cpu_decoder() -> impl Fn(&EncodedView, &BlockIndex, &mut [u8]) -> Result<()> + Sync {
    move |view, index, out| {
        decode_blocks(view, index, 0..index.blocks.len(), out).map_err(|source| Error::CorruptJob {
            backend: "cpu".to_string(),
            job: 0,
            source,
        })
    }
}

/// Rebuilds the source file at `output`; fails, leaving no output, on the
/// first tensor that does not decode to its checksum.
pub fn decompress_file(
    input: &Path,
    output: &Path,
    force: bool,
    progress: &Progress,
) -> Result<DecodeChecks> {
    let file = CompressedFile::open(input)?;
    let mut out = AtomicOutput::create(output, force, &[input])?;
    super::write::check_free_space(output, file.source_len())?;
    let decode = cpu_decoder();
    let checks = rebuild(&file, &decode, true, progress, |bytes| out.write_all(bytes))?;
    if !checks.file_matches() {
        return Err(Error::ChecksumMismatch {
            path: input.to_path_buf(),
            tensor: None,
            expected: checks.expected_file_checksum,
            actual: checks.file_checksum,
        });
    }
    out.commit()?;
    Ok(checks)
}

/// Decodes everything on the CPU, checking every checksum and every chunk's
/// sync metadata, and reports each tensor.
pub fn verify_file(input: &Path) -> Result<DecodeChecks> {
    verify_file_with(input, &cpu_decoder(), &Progress::default())
}

/// Decodes everything with `decode` and checks every checksum.
pub fn verify_file_with(
    input: &Path,
    decode: &Decoder,
    progress: &Progress,
) -> Result<DecodeChecks> {
    let file = CompressedFile::open(input)?;
    rebuild(&file, decode, false, progress, |_| Ok(()))
}

/// A piece of the rebuilt file on its way to the writer.
enum Piece<'a> {
    /// Bytes stored as they are in the compressed file.
    Stored(&'a [u8]),
    /// A decoded tensor: the first `len` bytes of a buffer.
    Decoded(Vec<u8>, usize),
    /// The same, for a buffer that goes back to the decoder for the next
    /// large tensor once written (small tensors' buffers are dropped).
    Recycled(Vec<u8>, usize),
}

/// Streams the source file's bytes into `sink`. With `stop_on_error`, the
/// first failing tensor ends it with that error; otherwise failures are
/// recorded and the rest still checked. A writer thread hashes and sinks
/// each piece while the next is decoded; the hand-over is a rendezvous, so
/// memory holds two decoded batches at most.
fn rebuild(
    file: &CompressedFile,
    decode: &Decoder,
    stop_on_error: bool,
    progress: &Progress,
    mut sink: impl FnMut(&[u8]) -> Result<()> + Send,
) -> Result<DecodeChecks> {
    let started = Instant::now();
    progress.begin(file.source_data_len());
    let (to_writer, pieces) = std::sync::mpsc::sync_channel::<Piece>(0);
    let (to_decoder, written_buffers) = std::sync::mpsc::channel::<Vec<u8>>();
    let (decoded, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<u64> {
            let mut file_hash = XxHash3_64::new();
            for piece in pieces {
                let bytes = match &piece {
                    Piece::Stored(bytes) => bytes,
                    Piece::Decoded(buffer, len) | Piece::Recycled(buffer, len) => &buffer[..*len],
                };
                file_hash.write(bytes);
                sink(bytes)?;
                if let Piece::Recycled(buffer, _) = piece {
                    // The decoder may have finished and dropped its end.
                    let _ = to_decoder.send(buffer);
                }
            }
            Ok(file_hash.finish())
        });
        let decoded = decode_pieces(
            file,
            decode,
            stop_on_error,
            progress,
            &to_writer,
            &written_buffers,
        );
        drop(to_writer);
        (
            decoded,
            writer
                .join()
                .expect("the decompress writer thread does not panic"),
        )
    });
    // A failed write ends the decoding early: report it first.
    let file_checksum = written?;
    let (tensors, decoded_bytes) = decoded?;
    Ok(DecodeChecks {
        tensors,
        file_checksum,
        expected_file_checksum: file.source_checksum,
        source_bytes: file.source_len(),
        decoded_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The decoding half of [`rebuild`]: sends the file's pieces in order and
/// returns the per-tensor checks and the decoded byte count. Stops quietly
/// when the writer has hung up (it reports why).
fn decode_pieces<'a>(
    file: &'a CompressedFile,
    decode: &Decoder,
    stop_on_error: bool,
    progress: &Progress,
    to_writer: &std::sync::mpsc::SyncSender<Piece<'a>>,
    written_buffers: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<(Vec<TensorCheck>, u64)> {
    let mut tensors = Vec::with_capacity(file.tensors.len());
    let mut decoded_bytes = 0;
    let header_len = (file.source_header.len() as u64).to_le_bytes().to_vec();
    let header_len_bytes = header_len.len();
    if to_writer
        .send(Piece::Decoded(header_len, header_len_bytes))
        .is_err()
        || to_writer.send(Piece::Stored(&file.source_header)).is_err()
    {
        return Ok((tensors, decoded_bytes));
    }
    for batch in super::batches(&file.tensors, super::BATCH_BYTES, |t| t.source.len() as u64) {
        // Small tensors decode in parallel, each into buffers of its own.
        let parallel: Vec<Option<Result<Vec<Piece>>>> = if batch.len() > 1 {
            batch
                .par_iter()
                .map(|tensor| match &tensor.storage {
                    Storage::Raw => None,
                    Storage::Coded(coded) => {
                        let mut pieces = Vec::new();
                        Some(
                            decode_in_windows(
                                file,
                                decode,
                                &tensor.source.name,
                                coded,
                                Vec::new,
                                |buffer, len| {
                                    pieces.push(Piece::Decoded(buffer, len));
                                    true
                                },
                            )
                            .map(|()| pieces),
                        )
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut parallel = parallel.into_iter();
        for tensor in batch {
            let prepared = parallel.next().flatten();
            let name = &tensor.source.name;
            let mut writer_gone = false;
            let (coded, error) = match &tensor.storage {
                Storage::Raw => {
                    writer_gone = to_writer
                        .send(Piece::Stored(file.stored_bytes(tensor)))
                        .is_err();
                    (false, None)
                }
                Storage::Coded(coded) => {
                    decoded_bytes += coded.params.decoded_bytes();
                    let decoded = match prepared {
                        Some(pieces) => pieces.map(|pieces| {
                            for piece in pieces {
                                if to_writer.send(piece).is_err() {
                                    writer_gone = true;
                                    break;
                                }
                            }
                        }),
                        // A large tensor streams to the writer a window at a
                        // time, in buffers the writer is done with.
                        None => decode_in_windows(
                            file,
                            decode,
                            name,
                            coded,
                            || written_buffers.try_recv().unwrap_or_default(),
                            |buffer, len| {
                                writer_gone = to_writer.send(Piece::Recycled(buffer, len)).is_err();
                                !writer_gone
                            },
                        ),
                    };
                    (true, decoded.err())
                }
            };
            let error = match error {
                Some(error) if stop_on_error => return Err(error),
                error => error,
            };
            if writer_gone {
                return Ok((tensors, decoded_bytes));
            }
            tensors.push(TensorCheck {
                name: name.clone(),
                coded,
                bytes: tensor.source.len() as u64,
                error,
            });
            file.release(tensor);
            progress.advance(tensor.source.len() as u64);
        }
    }
    Ok((tensors, decoded_bytes))
}

/// Decodes a coded tensor with `decode` a window of blocks at a time, each
/// into a buffer from `take_buffer`, and hands each window's bytes to
/// `emit` (which returns `false` to stop); then checks the tensor's
/// checksum. Memory holds a window, whatever the tensor's size: bytes may
/// go out before the checksum condemns them, so whoever keeps them (an
/// output file) must keep nothing of a failed run.
fn decode_in_windows(
    file: &CompressedFile,
    decode: &Decoder,
    name: &str,
    coded: &CodedTensor,
    mut take_buffer: impl FnMut() -> Vec<u8>,
    mut emit: impl FnMut(Vec<u8>, usize) -> bool,
) -> Result<()> {
    let view = file.view(coded);
    let mut walker = file.index_walker(name, coded)?;
    let mut hash = XxHash3_64::new();
    while let Some(window) = walker
        .next_window_of_bytes(super::BATCH_BYTES)
        .map_err(|e| Error::codec(file.path(), name, e))?
    {
        let len = window.params.decoded_bytes() as usize;
        let mut buffer = take_buffer();
        if buffer.len() < len {
            buffer.try_reserve_exact(len - buffer.len()).map_err(|_| {
                Error::corrupt(
                    file.path(),
                    Some(name),
                    format!("cannot allocate {len} bytes to decode into"),
                )
            })?;
            buffer.resize(len, 0);
        }
        decode(&window.view(&view), &window.index, &mut buffer[..len])
            .map_err(|e| e.in_tensor(file.path(), name))?;
        hash.write(&buffer[..len]);
        if !emit(buffer, len) {
            return Ok(());
        }
    }
    coded.check_checksum(file.path(), name, hash.finish())
}
