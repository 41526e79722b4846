//! The codec: one tensor of floats in, a coded head stream, a raw rest plane
//! and a block index out — and back, bit for bit.
//!
//! * [`float`] cuts elements into head (exponent first) and rest.
//! * [`huffman`] builds the length-limited canonical codes.
//! * [`encode`](mod@encode) chooses the split, the per-block codes and the sync metadata.
//! * [`index`] reads and validates the block index of untrusted input.
//! * [`sync`] defines where each chunk's decoder starts (CPU and GPU alike).
//! * [`decode`](mod@decode) is the CPU decoder, the oracle every backend is held to.
//!
//! The codec knows nothing of files or devices. `docs/FORMAT.md` specifies
//! every byte it produces.

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod bits;
pub mod decode;
pub mod encode;
pub mod float;
pub mod huffman;
pub mod index;
pub mod stats;
pub mod sync;
pub mod table;

pub use decode::{decode, decode_blocks};
pub use encode::{EncodeOptions, encode};
pub use float::{FieldSplit, FloatKind};
pub use index::{BlockIndex, BlockMode};
pub use sync::{ChunkGeometry, StreamProblem};

use thiserror::Error;

/// What can be wrong with coded data. The container adds the file and
/// tensor names.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("invalid code table: {0}")]
    InvalidTable(String),
    #[error("invalid block index: {0}")]
    InvalidIndex(String),
    #[error("invalid tensor parameters: {0}")]
    InvalidParameters(String),
    #[error("corrupt coded stream in block {block}: {problem}")]
    CorruptStream {
        block: usize,
        problem: StreamProblem,
    },
    #[error("{0}")]
    LengthMismatch(String),
}

/// Everything about a coded tensor that is not a byte plane: the parameters
/// stored in the container's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorParams {
    pub split: FieldSplit,
    pub elements: u64,
    /// Elements per block; every block but the last holds exactly this many.
    pub block_elements: u32,
    pub geometry: ChunkGeometry,
}

impl TensorParams {
    pub fn kind(&self) -> FloatKind {
        self.split.kind
    }

    pub fn block_count(&self) -> u64 {
        self.elements.div_ceil(self.block_elements as u64)
    }

    pub(crate) fn block_len(&self, block: u64) -> u64 {
        let start = block * self.block_elements as u64;
        (self.elements - start).min(self.block_elements as u64)
    }

    pub fn decoded_bytes(&self) -> u64 {
        self.elements * self.kind().width_bytes() as u64
    }

    /// Decoded bytes of the blocks in `blocks`.
    pub(crate) fn block_range_bytes(&self, blocks: std::ops::Range<usize>) -> u64 {
        let first = (blocks.start as u64 * self.block_elements as u64).min(self.elements);
        let end = (blocks.end as u64 * self.block_elements as u64).min(self.elements);
        (end - first) * self.kind().width_bytes() as u64
    }

    /// Exact byte length of the rest plane.
    pub(crate) fn rest_bytes(&self) -> u64 {
        (self.elements * self.split.stored_rest_bits() as u64).div_ceil(8)
    }

    /// Alphabet of head symbols: 2^head_bits.
    pub fn alphabet(&self) -> usize {
        1 << self.split.head_bits
    }

    /// Rejects parameters no encoder produces and no decoder must accept.
    pub fn validate(&self) -> Result<(), CodecError> {
        let bad = |msg: String| Err(CodecError::InvalidParameters(msg));
        let kind = self.kind();
        let split = &self.split;
        let range = kind.head_bits_range(split.sign_in_head);
        if !range.contains(&split.head_bits) {
            let layout = if split.sign_in_head {
                "sign-first"
            } else {
                "exponent-first"
            };
            return bad(format!(
                "head_bits {} is outside {range:?} for {layout} {kind}",
                split.head_bits,
            ));
        }
        if split.rest_const_bits > split.rest_bits() {
            return bad(format!(
                "rest_const_bits {} exceeds the {} rest bits",
                split.rest_const_bits,
                split.rest_bits()
            ));
        }
        if split.rest_const_value >> split.rest_const_bits != 0 {
            return bad(format!(
                "rest_const_value {:#x} does not fit in {} bits",
                split.rest_const_value, split.rest_const_bits
            ));
        }
        if !self.block_elements.is_power_of_two()
            || !(MIN_BLOCK_ELEMENTS..=MAX_BLOCK_ELEMENTS).contains(&self.block_elements)
        {
            return bad(format!(
                "block_elements {} is not a power of two in {MIN_BLOCK_ELEMENTS}..={MAX_BLOCK_ELEMENTS}",
                self.block_elements
            ));
        }
        let geometry = self.geometry;
        if chunk_code(geometry.chunk_bits).is_none() {
            return bad(format!(
                "chunk_bits {} is neither a power of two in {MIN_CHUNK_BITS}..={MAX_CHUNK_BITS} \
                 nor a multiple of {CHUNK_BITS_UNIT} up to {MAX_UNIT_CHUNK_BITS}",
                geometry.chunk_bits
            ));
        }
        if geometry.warmup_bits > MAX_WARMUP_BITS {
            return bad(format!(
                "warmup_bits {} exceeds {MAX_WARMUP_BITS}",
                geometry.warmup_bits
            ));
        }
        if self.elements > MAX_ELEMENTS {
            return bad(format!(
                "{} elements exceed the limit of {MAX_ELEMENTS}",
                self.elements
            ));
        }
        Ok(())
    }
}

