//! Floating-point element layouts and the split of an element into a coded
//! *head* and a raw *rest*, in one of two layouts.
//!
//! *Exponent first* (the sign stays raw): the head is the top `head_bits`
//! bits of the element rotated left by one (sign moved from the top to the
//! bottom), so it starts with the exponent; the rest is the sign followed
//! by the remaining low mantissa bits. Right for the usual weights, whose
//! sign is a fair coin that no code can shrink.
//!
//! *Sign first* (the sign is coded): the head is the top `head_bits` bits
//! of the element as they are, sign, exponent, top mantissa bits; the rest
//! is the bits below. Right for mostly-positive tensors (norm weights,
//! biases, some embeddings), whose sign carries well under one bit.
//!
//! ```text
//! element        s eeeeeeee mmmmmmm   (BF16)
//! exponent first   eeeeeeee           head_bits = 8
//!                s          mmmmmmm   rest: sign, then the low mantissa bits
//! sign first     s eeeeeeee           head_bits = 9
//!                           mmmmmmm   rest: the low mantissa bits
//! ```
//!
//! An exponent-first head of the full element width (FP8, 8 bits) is the
//! rotated element itself and leaves no rest. Heads are at most
//! [`MAX_HEAD_BITS`] wide, so every dtype shares one 512-symbol alphabet.
//! Keeping the low mantissa bits at the bottom of the rest lets low bits
//! that never vary — the zero low half of FP32 weights that were once BF16
//! — be stored once per tensor.

use std::fmt;

/// The widest head: a sign-first head of sign, eight exponent bits (BF16,
/// FP32) or sign, five exponent and three mantissa bits (FP16).
pub const MAX_HEAD_BITS: u32 = 9;
/// The widest exponent-first head.
pub const MAX_EXPONENT_FIRST_HEAD_BITS: u32 = 8;

/// The floating-point formats the codec entropy-codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FloatKind {
    Bf16,
    F16,
    F8E4M3,
    F8E5M2,
    F32,
}

impl FloatKind {
    pub const ALL: [FloatKind; 5] = [
        FloatKind::Bf16,
        FloatKind::F16,
        FloatKind::F8E4M3,
        FloatKind::F8E5M2,
        FloatKind::F32,
    ];

    /// Element width in bits.
    pub const fn width_bits(self) -> u32 {
        match self {
            FloatKind::F8E4M3 | FloatKind::F8E5M2 => 8,
            FloatKind::Bf16 | FloatKind::F16 => 16,
            FloatKind::F32 => 32,
        }
    }

    pub const fn width_bytes(self) -> usize {
        self.width_bits() as usize / 8
    }

    pub const fn exponent_bits(self) -> u32 {
        match self {
            FloatKind::F8E4M3 => 4,
            FloatKind::F8E5M2 | FloatKind::F16 => 5,
            FloatKind::Bf16 | FloatKind::F32 => 8,
        }
    }

