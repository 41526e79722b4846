//! The encoder: one tensor of floats into head stream, rest plane and block
//! index.
//!
//! 1. *Survey* the tensor once: a histogram of the top 8 bits of every
//!    element per span of 16K elements, and which bits never vary.
//! 2. *Choose* the head width and the block size by estimated size.
//! 3. *Decide* per block, in order: constant, raw, a new code, or the previous
//!    block's code — whichever is smallest with its table counted in.
//! 4. *Write* every block's stream, sync exceptions and rest bits in parallel.

use rayon::prelude::*;

use super::bits::BitWriter;
use super::float::{FieldSplit, FloatKind, width_mask};
use super::huffman::{self, DecodeTable, MAX_CODE_BITS};
use super::index::{self, BlockRecord, ChunkException};
use super::stats::{self, Histogram};
use super::sync::ChunkGeometry;
use super::table::{self, CodeLengths};
use super::{CodecError, EncodedTensor, MAX_ELEMENTS, TensorParams};

#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// Elements per block, a power of two. Each block has its own code
    /// (or reuses the previous one) and decodes on its own.
    pub block_elements: u32,
    /// Head width in bits; `None` chooses by estimated size.
    pub head_bits: Option<u32>,
    pub chunk_bits: u32,
    pub warmup_bits: u32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            block_elements: 1 << 16,
            head_bits: None,
            chunk_bits: 1024,
            warmup_bits: 64,
        }
    }
}

/// Elements per survey histogram.
const SURVEY_SPAN: usize = 1 << 14;
/// Survey spans per block when estimating the effect of the head width.
const ESTIMATE_BLOCK_SPANS: usize = 4;

/// Encodes `bytes`, little-endian elements of `kind`.
pub fn encode(
    kind: FloatKind,
    bytes: &[u8],
    options: &EncodeOptions,
) -> Result<EncodedTensor, CodecError> {
    let width = kind.width_bytes();
    if !bytes.len().is_multiple_of(width) {
        return Err(CodecError::LengthMismatch(format!(
            "{} bytes are not a whole number of {width}-byte {kind} elements",
            bytes.len()
        )));
    }
    let elements = (bytes.len() / width) as u64;
    if elements > MAX_ELEMENTS {
        return Err(CodecError::InvalidParameters(format!(
            "{elements} elements exceed the limit of {MAX_ELEMENTS}"
        )));
    }
    let survey = Survey::take(kind, bytes);
    let head_bits = match options.head_bits {
        Some(bits) => bits,
        None => survey.best_head_bits(kind),
    };
    let mut split = FieldSplit {
        kind,
        head_bits,
        rest_const_bits: 0,
        rest_const_value: 0,
    };
    (split.rest_const_bits, split.rest_const_value) = survey.constant_rest_bits(&split);
    let block_elements = options.block_elements;
    let params = TensorParams {
        split,
        elements,
        block_elements,
        geometry: ChunkGeometry {
            chunk_bits: options.chunk_bits,
            warmup_bits: options.warmup_bits,
        },
    };
    params.validate()?;

    let block_bytes = block_elements as usize * width;
    let histograms: Vec<Histogram> = if (block_elements as usize).is_multiple_of(SURVEY_SPAN) {
        // Blocks are whole survey spans: fold their 8-bit histograms.
        survey
            .spans
            .chunks(block_elements as usize / SURVEY_SPAN)
            .map(|spans| {
                let mut block = [0u64; 256];
                for span in spans {
                    stats::add_into(&mut block, &stats::fold_top_bits(span, head_bits));
                }
                block
            })
            .collect()
    } else {
        map_chunks(bytes, block_bytes, |_, block| head_histogram(&split, block))
    };
    let decisions = decide_blocks(&histograms, head_bits);

    // Every block's stream and rest sizes are known from its histogram and
    // code, so blocks write straight into their place in one head plane and
    // one rest plane, in parallel.
    let rest_bits = split.stored_rest_bits() as u64;
    let head_sizes: Vec<usize> = histograms
        .iter()
        .zip(&decisions)
        .map(|(histogram, decision)| {
            decision.stream_bits(histogram, head_bits).div_ceil(8) as usize
        })
        .collect();
    let rest_sizes: Vec<usize> = histograms
        .iter()
        .map(|h| (h.iter().sum::<u64>() * rest_bits).div_ceil(8) as usize)
        .collect();
    let mut head = vec![0u8; head_sizes.iter().sum()];
    let mut rest = vec![0u8; rest_sizes.iter().sum()];
    let work: Vec<BlockWork> = bytes
        .chunks(block_bytes)
        .zip(split_at_lengths(&mut head, &head_sizes))
        .zip(split_at_lengths(&mut rest, &rest_sizes))
        .zip(decisions.iter().zip(&histograms))
        .map(
            |(((block, stream), rest), (decision, histogram))| BlockWork {
                block,
                stream,
                rest,
                decision,
                stream_bits: decision.stream_bits(histogram, head_bits),
            },
        )
        .collect();
    let records: Vec<Vec<u8>> = if work.len() > 1 {
        work.into_par_iter()
            .map(|work| encode_block(&split, params.geometry, work))
            .collect()
    } else {
        work.into_iter()
            .map(|work| encode_block(&split, params.geometry, work))
            .collect()
    };
    Ok(EncodedTensor {
        params,
        head,
        rest,
        index: records.concat(),
    })
}

