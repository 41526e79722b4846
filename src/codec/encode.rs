//! The encoder: one tensor of floats into head stream, rest plane and block
//! index.
//!
//! 1. *Survey* the tensor once: a histogram of the top 9 bits of every
//!    element (sign included) per span of 16K elements, and which bits never
//!    vary.
//! 2. *Choose* the layout (sign in the head or not) and the head width by
//!    estimated size.
//! 3. *Decide* per block, in order: constant, raw, a new code, or the previous
//!    block's code — whichever is smallest with its table counted in.
//! 4. *Write* every block's stream, sync exceptions and rest bits in parallel.

use rayon::prelude::*;

use super::bits::BitWriter;
use super::float::{ElementCut, FieldSplit, FloatKind, MAX_HEAD_BITS, width_mask};
use super::huffman::{self, ALPHABET, DecodeTable, MAX_CODE_BITS};
use super::index::{self, BlockRecord, ChunkException};
use super::stats::{self, Histogram};
use super::sync::ChunkGeometry;
use super::table::{self, CodeLengths};
use super::{
    CHUNK_BITS_UNIT, CodecError, EncodedTensor, MAX_CHUNK_BITS, MAX_ELEMENTS, MAX_UNIT_CHUNK_BITS,
    TensorParams,
};

#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// Elements per block, a power of two. Each block has its own code
    /// (or reuses the previous one) and decodes on its own.
    pub block_elements: u32,
    /// Head width in bits; `None` chooses by estimated size.
    pub head_bits: Option<u32>,
    /// Whether the sign is coded in the head; `None` chooses by estimated
    /// size.
    pub sign_in_head: Option<bool>,
    /// Chunk length in bits (a power of two, or a multiple of 64 up to
    /// 14,336); `None` fits it to the tensor (see [`fitted_chunk_bits`]).
    pub chunk_bits: Option<u32>,
    pub warmup_bits: u32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            block_elements: 1 << 16,
            head_bits: None,
            sign_in_head: None,
            chunk_bits: None,
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
    let mut split = survey.best_split(kind, options)?;
    let head_bits = split.head_bits;
    (split.rest_const_bits, split.rest_const_value) = survey.constant_rest_bits(&split);
    let block_elements = options.block_elements;
    let mut params = TensorParams {
        split,
        elements,
        block_elements,
        geometry: ChunkGeometry {
            // A fitted length is known only once the blocks are decided
            // (below); the shortest one it can be stands in until then.
            chunk_bits: options.chunk_bits.unwrap_or(MIN_FITTED_CHUNK_BITS),
            warmup_bits: options.warmup_bits,
        },
    };
    params.validate()?;

    let block_bytes = block_elements as usize * width;
    let histograms: Vec<Histogram> = if (block_elements as usize).is_multiple_of(SURVEY_SPAN) {
        // Blocks are whole survey spans: fold their histograms.
        let heads = survey_heads(&split);
        survey
            .spans
            .chunks(block_elements as usize / SURVEY_SPAN)
            .map(|spans| fold_spans(spans, &heads))
            .collect()
    } else {
        map_chunks(bytes, block_bytes, |_, block| head_histogram(&split, block))
    };
    let decisions = decide_blocks(&histograms, head_bits, params.alphabet());
    if options.chunk_bits.is_none() {
        let longest_stream = histograms
            .iter()
            .zip(&decisions)
            .filter(|(_, decision)| matches!(decision, BlockDecision::Coded { .. }))
            .map(|(histogram, decision)| decision.stream_bits(histogram, head_bits))
            .max()
            .unwrap_or(0);
        params.geometry.chunk_bits = fitted_chunk_bits(longest_stream);
    }

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
            .map(|work| encode_block(&params, work))
            .collect()
    } else {
        work.into_iter()
            .map(|work| encode_block(&params, work))
            .collect()
    };
    Ok(EncodedTensor {
        params,
        head,
        rest,
        index: records.concat(),
    })
}