    /// The dtype string safetensors uses for this format.
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            FloatKind::Bf16 => "BF16",
            FloatKind::F16 => "F16",
            FloatKind::F8E4M3 => "F8_E4M3",
            FloatKind::F8E5M2 => "F8_E5M2",
            FloatKind::F32 => "F32",
        }
    }

    pub fn from_safetensors_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.safetensors_name() == name)
    }

    /// Widths the head may take: from the exponent alone (and the sign,
    /// when it is in the head) up to 8 bits exponent first, 9 sign first,
    /// never past the element.
    pub fn head_bits_range(self, sign_in_head: bool) -> std::ops::RangeInclusive<u32> {
        let widest = if sign_in_head {
            MAX_HEAD_BITS
        } else {
            MAX_EXPONENT_FIRST_HEAD_BITS
        };
        self.exponent_bits() + sign_in_head as u32..=widest.min(self.width_bits())
    }

    /// Calls `visit` with every element of little-endian `bytes`, in order;
    /// the loop is compiled once per element width. `visit` is called from
    /// three loops, so LLVM may not inline it: hot callers mark it
    /// `#[inline(always)]`.
    #[inline(always)]
    pub(crate) fn for_each_element(self, bytes: &[u8], mut visit: impl FnMut(u32)) {
        match self.width_bytes() {
            1 => bytes.iter().for_each(|&b| visit(b as u32)),
            2 => bytes
                .chunks_exact(2)
                .for_each(|c| visit(u16::from_le_bytes([c[0], c[1]]) as u32)),
            _ => bytes
                .chunks_exact(4)
                .for_each(|c| visit(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        }
    }

    /// Calls `visit` with the elements of `bytes` four at a time, then
    /// `tail` with each of the last `len % 4`; four independent elements per
    /// call let the caller spread dependent work (counters) across them.
    #[inline(always)]
    pub(crate) fn for_each_quad(
        self,
        bytes: &[u8],
        mut visit: impl FnMut([u32; 4]),
        tail: impl FnMut(u32),
    ) {
        let width = self.width_bytes();
        let quads = bytes.chunks_exact(4 * width);
        let rest = quads.remainder();
        // Arrays built element by element: `array::map` is not always
        // inlined, and then costs a call per element.
        match width {
            1 => quads.for_each(|q| visit([q[0] as u32, q[1] as u32, q[2] as u32, q[3] as u32])),
            2 => quads.for_each(|q| {
                let at = |i: usize| u16::from_le_bytes([q[2 * i], q[2 * i + 1]]) as u32;
                visit([at(0), at(1), at(2), at(3)])
            }),
            _ => quads.for_each(|q| {
                let at = |i: usize| {
                    u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]])
                };
                visit([at(0), at(1), at(2), at(3)])
            }),
        }
        self.for_each_element(rest, tail);
    }

    /// Reads element `index` of a little-endian byte slice.
    #[inline(always)]
    pub fn load(self, bytes: &[u8], index: usize) -> u32 {
        match self.width_bytes() {
            1 => bytes[index] as u32,
            2 => u16::from_le_bytes([bytes[2 * index], bytes[2 * index + 1]]) as u32,
            _ => u32::from_le_bytes(bytes[4 * index..4 * index + 4].try_into().unwrap()),
        }
    }
}

/// A safetensors dtype name, in any case: `bf16`, `F8_E4M3`, ….
impl std::str::FromStr for FloatKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::from_safetensors_name(&name.to_ascii_uppercase()).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|k| k.safetensors_name()).collect();
            format!("unknown dtype {name:?}; choose one of {}", names.join(", "))
        })
    }
}

impl fmt::Display for FloatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

/// How the elements of one tensor are cut into head and rest.
///
/// The lowest `rest_const_bits` bits of every rest are equal across the
/// whole tensor; they are stored once, as `rest_const_value`, instead of per
/// element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSplit {
    pub kind: FloatKind,
    /// Sign first (the sign is the head's top bit) rather than exponent
    /// first (the sign is the rest's top bit).
    pub sign_in_head: bool,
    pub head_bits: u32,
    pub rest_const_bits: u32,
    pub rest_const_value: u32,
}

impl FieldSplit {
    /// Bits of the element outside the head: sign and low mantissa bits.
    #[inline(always)]
    pub const fn rest_bits(&self) -> u32 {
        self.kind.width_bits() - self.head_bits
    }

    /// Bits stored per element in the rest plane.
    #[inline(always)]
    pub const fn stored_rest_bits(&self) -> u32 {
        self.rest_bits() - self.rest_const_bits
    }

    /// The head symbol of an element: sign first, its top `head_bits`
    /// bits; exponent first, the top `head_bits` bits below the sign, or the
    /// whole element rotated left by one when there is no rest.
    #[inline(always)]
    pub fn head(&self, element: u32) -> u32 {
        if self.sign_in_head {
            return element >> self.rest_bits() & width_mask(self.head_bits);
        }
        match self.rest_bits() {
            0 => {
                let width = self.kind.width_bits();
                ((element << 1) | (element >> (width - 1))) & width_mask(width)
            }
            rest_bits => (element >> (rest_bits - 1)) & width_mask(self.head_bits),
        }
    }

    /// The rest of an element, constant bits included: sign first, its low
    /// `rest_bits` bits; exponent first, the sign on top of the low
    /// `rest_bits - 1` bits.
    #[inline(always)]
    pub(crate) fn full_rest(&self, element: u32) -> u32 {
        let rest_bits = self.rest_bits();
        if self.sign_in_head {
            return element & width_mask(rest_bits);
        }
        if rest_bits == 0 {
            return 0;
        }
        let sign = element >> (self.kind.width_bits() - 1);
        sign << (rest_bits - 1) | element & width_mask(rest_bits - 1)
    }