/// `bytes` cut into consecutive slices of the given lengths.
fn split_at_lengths<'a>(mut bytes: &'a mut [u8], lengths: &[usize]) -> Vec<&'a mut [u8]> {
    lengths
        .iter()
        .map(|&len| {
            let (first, others) = std::mem::take(&mut bytes).split_at_mut(len);
            bytes = others;
            first
        })
        .collect()
}

/// `map(chunk number, chunk)` over the chunks of `bytes`, in parallel when
/// there is more than one (a single chunk skips the hand-over to the pool).
fn map_chunks<T: Send>(
    bytes: &[u8],
    chunk_bytes: usize,
    map: impl Fn(usize, &[u8]) -> T + Sync,
) -> Vec<T> {
    if bytes.len() <= chunk_bytes {
        bytes
            .chunks(chunk_bytes.max(1))
            .enumerate()
            .map(|(i, c)| map(i, c))
            .collect()
    } else {
        bytes
            .par_chunks(chunk_bytes)
            .enumerate()
            .map(|(i, c)| map(i, c))
            .collect()
    }
}

/// What one pass over the tensor learns.
struct Survey {
    /// Histogram of 8-bit heads per span of `SURVEY_SPAN` elements.
    spans: Vec<Histogram>,
    /// AND and OR of all elements: where they agree, a bit never varies.
    and: u32,
    or: u32,
}

impl Survey {
    fn take(kind: FloatKind, bytes: &[u8]) -> Self {
        let width = kind.width_bytes();
        let split = FieldSplit {
            kind,
            head_bits: 8,
            rest_const_bits: 0,
            rest_const_value: 0,
        };
        let parts = map_chunks(bytes, SURVEY_SPAN * width, |_, span| {
            let (mut and, mut or) = (u32::MAX, 0u32);
            let histogram = interleaved_histogram(kind, span, |element| {
                and &= element;
                or |= element;
                split.head(element)
            });
            (histogram, and, or)
        });
        let mut survey = Survey {
            spans: Vec::with_capacity(parts.len()),
            and: u32::MAX,
            or: 0,
        };
        for (histogram, and, or) in parts {
            survey.spans.push(histogram);
            survey.and &= and;
            survey.or |= or;
        }
        survey
    }

    /// How `split` should store its rest: the number of low rest bits that
    /// never vary, and their value.
    fn constant_rest_bits(&self, split: &FieldSplit) -> (u32, u32) {
        if self.spans.is_empty() {
            return (0, 0);
        }
        let varying = split.full_rest(self.and ^ self.or);
        let bits = varying.trailing_zeros().min(split.rest_bits());
        (bits, split.full_rest(self.and) & width_mask(bits))
    }