pub const MIN_BLOCK_ELEMENTS: u32 = 1 << 10;
pub const MAX_BLOCK_ELEMENTS: u32 = 1 << 20;
pub const MIN_CHUNK_BITS: u32 = 1 << 6;
pub const MAX_CHUNK_BITS: u32 = 1 << 16;
/// A chunk length that is not a power of two is a multiple of this many
/// bits, up to [`MAX_UNIT_CHUNK_BITS`].
pub const CHUNK_BITS_UNIT: u32 = 64;
pub const MAX_UNIT_CHUNK_BITS: u32 = CHUNK_BITS_UNIT * (u8::MAX as u32 - FIRST_UNIT_CHUNK_CODE + 1);
/// The first chunk code that counts units rather than a power of two.
const FIRST_UNIT_CHUNK_CODE: u32 = 32;
pub const MAX_WARMUP_BITS: u32 = 1 << 12;
/// 2^48 elements: far beyond any tensor, small enough that no byte or bit
/// count derived from it overflows a u64.
pub const MAX_ELEMENTS: u64 = 1 << 48;

/// The byte that stores a chunk length in a coded tensor's header: its
/// log2 for a power of two in [`MIN_CHUNK_BITS`]..=[`MAX_CHUNK_BITS`] (as in
/// version 1), else 31 + the number of 64-bit units; `None` for a length
/// neither can store.
pub fn chunk_code(chunk_bits: u32) -> Option<u8> {
    if chunk_bits.is_power_of_two() && (MIN_CHUNK_BITS..=MAX_CHUNK_BITS).contains(&chunk_bits) {
        return Some(chunk_bits.trailing_zeros() as u8);
    }
    let units = chunk_bits / CHUNK_BITS_UNIT;
    (chunk_bits.is_multiple_of(CHUNK_BITS_UNIT) && chunk_bits <= MAX_UNIT_CHUNK_BITS && units > 0)
        .then(|| (FIRST_UNIT_CHUNK_CODE - 1 + units) as u8)
}

/// The chunk length a chunk code stores (see [`chunk_code`]).
pub fn chunk_bits_of_code(code: u8) -> Option<u32> {
    let code = code as u32;
    let chunk_bits = if code >= FIRST_UNIT_CHUNK_CODE {
        (code - (FIRST_UNIT_CHUNK_CODE - 1)) * CHUNK_BITS_UNIT
    } else {
        1u32.checked_shl(code)?
    };
    (chunk_code(chunk_bits) == Some(code as u8)).then_some(chunk_bits)
}

/// A coded tensor: parameters plus its three byte planes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedTensor {
    pub params: TensorParams,
    /// Concatenated head streams of all blocks, each starting on a byte.
    pub head: Vec<u8>,
    /// Rest values, `stored_rest_bits` each, LSB-first.
    pub rest: Vec<u8>,
    /// Per-block modes, tables, stream lengths and sync exceptions.
    pub index: Vec<u8>,
}

impl EncodedTensor {
    pub fn stored_bytes(&self) -> u64 {
        (self.head.len() + self.rest.len() + self.index.len()) as u64
    }
}

/// Borrowed byte planes of a coded tensor, as read from a file.
#[derive(Clone, Copy, Debug)]
pub struct EncodedView<'a> {
    pub params: &'a TensorParams,
    pub head: &'a [u8],
    pub rest: &'a [u8],
    pub index: &'a [u8],
}