    /// Splits an element into (head symbol, stored rest bits).
    #[inline(always)]
    pub fn split(&self, element: u32) -> (u32, u32) {
        (
            self.head(element),
            self.full_rest(element) >> self.rest_const_bits,
        )
    }

    /// The exponent field of every element with head symbol `head`.
    pub fn exponent_of_head(&self, head: u32) -> u32 {
        let (width, exponent_bits) = (self.kind.width_bits(), self.kind.exponent_bits());
        self.join(head, 0) >> (width - 1 - exponent_bits) & width_mask(exponent_bits)
    }

    /// Joins a head symbol and stored rest bits back into the element.
    #[inline(always)]
    pub fn join(&self, head: u32, stored_rest: u32) -> u32 {
        let width = self.kind.width_bits();
        let rest_bits = self.rest_bits();
        if self.sign_in_head {
            let rest = stored_rest << self.rest_const_bits | self.rest_const_value;
            // A shift by the full 32 bits would wrap: an FP32 head is at
            // most 9 bits, so its rest is never empty.
            return (head << rest_bits) & width_mask(width) | rest;
        }
        if rest_bits == 0 {
            return ((head >> 1) | (head << (width - 1))) & width_mask(width);
        }
        let rest = stored_rest << self.rest_const_bits | self.rest_const_value;
        let sign = rest >> (rest_bits - 1);
        sign << (width - 1) | head << (rest_bits - 1) | rest & width_mask(rest_bits - 1)
    }
}

/// [`FieldSplit::split`] with its cases resolved once per tensor, for hot
/// loops: a shift and mask for the head; the sign (kept or not) moved onto
/// the low bits for the rest. The whole rotated FP8 element (an
/// exponent-first head with no rest) is no shift: it has no cut.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ElementCut {
    head_shift: u32,
    head_mask: u32,
    sign_shift: u32,
    /// 1 when the sign goes to the rest (exponent first), else 0.
    sign_kept: u32,
    sign_to: u32,
    low_mask: u32,
    const_bits: u32,
}

impl ElementCut {
    /// (head symbol, stored rest bits) of an element.
    #[inline(always)]
    pub(crate) fn split(&self, element: u32) -> (u32, u32) {
        let head = element >> self.head_shift & self.head_mask;
        let sign = element >> self.sign_shift & self.sign_kept;
        let rest = (sign << self.sign_to | element & self.low_mask) >> self.const_bits;
        (head, rest)
    }
}

impl FieldSplit {
    /// The split as shifts and masks, unless the head is the whole element
    /// rotated.
    pub(crate) fn cut(&self) -> Option<ElementCut> {
        let rest_bits = self.rest_bits();
        let width = self.kind.width_bits();
        let (head_shift, sign_kept, low_bits) = match (self.sign_in_head, rest_bits) {
            (true, _) => (rest_bits, 0, rest_bits),
            (false, 0) => return None,
            (false, _) => (rest_bits - 1, 1, rest_bits - 1),
        };
        Some(ElementCut {
            head_shift,
            head_mask: width_mask(self.head_bits),
            sign_shift: width - 1,
            sign_kept,
            sign_to: rest_bits.saturating_sub(1),
            low_mask: width_mask(low_bits),
            const_bits: self.rest_const_bits,
        })
    }
}

