//! AVX2 joins of heads and rest bits, for the decoder build that runs on
//! cores with AVX2 (chosen at run time, see `decode::decode_block`). For
//! FP32 and 16-bit elements, eight heads and the eight rests after them
//! become eight elements: 16-byte loads of the rest plane, a byte shuffle
//! that puts each rest's bytes in its 32-bit lane, a shift per lane and a
//! mask; FP8 signs are spread bit by bit onto 32 bytes. The portable joins
//! in [`super::decode`] decode the same bits; they stay the reference and
//! finish the elements these leave.

use std::arch::x86_64::*;

/// Where each of four elements' bytes start within 16 loaded bytes, and
/// how far its field sits above that byte: the shuffle picks four bytes
/// per element (or three and a zero), the shift aligns the field.
struct Gather {
    shuffle: [i8; 16],
    shifts: [i32; 4],
}

/// Sign-first FP32 (nine head bits, 23-bit rests): eight rests fill 23
/// bytes. Elements 0–3 are read from the group's first byte, elements 4–7
/// from its byte 11.
const SIGN_FIRST_F32: [Gather; 2] = [
    Gather {
        shuffle: [0, 1, 2, 3, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11],
        shifts: [0, 7, 6, 5],
    },
    Gather {
        shuffle: [0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12],
        shifts: [4, 3, 2, 1],
    },
];
const SIGN_FIRST_SECOND_LOAD: usize = 11;

/// Exponent-first FP32 (eight head bits, 24-bit rests of sign and low
/// mantissa): eight rests fill 24 bytes. Elements 0–3 are read from the
/// group's first byte, elements 4–7 from its byte 12.
const EXPONENT_FIRST_F32: Gather = Gather {
    shuffle: [0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1],
    shifts: [0; 4],
};
const EXPONENT_FIRST_SECOND_LOAD: usize = 12;

/// The eight rests of a group, each in its 32-bit lane: 16 bytes from
/// `group` and 16 from `group + second`.
///
/// # Safety
/// `rest` must hold 16 bytes from `group + second`.
#[target_feature(enable = "avx2")]
unsafe fn gather(rest: &[u8], group: usize, second: usize, layout: [&Gather; 2]) -> __m256i {
    debug_assert!(group + second + 16 <= rest.len());
    // SAFETY: both loads lie within `rest`, as the caller promises.
    let (low, high) = unsafe {
        (
            _mm_loadu_si128(rest.as_ptr().add(group).cast()),
            _mm_loadu_si128(rest.as_ptr().add(group + second).cast()),
        )
    };
    place(_mm256_set_m128i(high, low), layout)
}

/// Each lane's field moved to the bottom of its 32 bits: `bytes` shuffled
/// by the layouts' patterns (the first for the low 16 bytes, the second
/// for the high) and shifted right by their shifts.
#[target_feature(enable = "avx2")]
fn place(bytes: __m256i, layout: [&Gather; 2]) -> __m256i {
    // SAFETY: each load reads one 16-byte array.
    let sixteen_bytes = |array: *const i8| unsafe { _mm_loadu_si128(array.cast()) };
    let shuffle = _mm256_set_m128i(
        sixteen_bytes(layout[1].shuffle.as_ptr()),
        sixteen_bytes(layout[0].shuffle.as_ptr()),
    );
    let shifts = _mm256_set_m128i(
        sixteen_bytes(layout[1].shifts.as_ptr().cast()),
        sixteen_bytes(layout[0].shifts.as_ptr().cast()),
    );
    _mm256_srlv_epi32(_mm256_shuffle_epi8(bytes, shuffle), shifts)
}

/// Eight heads, each in its 32-bit lane.
#[target_feature(enable = "avx2")]
fn heads_of(group: &[u16; 8]) -> __m256i {
    // SAFETY: the 16 bytes loaded are the array's.
    _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(group.as_ptr().cast()) })
}

/// Stores eight elements as 32 little-endian bytes.
#[target_feature(enable = "avx2")]
fn store(elements: __m256i, out: &mut [u8; 32]) {
    // SAFETY: the 32 bytes stored are the array's.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), elements) }
}