    /// Estimated stored bits with heads of `head_bits` in blocks of
    /// `block_spans` survey spans: the ideal code length per block, a table
    /// per block, and the rest bits.
    fn estimate_bits(&self, kind: FloatKind, head_bits: u32, block_spans: usize) -> f64 {
        let elements: u64 = self.spans.iter().flatten().sum();
        let split = FieldSplit {
            kind,
            head_bits,
            rest_const_bits: 0,
            rest_const_value: 0,
        };
        let rest_bits = split.rest_bits() - self.constant_rest_bits(&split).0;
        let heads: f64 = self
            .spans
            .chunks(block_spans)
            .map(|spans| {
                let mut block = [0u64; 256];
                for span in spans {
                    stats::add_into(&mut block, &stats::fold_top_bits(span, head_bits));
                }
                let total: u64 = block.iter().sum();
                let coded = stats::entropy_bits(&block)
                    + ESTIMATED_TABLE_BITS_PER_SYMBOL * stats::distinct(&block) as f64;
                coded.min((total * head_bits as u64) as f64)
            })
            .sum();
        heads + (elements * rest_bits as u64) as f64
    }

    fn best_head_bits(&self, kind: FloatKind) -> u32 {
        kind.head_bits_range()
            .min_by(|&a, &b| {
                self.estimate_bits(kind, a, ESTIMATE_BLOCK_SPANS)
                    .total_cmp(&self.estimate_bits(kind, b, ESTIMATE_BLOCK_SPANS))
            })
            .unwrap()
    }
}

/// Estimated cost of storing one used symbol in a code table.
const ESTIMATED_TABLE_BITS_PER_SYMBOL: f64 = 2.5;

fn head_histogram(split: &FieldSplit, block: &[u8]) -> Histogram {
    interleaved_histogram(split.kind, block, |element| split.head(element))
}

/// Histogram of `symbol(element)` over the elements of `bytes`. Four
/// sub-histograms, one per element of each quad, so runs of one symbol do
/// not serialise on a single counter.
fn interleaved_histogram(
    kind: FloatKind,
    bytes: &[u8],
    mut symbol: impl FnMut(u32) -> u32,
) -> Histogram {
    let mut counts = [[0u32; 256]; 4];
    let mut tail = [0u32; 256];
    let mut symbol_of = |element: u32| symbol(element);
    // The last few elements are counted after the quads, so the hot loop
    // is the only closure that calls `symbol` (measured: ~10 % faster).
    let mut tail_elements = Vec::with_capacity(3);
    kind.for_each_quad(
        bytes,
        #[inline(always)]
        |quad| {
            for (table, element) in counts.iter_mut().zip(quad) {
                table[symbol_of(element) as usize & 0xFF] += 1;
            }
        },
        |element| tail_elements.push(element),
    );
    for element in tail_elements {
        tail[symbol_of(element) as usize & 0xFF] += 1;
    }
    let mut histogram = [0u64; 256];
    for part in counts.iter().chain([&tail]) {
        for (total, &count) in histogram.iter_mut().zip(part) {
            *total += count as u64;
        }
    }
    histogram
}

enum BlockDecision {
    Raw,
    Constant(u8),
    Coded {
        lengths: Box<CodeLengths>,
        new_table: bool,
    },
}

impl BlockDecision {
    /// Bits of the head stream of a block with this histogram.
    fn stream_bits(&self, histogram: &Histogram, head_bits: u32) -> u64 {
        match self {
            BlockDecision::Constant(_) => 0,
            BlockDecision::Raw => histogram.iter().sum::<u64>() * head_bits as u64,
            BlockDecision::Coded { lengths, .. } => code_bits(histogram, lengths),
        }
    }
}