/// The shortest chunk [`fitted_chunk_bits`] chooses: shorter ones cost
/// more in warm-up decoding and sync exceptions than they gain.
pub const MIN_FITTED_CHUNK_BITS: u32 = 512;

/// The chunk length fitted to a tensor whose longest coded block stream
/// is `longest_stream` bits: the shortest multiple of 64 bits (at least
/// [`MIN_FITTED_CHUNK_BITS`]) that cuts it into at most one chunk per
/// thread of a GPU workgroup, so that every block decodes in one round
/// with its threads nearly all busy. Past what a header stores as 64-bit
/// units, the next power of two.
pub fn fitted_chunk_bits(longest_stream: u64) -> u32 {
    let threads = crate::backend::gpu::layout::WORKGROUP_SIZE as u64;
    let unit = CHUNK_BITS_UNIT as u64;
    let fitted = (longest_stream.div_ceil(threads * unit) * unit).max(MIN_FITTED_CHUNK_BITS as u64);
    if fitted <= MAX_UNIT_CHUNK_BITS as u64 {
        fitted as u32
    } else {
        fitted.next_power_of_two().min(MAX_CHUNK_BITS as u64) as u32
    }
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

/// Histogram of survey keys (see [`Survey`]) over one span: counts of at
/// most `SURVEY_SPAN` fit 32 bits, which halves the survey's memory.
type SpanHistogram = [u32; ALPHABET];

/// What one pass over the tensor learns.
///
/// Every element's *survey key* is its top `MAX_HEAD_BITS` bits (all of an
/// FP8 element). Every head the format allows is a function of the key:
/// a sign-first head is its top bits, an exponent-first head the bits below
/// its sign (or, FP8, the key rotated). So one histogram of keys per span
/// gives every candidate head's histogram by folding.
struct Survey {
    /// Histogram of survey keys per span of `SURVEY_SPAN` elements.
    spans: Vec<SpanHistogram>,
    /// AND and OR of all elements: where they agree, a bit never varies.
    and: u32,
    or: u32,
}

/// Bits of a survey key.
fn key_bits(kind: FloatKind) -> u32 {
    MAX_HEAD_BITS.min(kind.width_bits())
}

/// The AND and the OR of the elements of `bytes`, a word of several
/// elements at a time (which vectorises), then lane by lane.
fn and_or(kind: FloatKind, bytes: &[u8]) -> (u32, u32) {
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    let (word_and, word_or) = words.fold((u64::MAX, 0u64), |(and, or), word| {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        (and & word, or | word)
    });
    let width = kind.width_bits();
    let (mut and, mut or) = (u32::MAX, 0u32);
    for lane in 0..64 / width {
        and &= (word_and >> (lane * width)) as u32 & width_mask(width);
        or |= (word_or >> (lane * width)) as u32 & width_mask(width);
    }
    kind.for_each_element(tail, |element| {
        and &= element;
        or |= element;
    });
    (and, or)
}

/// The head of every survey key under `split`.
fn survey_heads(split: &FieldSplit) -> Vec<u16> {
    let shift = split.kind.width_bits() - key_bits(split.kind);
    (0..1u32 << key_bits(split.kind))
        .map(|key| split.head(key << shift) as u16)
        .collect()
}

/// The histogram of heads over `spans`, given the head of each survey key.
fn fold_spans(spans: &[SpanHistogram], heads: &[u16]) -> Histogram {
    let mut histogram = [0u64; ALPHABET];
    for span in spans {
        for (&head, &count) in heads.iter().zip(span) {
            histogram[head as usize] += count as u64;
        }
    }
    histogram
}

impl Survey {
    fn take(kind: FloatKind, bytes: &[u8]) -> Self {
        let width = kind.width_bytes();
        let key_shift = kind.width_bits() - key_bits(kind);
        let parts = map_chunks(bytes, SURVEY_SPAN * width, |_, span| {
            let histogram = interleaved_histogram(kind, span, |element| element >> key_shift);
            let (and, or) = if key_shift == 0 {
                // The keys are the elements: their AND and OR are the
                // keys that occur's.
                (0u32..)
                    .zip(&histogram)
                    .filter(|&(_, &count)| count > 0)
                    .fold((u32::MAX, 0), |(and, or), (key, _)| (and & key, or | key))
            } else {
                and_or(kind, span)
            };
            (histogram.map(|count| count as u32), and, or)
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

    /// Estimated stored bits of `split` over blocks with the key histograms
    /// `blocks`: the ideal code length per block, a table per block, and
    /// the rest bits.
    fn estimate_bits(&self, split: &FieldSplit, blocks: &[Histogram]) -> f64 {
        let elements: u64 = blocks.iter().flatten().sum();
        let rest_bits = split.rest_bits() - self.constant_rest_bits(split).0;
        let heads = survey_heads(split);
        let head_bits: f64 = blocks
            .iter()
            .map(|keys| {
                let mut block = [0u64; ALPHABET];
                for (&head, &count) in heads.iter().zip(keys) {
                    block[head as usize] += count;
                }
                let total: u64 = block.iter().sum();
                let coded = stats::entropy_bits(&block)
                    + ESTIMATED_TABLE_BITS_PER_SYMBOL * stats::distinct(&block) as f64;
                coded.min((total * split.head_bits as u64) as f64)
            })
            .sum();
        head_bits + (elements * rest_bits as u64) as f64
    }

    /// The split of smallest estimated size among those `options` allow;
    /// exponent first and narrower heads win ties.
    fn best_split(
        &self,
        kind: FloatKind,
        options: &EncodeOptions,
    ) -> Result<FieldSplit, CodecError> {
        let layouts = match options.sign_in_head {
            Some(sign_in_head) => vec![sign_in_head],
            None => vec![false, true],
        };
        let candidates: Vec<FieldSplit> = layouts
            .into_iter()
            .flat_map(|sign_in_head| {
                kind.head_bits_range(sign_in_head)
                    .filter(|bits| options.head_bits.is_none_or(|wanted| wanted == *bits))
                    .map(move |head_bits| FieldSplit {
                        kind,
                        sign_in_head,
                        head_bits,
                        rest_const_bits: 0,
                        rest_const_value: 0,
                    })
            })
            .collect();
        if candidates.len() <= 1 {
            return candidates.into_iter().next().ok_or_else(|| {
                CodecError::InvalidParameters(format!(
                    "no {kind} head of {:?} bits with the sign {}",
                    options.head_bits,
                    match options.sign_in_head {
                        Some(true) => "in the head",
                        _ => "raw",
                    }
                ))
            });
        }
        let blocks: Vec<Histogram> = self
            .spans
            .chunks(ESTIMATE_BLOCK_SPANS)
            .map(|spans| {
                let mut keys = [0u64; ALPHABET];
                for span in spans {
                    for (total, &count) in keys.iter_mut().zip(span) {
                        *total += count as u64;
                    }
                }
                keys
            })
            .collect();
        let elements: u64 = blocks.iter().flatten().sum();
        // A sign-first head must win by a margin: the estimate is not
        // exact, and where the sign is a fair coin both layouts estimate
        // alike, while exponent-first rests join faster.
        let estimates: Vec<f64> = candidates
            .par_iter()
            .map(|split| {
                let margin = if split.sign_in_head {
                    SIGN_FIRST_MARGIN_BITS * elements as f64
                } else {
                    0.0
                };
                self.estimate_bits(split, &blocks) + margin
            })
            .collect();
        let best = (0..candidates.len())
            .min_by(|&a, &b| estimates[a].total_cmp(&estimates[b]))
            .expect("at least two candidates");
        Ok(candidates[best])
    }
}

/// Bits per element a sign-first head must save, by estimate, over the
/// best exponent-first one: about 0.1 % of a 16-bit element. A sign that
/// carries a bit saves nothing; the skewed signs this layout is for save
/// tenths of a bit.
const SIGN_FIRST_MARGIN_BITS: f64 = 0.02;

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
    let mut counts = [[0u32; ALPHABET]; 4];
    let mut tail = [0u32; ALPHABET];
    let mut symbol_of = |element: u32| symbol(element);
    // The last few elements are counted after the quads, so the hot loop
    // is the only closure that calls `symbol` (measured: ~10 % faster).
    let mut tail_elements = Vec::with_capacity(3);
    kind.for_each_quad(
        bytes,
        #[inline(always)]
        |quad| {
            for (table, element) in counts.iter_mut().zip(quad) {
                table[symbol_of(element) as usize & (ALPHABET - 1)] += 1;
            }
        },
        |element| tail_elements.push(element),
    );
    for element in tail_elements {
        tail[symbol_of(element) as usize & (ALPHABET - 1)] += 1;
    }
    let mut histogram = [0u64; ALPHABET];
    for part in counts.iter().chain([&tail]) {
        for (total, &count) in histogram.iter_mut().zip(part) {
            *total += count as u64;
        }
    }
    histogram
}

enum BlockDecision {
    Raw,
    Constant(u16),
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
fn decide_blocks(histograms: &[Histogram], head_bits: u32, alphabet: usize) -> Vec<BlockDecision> {
    // Each block's own code, in parallel; only the choice between it and
    // the last block's depends on the blocks before.
    let own_code = |histogram: &Histogram| {
        (stats::distinct(histogram) > 1).then(|| {
            let own = Box::new(huffman::limited_code_lengths(histogram, MAX_CODE_BITS));
            let bits = code_bits(histogram, &own) + 8 * table::table_size(&own, alphabet) as u64;
            (own, bits)
        })
    };
    let own_codes: Vec<Option<(Box<CodeLengths>, u64)>> = if histograms.len() > 1 {
        histograms.par_iter().map(own_code).collect()
    } else {
        histograms.iter().map(own_code).collect()
    };
    let mut decisions = Vec::with_capacity(histograms.len());
    let mut last_table: Option<Box<CodeLengths>> = None;
    for (histogram, own_code) in histograms.iter().zip(own_codes) {
        let elements: u64 = histogram.iter().sum();
        let Some((own, own_bits)) = own_code else {
            let value = histogram.iter().position(|&c| c > 0).unwrap() as u16;
            decisions.push(BlockDecision::Constant(value));
            continue;
        };
        let raw_bits = elements * head_bits as u64;
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

/// Calls `visit(parts, n)` with the (head, stored rest) of every four
/// elements of `block` (`n` = 4), then once with the last `n` < 4 (if
/// any), with the split resolved once: FP8 elements through a 256-entry
/// table, wider ones through an [`ElementCut`].
#[inline(always)]
fn for_each_split(split: &FieldSplit, block: &[u8], mut visit: impl FnMut([(u32, u32); 4], usize)) {
    let kind = split.kind;
    // The last elements (fewer than four), padded to a quad.
    let mut last = [(0u32, 0u32); 4];
    let mut count = 0;
    let mut keep = |part| {
        last[count] = part;
        count += 1;
    };
    match split.cut() {
        Some(cut) if kind.width_bytes() > 1 => kind.for_each_quad(
            block,
            #[inline(always)]
            |[a, b, c, d]| visit([cut.split(a), cut.split(b), cut.split(c), cut.split(d)], 4),
            |element| keep(cut.split(element)),
        ),
        _ => {
            let parts: [(u32, u32); 256] = std::array::from_fn(|byte| split.split(byte as u32));
            let quads = block.chunks_exact(4);
            quads
                .remainder()
                .iter()
                .for_each(|&byte| keep(parts[byte as usize]));
            for quad in quads {
                let part = |i: usize| parts[quad[i] as usize];
                visit([part(0), part(1), part(2), part(3)], 4);
            }
        }
    }
    if count > 0 {
        visit(last, count);
    }
}

/// Codes a block's heads, up to four at a time, and notes the first
/// codeword boundary at or after each chunk's beginning.
struct QuadCoder<'a> {
    /// `codeword | length << 16` of each head symbol.
    codewords: &'a [u32; ALPHABET],
    position: u64,
    /// The next chunk, and where it begins.
    chunk: usize,
    next_chunk_begin: u64,
    chunk_bits: u64,
    /// Sized up front, so the loop makes no calls.
    first_boundaries: Vec<u64>,
}

impl QuadCoder<'_> {
    /// Writes the codewords of the first `count` heads of `parts`, joined
    /// into one field first, so that the writer's running bit count is one
    /// addition per quad, not a chain of four. Four codewords take at most
    /// 48 bits, less than a chunk: at most one chunk begins among them.
    #[inline(always)]
    fn code(&mut self, heads: &mut BitWriter, parts: &[(u32, u32); 4], count: usize) {
        let mut joined = 0u64;
        let mut starts = [0u32; 4];
        let mut bits = 0u32;
        for (k, &(head, _)) in parts[..count].iter().enumerate() {
            let codeword = self.codewords[head as usize & (ALPHABET - 1)];
            starts[k] = bits;
            joined |= ((codeword & 0xFFFF) as u64) << bits;
            bits += codeword >> 16;
        }
        let end = self.position + bits as u64;
        if end > self.next_chunk_begin {
            let first = starts[..count]
                .iter()
                .map(|&start| self.position + start as u64)
                .find(|&start| start >= self.next_chunk_begin);
            if let Some(start) = first {
                self.first_boundaries[self.chunk] = start;
                self.chunk += 1;
                self.next_chunk_begin += self.chunk_bits;
            }
        }
        heads.push_wide(joined, bits);
        heads.flush();
        self.position = end;
    }
}

/// Writes the first `count` stored rests of `parts`, `bits` bits each:
/// four pushes per flush when four fit the accumulator, else two.
#[inline(always)]
fn put_rests(rests: &mut BitWriter, parts: &[(u32, u32); 4], count: usize, bits: u32) {
    if bits <= 14 {
        for &(_, rest) in &parts[..count] {
            rests.push(rest, bits);
        }
        rests.flush();
    } else {
        // Two rests of at most 24 bits fit the accumulator.
        for pair in parts[..count].chunks(2) {
            for &(_, rest) in pair {
                rests.push(rest, bits);
            }
            rests.flush();
        }
    }
}

/// Stores the rests of `block`'s elements, each of whole bytes, in `out`,
/// which holds exactly them.
fn write_byte_rests(cut: ElementCut, kind: FloatKind, block: &[u8], out: &mut [u8]) {
    let rest_bytes = out.len() / (block.len() / kind.width_bytes()).max(1);
    match (kind.width_bytes(), rest_bytes) {
        (2, 1) => store_rests::<2, 1>(cut, block, out),
        (4, 1) => store_rests::<4, 1>(cut, block, out),
        (4, 2) => store_rests::<4, 2>(cut, block, out),
        (4, 3) => store_rests::<4, 3>(cut, block, out),
        (width, rest_bytes) => unreachable!("{rest_bytes}-byte rests of {width}-byte elements"),
    }
}

/// [`write_byte_rests`] for `WIDTH`-byte elements and `REST`-byte rests:
/// fixed sizes, so the loop vectorises.
#[inline(always)]
fn store_rests<const WIDTH: usize, const REST: usize>(
    cut: ElementCut,
    block: &[u8],
    out: &mut [u8],
) {
    let (elements, _) = block.as_chunks::<WIDTH>();
    let (rests, _) = out.as_chunks_mut::<REST>();
    for (rest, element) in rests.iter_mut().zip(elements) {
        let mut word = [0u8; 4];
        word[..WIDTH].copy_from_slice(element);
        let stored = cut.split(u32::from_le_bytes(word)).1;
        rest.copy_from_slice(&stored.to_le_bytes()[..REST]);
    }
}

/// Writes a block's head stream and rest bits, heads and rests in one pass
/// over the elements, straight into their parts of the planes; returns the
/// block's index record.
fn encode_block(params: &TensorParams, work: BlockWork) -> Vec<u8> {
    let BlockWork {
        block,
        stream,
        rest,
        decision,
        stream_bits,
    } = work;
    let mut heads = BitWriter::new(stream);
    let mut rests = BitWriter::new(rest);
    let (split, geometry, alphabet) = (&params.split, params.geometry, params.alphabet());
    let rest_bits = split.stored_rest_bits();
    let mut record = Vec::new();
    match decision {
        BlockDecision::Constant(value) => {
            for_each_split(
                split,
                block,
                #[inline(always)]
                |parts, count| put_rests(&mut rests, &parts, count, rest_bits),
            );
            index::write_record(&BlockRecord::Constant(*value), alphabet, &mut record);
        }
        BlockDecision::Raw => {
            let head_bits = split.head_bits;
            for_each_split(
                split,
                block,
                #[inline(always)]
                |parts, count| {
                    for &(head, rest) in &parts[..count] {
                        heads.put(head, head_bits);
                        rests.put(rest, rest_bits);
                    }
                },
            );
            index::write_record(&BlockRecord::Raw, alphabet, &mut record);
        }
        BlockDecision::Coded { lengths, new_table } => {
            let codes = huffman::canonical_codes(lengths);
            // Codeword and length in one entry: one load per element.
            let mut codewords = [0u32; ALPHABET];
            for (entry, (&code, &len)) in codewords.iter_mut().zip(codes.iter().zip(lengths.iter()))
            {
                *entry = code | (len as u32) << 16;
            }
            let chunk_bits = geometry.chunk_bits as u64;
            let mut coder = QuadCoder {
                codewords: &codewords,
                position: 0,
                chunk: 0,
                next_chunk_begin: 0,
                chunk_bits,
                first_boundaries: vec![0u64; stream_bits.div_ceil(chunk_bits) as usize],
            };
            // Rests of whole bytes are stored by a loop of their own, which
            // vectorises; narrower ones are packed in the same pass.
            let byte_rests = split
                .cut()
                .filter(|_| rest_bits > 0 && rest_bits % 8 == 0 && split.kind.width_bytes() > 1);
            match byte_rests {
                Some(cut) => {
                    for_each_split(
                        split,
                        block,
                        #[inline(always)]
                        |parts, count| coder.code(&mut heads, &parts, count),
                    );
                    let elements = block.len() / split.kind.width_bytes();
                    let out = rests.whole_bytes(elements * rest_bits as usize / 8);
                    write_byte_rests(cut, split.kind, block, out);
                }
                None => for_each_split(
                    split,
                    block,
                    #[inline(always)]
                    |parts, count| {
                        coder.code(&mut heads, &parts, count);
                        put_rests(&mut rests, &parts, count, rest_bits);
                    },
                ),
            }
            let QuadCoder {
                chunk,
                mut first_boundaries,
                ..
            } = coder;
            first_boundaries[chunk..].fill(stream_bits);
            // The histogram the code was sized from counted these elements.
            assert_eq!(
                heads.bit_len(),
                stream_bits,
                "coded heads fill their stream"
            );
            let exceptions = sync_exceptions(
                geometry,
                heads.written(),
                stream_bits,
                lengths,
                &first_boundaries,
            );
            let coded = BlockRecord::Coded {
                new_table: new_table.then_some(&**lengths),
                stream_bits,
                exceptions: &exceptions,
            };
            index::write_record(&coded, alphabet, &mut record);
        }
    }
    assert_eq!(heads.finish(), stream_bits, "heads fill their stream");
    rests.finish();
    record
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