/// Joins FP32 elements in whole groups of eight, for as long as the
/// group's loads stay within `rest`; returns how many elements it joined,
/// a multiple of eight. Sign first, an element is `head << 23 | rest`;
/// exponent first, the rest's top bit is the sign, its other 23 bits the
/// mantissa, and the head the exponent between them.
#[target_feature(enable = "avx2")]
fn join_f32<const SIGN_FIRST: bool>(heads: &[u16], rest: &[u8], out: &mut [u8]) -> usize {
    let (group_bytes, second_load, layout) = if SIGN_FIRST {
        (
            23,
            SIGN_FIRST_SECOND_LOAD,
            [&SIGN_FIRST_F32[0], &SIGN_FIRST_F32[1]],
        )
    } else {
        (
            24,
            EXPONENT_FIRST_SECOND_LOAD,
            [&EXPONENT_FIRST_F32, &EXPONENT_FIRST_F32],
        )
    };
    let loadable = rest.len().saturating_sub(second_load + 16 - group_bytes);
    let groups = (heads.len() / 8)
        .min(out.len() / 32)
        .min(loadable / group_bytes);
    let (head_groups, _) = heads.as_chunks::<8>();
    let (out_groups, _) = out.as_chunks_mut::<32>();
    let low_23_bits = _mm256_set1_epi32(0x7F_FFFF);
    for (group, (heads, out)) in head_groups.iter().zip(out_groups).take(groups).enumerate() {
        // SAFETY: `groups` keeps both loads of every group within `rest`.
        let rests = unsafe { gather(rest, group * group_bytes, second_load, layout) };
        let heads = _mm256_slli_epi32::<23>(heads_of(heads));
        let mut elements = _mm256_or_si256(heads, _mm256_and_si256(rests, low_23_bits));
        if !SIGN_FIRST {
            let sign = _mm256_slli_epi32::<8>(rests);
            elements = _mm256_or_si256(
                elements,
                _mm256_and_si256(sign, _mm256_set1_epi32(i32::MIN)),
            );
        }
        store(elements, out);
    }
    groups * 8
}

/// [`join_f32`] of sign-first elements (nine head bits, 23-bit rests).
#[target_feature(enable = "avx2")]
pub(crate) fn join_f32_sign_first(heads: &[u16], rest: &[u8], out: &mut [u8]) -> usize {
    join_f32::<true>(heads, rest, out)
}

/// [`join_f32`] of exponent-first elements (eight head bits, 24-bit rests).
#[target_feature(enable = "avx2")]
pub(crate) fn join_f32_exponent_first(heads: &[u16], rest: &[u8], out: &mut [u8]) -> usize {
    join_f32::<false>(heads, rest, out)
}

/// Sign-first 16-bit elements (nine head bits, 7-bit rests): eight rests
/// fill 7 bytes. Each element's field lies within the two bytes from
/// byte `7k / 8`, `7k % 8` bits up; the 16 bytes loaded are seen by both
/// halves of the shuffle, so elements 4–7 are picked from the same bytes.
const SEVEN_BIT: [Gather; 2] = [
    Gather {
        shuffle: [0, 1, -1, -1, 0, 1, -1, -1, 1, 2, -1, -1, 2, 3, -1, -1],
        shifts: [0, 7, 6, 5],
    },
    Gather {
        shuffle: [3, 4, -1, -1, 4, 5, -1, -1, 5, 6, -1, -1, 6, 7, -1, -1],
        shifts: [4, 3, 2, 1],
    },
];