/// Chooses each block's storage in order; a block may reuse the code of the
/// most recent coded block when that is smaller than sending its own.
fn decide_blocks(histograms: &[Histogram], head_bits: u32) -> Vec<BlockDecision> {
    let mut decisions = Vec::with_capacity(histograms.len());
    let mut last_table: Option<Box<CodeLengths>> = None;
    for histogram in histograms {
        let elements: u64 = histogram.iter().sum();
        let used = stats::distinct(histogram);
        if used == 1 {
            let value = histogram.iter().position(|&c| c > 0).unwrap() as u8;
            decisions.push(BlockDecision::Constant(value));
            continue;
        }
        let raw_bits = elements * head_bits as u64;
        let own = Box::new(huffman::limited_code_lengths(histogram, MAX_CODE_BITS));
        let own_bits = code_bits(histogram, &own) + 8 * table::table_size(&own) as u64;
        let reuse_bits = last_table
            .as_deref()
            .filter(|last| covers(last, histogram))
            .map(|last| code_bits(histogram, last));
        let decision = match reuse_bits {
            Some(bits) if bits <= own_bits && bits <= raw_bits => BlockDecision::Coded {
                lengths: last_table.clone().unwrap(),
                new_table: false,
            },
            _ if own_bits <= raw_bits => {
                last_table = Some(own.clone());
                BlockDecision::Coded {
                    lengths: own,
                    new_table: true,
                }
            }
            _ => BlockDecision::Raw,
        };
        decisions.push(decision);
    }
    decisions
}

fn code_bits(histogram: &Histogram, lengths: &CodeLengths) -> u64 {
    histogram
        .iter()
        .zip(lengths)
        .map(|(&count, &len)| count * len as u64)
        .sum()
}

fn covers(lengths: &CodeLengths, histogram: &Histogram) -> bool {
    histogram
        .iter()
        .zip(lengths)
        .all(|(&count, &len)| count == 0 || len > 0)
}

/// One block to encode and the parts of the planes it fills, sized exactly.
struct BlockWork<'a> {
    block: &'a [u8],
    stream: &'a mut [u8],
    rest: &'a mut [u8],
    decision: &'a BlockDecision,
    stream_bits: u64,
}

/// Writes a block's head stream and rest bits; returns its index record.
fn encode_block(split: &FieldSplit, geometry: ChunkGeometry, work: BlockWork) -> Vec<u8> {
    let BlockWork {
        block,
        stream,
        rest,
        decision,
        stream_bits,
    } = work;
    let kind = split.kind;
    let mut record = Vec::new();
    match decision {
        BlockDecision::Constant(value) => {
            index::write_record(&BlockRecord::Constant(*value), &mut record);
        }
        BlockDecision::Raw => {
            let mut heads = BitWriter::new(stream);
            kind.for_each_element(
                block,
                #[inline(always)]
                |element| heads.put(split.head(element), split.head_bits),
            );
            assert_eq!(heads.finish(), stream_bits, "raw heads fill their stream");
            index::write_record(&BlockRecord::Raw, &mut record);
        }
        BlockDecision::Coded { lengths, new_table } => {
            let codes = huffman::canonical_codes(lengths);
            // Codeword and length in one entry: one load per element.
            let mut codewords = [0u32; 256];
            for (entry, (&code, &len)) in codewords.iter_mut().zip(codes.iter().zip(lengths.iter()))
            {
                *entry = code | (len as u32) << 16;
            }
            let chunk_bits = geometry.chunk_bits as u64;
            let mut heads = BitWriter::new(stream);
            // First codeword boundary at or after each chunk's beginning,
            // in a list sized up front so the loop makes no calls.
            let chunks = stream_bits.div_ceil(chunk_bits) as usize;
            let mut first_boundaries = vec![0u64; chunks];
            let mut chunk = 0;
            let mut next_chunk_begin = 0u64;
            let mut position = 0u64;
            kind.for_each_element(
                block,
                #[inline(always)]
                |element| {
                    let codeword = codewords[split.head(element) as usize & 0xFF];
                    let len = codeword >> 16;
                    // Codewords are shorter than chunks: at most one begins here.
                    if position >= next_chunk_begin {
                        first_boundaries[chunk] = position;
                        chunk += 1;
                        next_chunk_begin += chunk_bits;
                    }
                    heads.put(codeword & 0xFFFF, len);
                    position += len as u64;
                },
            );
            // The histogram the code was sized from counted these elements.
            assert_eq!(heads.finish(), stream_bits, "coded heads fill their stream");
            first_boundaries[chunk..].fill(stream_bits);
            let stream: &[u8] = stream;
            let exceptions =
                sync_exceptions(geometry, stream, stream_bits, lengths, &first_boundaries);
            let coded = BlockRecord::Coded {
                new_table: new_table.then_some(&**lengths),
                stream_bits,
                exceptions: &exceptions,
            };
            index::write_record(&coded, &mut record);
        }
    }
    pack_rest(split, block, rest);
    record
}