/// A mask of the low `bits` bits; `bits` may be 0..=32.
#[inline(always)]
pub const fn width_mask(bits: u32) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splits(kind: FloatKind) -> impl Iterator<Item = FieldSplit> {
        [false, true].into_iter().flat_map(move |sign_in_head| {
            kind.head_bits_range(sign_in_head)
                .flat_map(move |head_bits| {
                    let rest_bits = kind.width_bits() - head_bits;
                    (0..=rest_bits.min(3)).map(move |rest_const_bits| FieldSplit {
                        kind,
                        sign_in_head,
                        head_bits,
                        rest_const_bits,
                        rest_const_value: 0,
                    })
                })
        })
    }

    #[test]
    fn split_and_join_are_inverse_for_every_narrow_pattern() {
        for kind in [
            FloatKind::Bf16,
            FloatKind::F16,
            FloatKind::F8E4M3,
            FloatKind::F8E5M2,
        ] {
            for split in splits(kind) {
                for element in 0..(1u32 << kind.width_bits()) {
                    assert!(split.head(element) < 1 << MAX_HEAD_BITS);
                    check_split(split, element);
                }
            }
        }
    }

    /// The head as the format describes it, computed another way: sign
    /// first, the top `head_bits` bits; exponent first, the `head_bits`
    /// bits below the sign, or with no rest bits the element rotated left
    /// by one (sign at the bottom).
    fn head_by_definition(split: FieldSplit, element: u32) -> u32 {
        let (kind, head_bits) = (split.kind, split.head_bits);
        let width = kind.width_bits();
        if split.sign_in_head {
            return (element as u64 >> (width - head_bits)) as u32;
        }
        let unsigned = (element << 1) & width_mask(width);
        if head_bits == width {
            unsigned | element >> (width - 1)
        } else {
            unsigned >> (width - head_bits)
        }
    }

    fn check_split(split: FieldSplit, element: u32) {
        let kind = split.kind;
        let width = kind.width_bits();
        let low = split.full_rest(element) & width_mask(split.rest_const_bits);
        let split = FieldSplit {
            rest_const_value: low,
            ..split
        };
        let (head, rest) = split.split(element);
        assert_eq!(
            head,
            head_by_definition(split, element),
            "{kind} {split:?} {element:#x}"
        );
        if let Some(cut) = split.cut() {
            assert_eq!(
                cut.split(element),
                (head, rest),
                "{kind} {split:?} {element:#x}"
            );
        }
        let rest_bits = width - split.head_bits;
        if split.sign_in_head {
            let low = element & width_mask(rest_bits);
            assert_eq!(rest, low >> split.rest_const_bits, "{kind} {split:?}");
        } else if rest_bits > 0 {
            let sign = element >> (width - 1);
            let low_bits = element & width_mask(rest_bits - 1);
            let full = sign << (rest_bits - 1) | low_bits;
            assert_eq!(rest, full >> split.rest_const_bits, "{kind} {split:?}");
        }
        assert_eq!(split.join(head, rest), element, "{kind} {split:?}");
    }

    #[test]
    fn f32_split_and_join_are_inverse_on_edges_and_a_million_patterns() {
        use rand::{Rng, SeedableRng};
        let edges = [
            0u32,
            0x8000_0000,
            0x7F80_0000,
            0xFF80_0000,
            0x7FC0_0000,
            0x7FFF_FFFF,
            0xFFFF_FFFF,
            0x0000_0001,
            0x8000_0001,
            0x007F_FFFF,
            0x0080_0000,
            0x7F7F_FFFF,
            f32::to_bits(1.0),
            f32::to_bits(-0.02),
        ];
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(32);
        let patterns: Vec<u32> = edges
            .into_iter()
            .chain((0..1 << 20).map(|_| rng.random::<u32>()))
            .collect();
        for split in splits(FloatKind::F32) {
            for &element in &patterns {
                check_split(split, element);
            }
        }
    }

    #[test]
    fn head_starts_with_the_exponent() {
        let split = FieldSplit {
            kind: FloatKind::Bf16,
            sign_in_head: false,
            head_bits: 8,
            rest_const_bits: 0,
            rest_const_value: 0,
        };
        // -1.5 in BF16: sign 1, exponent 127, mantissa 0b1000000.
        let (head, rest) = split.split(0xBFC0);
        assert_eq!(head, 127);
        assert_eq!(rest, 0b1100_0000);
        let f32_split = FieldSplit {
            kind: FloatKind::F32,
            ..split
        };
        let (head, rest) = f32_split.split(f32::to_bits(-0.0));
        assert_eq!((head, rest), (0, 1 << 23));
    }

    #[test]
    fn a_sign_first_head_starts_with_the_sign() {
        let split = FieldSplit {
            kind: FloatKind::Bf16,
            sign_in_head: true,
            head_bits: 9,
            rest_const_bits: 0,
            rest_const_value: 0,
        };
        // -1.5 in BF16: sign 1, exponent 127, mantissa 0b1000000.
        assert_eq!(split.split(0xBFC0), (1 << 8 | 127, 0b100_0000));
        let f16_split = FieldSplit {
            kind: FloatKind::F16,
            ..split
        };
        // -1.5 in F16: sign 1, exponent 15, mantissa 0b10_0000_0000.
        // Head: sign 1, exponent 0b01111, top mantissa bits 0b100.
        assert_eq!(f16_split.split(0xBE00), (1 << 8 | 0b01111 << 3 | 0b100, 0));
    }
}