/// Eight sign-first 16-bit elements of group `group` (seven rest bytes
/// each) in 32-bit lanes.
///
/// # Safety
/// `rest` must hold 16 bytes from `7 * group`.
#[target_feature(enable = "avx2")]
unsafe fn seven_bit_group(heads: &[u16; 8], rest: &[u8], group: usize) -> __m256i {
    debug_assert!(7 * group + 16 <= rest.len());
    // SAFETY: the load lies within `rest`, as the caller promises.
    let bytes = unsafe { _mm_loadu_si128(rest.as_ptr().add(7 * group).cast()) };
    let fields = place(
        _mm256_broadcastsi128_si256(bytes),
        [&SEVEN_BIT[0], &SEVEN_BIT[1]],
    );
    _mm256_or_si256(
        _mm256_slli_epi32::<7>(heads_of(heads)),
        _mm256_and_si256(fields, _mm256_set1_epi32(0x7F)),
    )
}

/// Joins sign-first 16-bit elements (`head << 7 | rest`, BF16 and FP16
/// with nine head bits) sixteen at a time, for as long as the loads stay
/// within `rest`; returns how many elements it joined, a multiple of 16.
#[target_feature(enable = "avx2")]
pub(crate) fn join_16bit_sign_first(heads: &[u16], rest: &[u8], out: &mut [u8]) -> usize {
    // Two groups of eight a step; the second's load reaches 7 + 16 bytes
    // into the step's 14.
    let loadable = rest.len().saturating_sub(7 + 16 - 14);
    let steps = (heads.len() / 16).min(out.len() / 32).min(loadable / 14);
    let (head_pairs, _) = heads.as_chunks::<16>();
    let (out_steps, _) = out.as_chunks_mut::<32>();
    for (step, (heads, out)) in head_pairs.iter().zip(out_steps).take(steps).enumerate() {
        let [first, second] = bytemuck::cast_ref::<[u16; 16], [[u16; 8]; 2]>(heads);
        // SAFETY: `steps` keeps both groups' loads within `rest`.
        let (low, high) = unsafe {
            (
                seven_bit_group(first, rest, 2 * step),
                seven_bit_group(second, rest, 2 * step + 1),
            )
        };
        // Packing works within 128-bit halves: put the four 64-bit
        // quarters back in element order.
        let packed = _mm256_packus_epi32(low, high);
        store(_mm256_permute4x64_epi64::<0b11_01_10_00>(packed), out);
    }
    steps * 16
}

/// Joins one-byte elements whose rest is the sign alone (seven head bits,
/// exponent first: FP8) 32 at a time: the heads packed to bytes, each bit
/// of four sign bytes spread onto the top bit of its element's byte.
/// Returns how many elements it joined, a multiple of 32.
#[target_feature(enable = "avx2")]
pub(crate) fn join_byte_signs(heads: &[u16], rest: &[u8], out: &mut [u8]) -> usize {
    let steps = (heads.len() / 32).min(out.len() / 32).min(rest.len() / 4);
    let (head_steps, _) = heads.as_chunks::<32>();
    let (sign_steps, _) = rest.as_chunks::<4>();
    let (out_steps, _) = out.as_chunks_mut::<32>();
    // Byte `k` of the 32 looks at sign byte `k / 8`, at bit `k % 8`.
    let sign_byte_of_element = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bit_of_element = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let top_bit = _mm256_set1_epi8(i8::MIN);
    for ((heads, signs), out) in head_steps.iter().zip(sign_steps).zip(out_steps).take(steps) {
        let [first, second] = bytemuck::cast_ref::<[u16; 32], [[u16; 16]; 2]>(heads);
        // SAFETY: each load reads one 32-byte array.
        let (first, second) = unsafe {
            (
                _mm256_loadu_si256(first.as_ptr().cast()),
                _mm256_loadu_si256(second.as_ptr().cast()),
            )
        };
        // Heads are below 128, so packing keeps them; it works within
        // 128-bit halves, so the quarters are put back in element order.
        let heads = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(first, second));
        let signs = _mm256_shuffle_epi8(
            _mm256_set1_epi32(i32::from_le_bytes(*signs)),
            sign_byte_of_element,
        );
        let negative = _mm256_cmpeq_epi8(_mm256_and_si256(signs, bit_of_element), bit_of_element);
        store(
            _mm256_or_si256(heads, _mm256_and_si256(negative, top_bit)),
            out,
        );
    }
    steps * 32
}