/// Packs the stored rest bits of a block's elements LSB-first into `rest`,
/// which holds exactly them. Whole-byte widths are written byte by byte.
fn pack_rest(split: &FieldSplit, block: &[u8], rest: &mut [u8]) {
    let kind = split.kind;
    let bits = split.stored_rest_bits();
    let stored = |element: u32| split.full_rest(element) >> split.rest_const_bits;
    match bits {
        0 => {}
        8 => {
            let mut out = rest.iter_mut();
            kind.for_each_element(
                block,
                #[inline(always)]
                |element| *out.next().unwrap() = stored(element) as u8,
            );
        }
        16 | 24 => {
            let width = bits as usize / 8;
            let mut out = rest.chunks_exact_mut(width);
            kind.for_each_element(
                block,
                #[inline(always)]
                |element| {
                    out.next()
                        .unwrap()
                        .copy_from_slice(&stored(element).to_le_bytes()[..width])
                },
            );
        }
        1..8 => {
            // Eight fields of fewer than 8 bits fill `bits` whole bytes: a
            // fixed group of eight per step, no per-element state.
            let width = kind.width_bytes();
            let groups = block.chunks_exact(8 * width);
            let tail = groups.remainder();
            let mut out = rest.chunks_mut(bits as usize);
            for (group, out) in groups.zip(&mut out) {
                out.copy_from_slice(
                    &pack_group(group, 8, width, bits, &stored).to_le_bytes()[..bits as usize],
                );
            }
            if let Some(out) = out.next() {
                let len = out.len();
                out.copy_from_slice(
                    &pack_group(tail, tail.len() / width, width, bits, &stored).to_le_bytes()
                        [..len],
                );
            }
        }
        _ => {
            let mut writer = BitWriter::new(rest);
            kind.for_each_element(
                block,
                #[inline(always)]
                |element| writer.put(stored(element), bits),
            );
            writer.finish();
        }
    }
}

/// `count` (≤ 8) fields of `bits` < 8 bits from the first elements of
/// `elements`, packed LSB-first into one word.
#[inline(always)]
fn pack_group(
    elements: &[u8],
    count: usize,
    width: usize,
    bits: u32,
    stored: &impl Fn(u32) -> u32,
) -> u64 {
    let mut group = 0u64;
    for i in 0..count {
        let element = match width {
            1 => elements[i] as u32,
            2 => u16::from_le_bytes([elements[2 * i], elements[2 * i + 1]]) as u32,
            _ => u32::from_le_bytes(elements[4 * i..4 * i + 4].try_into().unwrap()),
        };
        group |= (stored(element) as u64) << (i as u32 * bits);
    }
    group
}

/// Replays the chunk decoders' warm-up (see [`super::sync`]) and lists the
/// chunks where it would land off the true codeword boundary.
fn sync_exceptions(
    geometry: ChunkGeometry,
    stream: &[u8],
    stream_bits: u64,
    lengths: &CodeLengths,
    first_boundaries: &[u64],
) -> Vec<ChunkException> {
    let max_len = huffman::validate_lengths(lengths).expect("encoder builds complete codes");
    let table = DecodeTable::new(lengths, max_len);
    let mut exceptions = Vec::new();
    for (chunk, &boundary) in first_boundaries.iter().enumerate().skip(1) {
        let landing = geometry.warmup_landing(stream, stream_bits, &table, chunk as u64);
        if landing != boundary {
            let chunk_begin = chunk as u64 * geometry.chunk_bits as u64;
            exceptions.push(ChunkException {
                chunk: chunk as u32,
                first_boundary: (boundary - chunk_begin) as u8,
            });
        }
    }
    exceptions
}