impl EncodedTensor {
    pub fn view(&self) -> EncodedView<'_> {
        EncodedView {
            params: &self.params,
            head: &self.head,
            rest: &self.rest,
            index: &self.index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> TensorParams {
        TensorParams {
            split: FieldSplit {
                kind: FloatKind::Bf16,
                sign_in_head: false,
                head_bits: 8,
                rest_const_bits: 2,
                rest_const_value: 0b11,
            },
            elements: 1000,
            block_elements: 1 << 16,
            geometry: ChunkGeometry {
                chunk_bits: 1024,
                warmup_bits: 64,
            },
        }
    }

    #[test]
    fn every_chunk_length_has_one_code() {
        let mut lengths = 0;
        for code in 0..=u8::MAX {
            if let Some(chunk_bits) = chunk_bits_of_code(code) {
                assert_eq!(chunk_code(chunk_bits), Some(code), "{chunk_bits} bits");
                lengths += 1;
            }
        }
        // 11 powers of two and 224 multiples of 64 less the 8 of them that
        // are powers of two.
        assert_eq!(lengths, 11 + 224 - 8);
        assert_eq!(chunk_code(1024), Some(10));
        assert_eq!(chunk_code(704), Some(31 + 11));
        assert_eq!(chunk_code(MAX_UNIT_CHUNK_BITS + 64), None);
        assert_eq!(chunk_code(1000), None);
    }

    /// Every limit of the format, just inside (accepted) and just outside
    /// (refused), one field at a time.
    #[test]
    fn validate_accepts_the_limits_and_refuses_one_past_them() {
        type Change = fn(&mut TensorParams);
        let accepted: [(&str, Change); 9] = [
            ("as encoded", |_| {}),
            ("sign first", |p| {
                p.split.sign_in_head = true;
                p.split.head_bits = 9;
            }),
            ("smallest blocks", |p| p.block_elements = MIN_BLOCK_ELEMENTS),
            ("largest blocks", |p| p.block_elements = MAX_BLOCK_ELEMENTS),
            ("shortest chunks", |p| {
                p.geometry.chunk_bits = MIN_CHUNK_BITS
            }),
            ("longest chunks", |p| p.geometry.chunk_bits = MAX_CHUNK_BITS),
            ("chunks of a multiple of 64 bits", |p| {
                p.geometry.chunk_bits = 704
            }),
            ("longest warm-up", |p| {
                p.geometry.warmup_bits = MAX_WARMUP_BITS
            }),
            ("most elements", |p| p.elements = MAX_ELEMENTS),
        ];
        for (what, change) in accepted {
            let mut params = valid();
            change(&mut params);
            assert_eq!(params.validate(), Ok(()), "{what}");
        }
        let refused: [(&str, Change); 14] = [
            ("head narrower than the exponent", |p| p.split.head_bits = 7),
            ("exponent-first head wider than a byte", |p| {
                p.split.head_bits = 9
            }),
            ("sign-first head without the whole exponent", |p| {
                p.split.sign_in_head = true
            }),
            ("sign-first head wider than nine bits", |p| {
                p.split.sign_in_head = true;
                p.split.head_bits = 10;
            }),
            ("more constant bits than rest bits", |p| {
                p.split.rest_const_bits = 9
            }),
            ("constant value wider than its bits", |p| {
                p.split.rest_const_value = 0b100
            }),
            ("blocks not a power of two", |p| p.block_elements = 3 << 12),
            // Literal values: a wrong limit must not move the case.
            ("blocks too small", |p| p.block_elements = 1 << 9),
            ("blocks too large", |p| {
                p.block_elements = MAX_BLOCK_ELEMENTS * 2
            }),
            ("chunks not a multiple of 64 bits", |p| {
                p.geometry.chunk_bits = 1000
            }),
            ("chunks too short", |p| p.geometry.chunk_bits = 1 << 5),
            ("chunks too long", |p| {
                p.geometry.chunk_bits = MAX_CHUNK_BITS * 2
            }),
            ("warm-up too long", |p| {
                p.geometry.warmup_bits = MAX_WARMUP_BITS + 1
            }),
            ("too many elements", |p| p.elements = MAX_ELEMENTS + 1),
        ];
        for (what, change) in refused {
            let mut params = valid();
            change(&mut params);
            assert!(
                matches!(params.validate(), Err(CodecError::InvalidParameters(_))),
                "{what}"
            );
        }
    }
}
