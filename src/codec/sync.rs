//! Chunked, gapless parallel decoding of one block's head stream.
//!
//! A block's coded head stream is cut into *chunks* of `chunk_bits` bits. A
//! chunk owns every codeword that *starts* inside it. To decode a chunk
//! without knowing where its first codeword starts, a decoder begins
//! `warmup_bits` before the chunk and discards what it decodes there:
//! Huffman codes resynchronise within a few symbols, so by the time the
//! decoder reaches the chunk it stands on a true codeword boundary. The
//! encoder replays exactly this for every chunk; for the rare chunk where
//! the warm-up does not resynchronise in time it stores an *exception*: the
//! offset of the chunk's first true boundary, where the decoder then starts
//! directly. Chunk 0 always starts at the block's first bit.
//!
//! This module is the single definition of that rule: the encoder checks it,
//! the CPU chunked decoder follows it, and the GPU kernels implement it.
//!
//! A stream decodes the same sequentially and chunk by chunk exactly when
//! every chunk's decoder starts where the codewords of the chunk before it
//! end, and the last codeword ends at the stream's last bit. Every decoder
//! checks that, so a file with wrong sync metadata is rejected everywhere,
//! not just by the decoders that use the metadata, and reports the first
//! [`StreamProblem`] of a block the same way.

use std::fmt;

use super::bits::peek_bits;
use super::huffman::{DecodeTable, MAX_CODE_BITS};

/// Why a block's coded stream does not decode. Every decoder (CPU, WGSL,
/// CUDA) reports the first of these in this order: the lowest chunk with a
/// wrong start, then an overrun, then a wrong count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamProblem {
    /// Chunk `chunk` does not start where the codewords before it end: its
    /// sync exception, or the tensor's warm-up, is wrong.
    ChunkStart { chunk: u64 },
    /// The last codeword runs past the end of the stream.
    Overrun,
    /// The stream holds `codewords` codewords for `elements` elements.
    Count { codewords: u64, elements: u64 },
}

impl fmt::Display for StreamProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamProblem::ChunkStart { chunk } => write!(
                f,
                "chunk {chunk} does not start where the codewords before it end (wrong sync exception or warm-up)"
            ),
            StreamProblem::Overrun => {
                write!(f, "the last codeword runs past the end of the stream")
            }
            StreamProblem::Count {
                codewords,
                elements,
            } => write!(
                f,
                "the stream holds {codewords} codewords, the block has {elements} elements"
            ),
        }
    }
}

/// Per-tensor parameters of the chunked decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkGeometry {
    pub chunk_bits: u32,
    pub warmup_bits: u32,
}

impl ChunkGeometry {
    pub fn chunk_count(&self, stream_bits: u64) -> u64 {
        stream_bits.div_ceil(self.chunk_bits as u64)
    }

    /// Where the decoder of `chunk` begins reading.
    pub(crate) fn decode_start(&self, chunk: u64, exception_first_boundary: Option<u32>) -> u64 {
        let chunk_begin = chunk * self.chunk_bits as u64;
        match exception_first_boundary {
            Some(offset) => chunk_begin + offset as u64,
            None => chunk_begin.saturating_sub(self.warmup_bits as u64),
        }
    }

    /// Decodes the symbols `chunk` owns, calling `emit` for each in order.
    /// Always terminates: every step advances by at least one bit.
    pub(crate) fn decode_chunk(
        &self,
        stream: &[u8],
        stream_bits: u64,
        table: &DecodeTable,
        chunk: u64,
        exception_first_boundary: Option<u32>,
        mut emit: impl FnMut(u16),
    ) {
        let chunk_begin = chunk * self.chunk_bits as u64;
        let chunk_end = (chunk_begin + self.chunk_bits as u64).min(stream_bits);
        let mut position = self.decode_start(chunk, exception_first_boundary);
        while position < chunk_end {
            let (symbol, len) = table.lookup(peek_bits(stream, position, MAX_CODE_BITS) as u64);
            if position >= chunk_begin {
                emit(symbol as u16);
            }
            position += len as u64;
        }
    }

    /// The first position at or after `chunk`'s beginning that a warm-up
    /// decode lands on (`stream_bits` if it runs past the end).
    pub fn warmup_landing(
        &self,
        stream: &[u8],
        stream_bits: u64,
        table: &DecodeTable,
        chunk: u64,
    ) -> u64 {
        self.chunk_start(stream, stream_bits, table, chunk, None)
    }

    /// Where `chunk`'s decoder stands once it reaches the chunk: the first
    /// position at or after the chunk's beginning on its way from
    /// [`decode_start`](Self::decode_start), or `stream_bits` if that lies
    /// past the end. A chunk decodes right exactly when this is where the
    /// codewords before it end.
    pub(crate) fn chunk_start(
        &self,
        stream: &[u8],
        stream_bits: u64,
        table: &DecodeTable,
        chunk: u64,
        exception_first_boundary: Option<u32>,
    ) -> u64 {
        let length_at = |position| {
            let (_, len) = table.lookup(peek_bits(stream, position, MAX_CODE_BITS) as u64);
            len as u64
        };
        self.landing(chunk, exception_first_boundary, length_at)
            .min(stream_bits)
    }

    /// `chunk_start` before clamping to the stream,
    /// given the length of the codeword at any position.
    #[inline(always)]
    pub fn landing(
        &self,
        chunk: u64,
        exception_first_boundary: Option<u32>,
        length_at: impl Fn(u64) -> u64,
    ) -> u64 {
        let chunk_begin = chunk * self.chunk_bits as u64;
        let mut position = self.decode_start(chunk, exception_first_boundary);
        while position < chunk_begin {
            position += length_at(position);
        }
        position
    }
}
