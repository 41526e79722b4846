//! Properties of the codec itself, beyond decoding back exactly: sync
//! metadata that lets every chunk decode alone, deterministic output.
//! Sizes on real weights are checked in `real_weights.rs`.

mod common;

use ecfloat::codec::{self, BlockIndex, decode::decode_block_by_chunks};
use ecfloat::conformance::synthetic_cases;

/// An element's head symbol as docs/FORMAT.md §2.1 defines it, computed
/// here apart from the codec: sign first, the top `head_bits` bits;
/// exponent first, the `head_bits` bits below the sign, or, where the head
/// is the whole element, the element rotated left by one.
fn head_symbol(split: &codec::FieldSplit, element: u32) -> u16 {
    let (width, head_bits) = (split.kind.width_bits(), split.head_bits);
    let element = u64::from(element);
    let symbol = if split.sign_in_head {
        element >> (width - head_bits)
    } else if head_bits == width {
        (element << 1 | element >> (width - 1)) & ((1 << width) - 1)
    } else {
        (element & ((1 << (width - 1)) - 1)) >> (width - 1 - head_bits)
    };
    u16::try_from(symbol).expect("heads are at most 9 bits")
}

#[test]
fn every_chunk_decodes_alone_from_its_sync_metadata() {
    for case in synthetic_cases() {
        let encoded = codec::encode(case.kind, &case.bytes, &case.options).unwrap();
        let index = BlockIndex::parse(&encoded.view()).unwrap();
        let mut heads = Vec::new();
        for block in 0..index.blocks.len() {
            heads.extend(decode_block_by_chunks(&encoded.view(), &index, block).unwrap());
        }
        let split = encoded.params.split;
        let expected: Vec<u16> = (0..case.bytes.len() / case.kind.width_bytes())
            .map(|i| head_symbol(&split, case.kind.load(&case.bytes, i)))
            .collect();
        assert_eq!(heads, expected, "{}", case.name);
    }
}

/// The encoder's sync metadata passes the CPU decoder's check of every
/// chunk for any geometry the format allows: short chunks with long
/// warm-ups (marks closer together than a lane's batch of codewords),
/// warm-ups of a chunk or more, none at all.
#[test]
fn every_chunk_checks_out_for_every_geometry() {
    use codec::{EncodeOptions, FloatKind};
    let geometries = [
        (64, 0),
        (64, 8),
        (64, 24),
        (64, 40),
        (64, 56),
        (64, 63),
        (64, 64),
        (64, 300),
        (128, 100),
        (1024, 64),
        (1024, 1000),
        (1024, 4096),
    ];
    for kind in [FloatKind::Bf16, FloatKind::F8E4M3, FloatKind::F32] {
        let bytes = ecfloat::synth::heavy_tailed_bytes(kind, 20_000, 3);
        for (chunk_bits, warmup_bits) in geometries {
            let options = EncodeOptions {
                chunk_bits: Some(chunk_bits),
                warmup_bits,
                block_elements: 4096,
                ..EncodeOptions::default()
            };
            let encoded = codec::encode(kind, &bytes, &options).unwrap();
            let index = BlockIndex::parse(&encoded.view()).unwrap();
            let mut decoded = vec![0; bytes.len()];
            codec::decode_blocks(&encoded.view(), &index, 0..index.blocks.len(), &mut decoded)
                .unwrap_or_else(|e| {
                    panic!("{kind}, chunk {chunk_bits}, warm-up {warmup_bits}: {e}")
                });
            assert!(
                decoded == bytes,
                "{kind}, chunk {chunk_bits}, warm-up {warmup_bits}"
            );
        }
    }
}

/// The encoded bytes are a pure function of the input and the options:
/// the same on every run and whatever the number of threads.
#[test]
fn encoding_is_deterministic() {
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let (one, three) = (pool(1), pool(3));
    for case in synthetic_cases().into_iter().step_by(7) {
        let encode = || codec::encode(case.kind, &case.bytes, &case.options).unwrap();
        let first = encode();
        assert_eq!(first, encode(), "{}", case.name);
        assert_eq!(first, one.install(encode), "{}: one thread", case.name);
        assert_eq!(first, three.install(encode), "{}: three threads", case.name);
    }
}

#[test]
fn rejects_a_byte_count_that_is_not_whole_elements() {
    let error = codec::encode(codec::FloatKind::Bf16, &[1, 2, 3], &Default::default()).unwrap_err();
    assert!(
        matches!(&error, codec::CodecError::LengthMismatch(m) if m.contains("not a whole number")),
        "{error:?}"
    );
}

/// Every conformance case read a window of blocks at a time decodes to the
/// same bytes as in one piece, whatever the window — one block, a few, all
/// — so that windows may start after a block that stored the code table
/// they reuse; and the summary counts what the whole index holds.
#[test]
fn windows_of_blocks_decode_like_the_whole_tensor() {
    use codec::index::IndexWalker;
    for case in synthetic_cases() {
        let encoded = codec::encode(case.kind, &case.bytes, &case.options).unwrap();
        let view = encoded.view();
        let whole = BlockIndex::parse(&view).unwrap();
        let summary = IndexWalker::new(&view).unwrap().summarise().unwrap();
        assert_eq!(summary.blocks, whole.blocks.len() as u64, "{}", case.name);
        assert_eq!(summary.tables, whole.tables.len() as u64, "{}", case.name);
        assert_eq!(
            summary.exceptions,
            whole.exceptions.len() as u64,
            "{}",
            case.name
        );
        for window_blocks in [1, 2, 3, 7] {
            let mut decoded = vec![0xA5u8; case.bytes.len()];
            let mut walker = IndexWalker::new(&view).unwrap();
            let mut windows = 0;
            while let Some(window) = walker.next_window(window_blocks).unwrap() {
                let width = case.kind.width_bytes();
                let start = window.first_element() as usize * width;
                let end = start + window.params.decoded_bytes() as usize;
                codec::decode_blocks(
                    &window.view(&view),
                    &window.index,
                    0..window.index.blocks.len(),
                    &mut decoded[start..end],
                )
                .unwrap_or_else(|e| panic!("{}, windows of {window_blocks}: {e}", case.name));
                windows += 1;
            }
            assert_eq!(
                windows,
                whole.blocks.len().div_ceil(window_blocks as usize),
                "{}",
                case.name
            );
            assert!(
                decoded == case.bytes,
                "{}, windows of {window_blocks}",
                case.name
            );
        }
    }
}

/// Any range of blocks decodes alone to its own slice of the tensor, the
/// last (short) block included, and an output of another size is refused.
#[test]
fn a_range_of_blocks_decodes_to_its_slice_of_the_tensor() {
    let kind = codec::FloatKind::Bf16;
    let elements = 5 * 1024 + 300;
    let bytes = ecfloat::synth::heavy_tailed_bytes(kind, elements, 9);
    let options = codec::EncodeOptions {
        block_elements: 1024,
        ..Default::default()
    };
    let encoded = codec::encode(kind, &bytes, &options).unwrap();
    let view = encoded.view();
    let index = BlockIndex::parse(&view).unwrap();
    assert_eq!(index.blocks.len(), 6);
    let block_bytes = 1024 * kind.width_bytes();
    for blocks in [1..3, 2..6, 5..6, 3..3] {
        let start = blocks.start * block_bytes;
        let end = (blocks.end * block_bytes).min(bytes.len());
        let mut out = vec![0xA5u8; end - start];
        codec::decode_blocks(&view, &index, blocks.clone(), &mut out).unwrap();
        assert!(out == bytes[start..end], "blocks {blocks:?}");
        if !out.is_empty() {
            let mut short = vec![0u8; out.len() - 2];
            let error = codec::decode_blocks(&view, &index, blocks.clone(), &mut short);
            assert!(
                matches!(error, Err(codec::CodecError::LengthMismatch(_))),
                "blocks {blocks:?}: {error:?}"
            );
        }
    }
}

/// The encoder codes the sign where that saves: with skewed signs, and
/// where a sign flips from block to block, but not for a fair coin.
#[test]
fn skewed_signs_are_coded_and_fair_ones_are_not() {
    use ecfloat::conformance::Family;
    for case in Family::SkewedSigns.cases() {
        if case.kind.width_bits() == 8 {
            // FP8 codes the whole byte either way.
            continue;
        }
        let encoded = codec::encode(case.kind, &case.bytes, &case.options).unwrap();
        let expected = !case.name.starts_with("fair_signs");
        assert_eq!(
            encoded.params.split.sign_in_head, expected,
            "{}: {:?}",
            case.name, encoded.params.split
        );
        // Against the sign stored raw, a coded sign saves most of its bit.
        let raw_sign = codec::encode(
            case.kind,
            &case.bytes,
            &codec::EncodeOptions {
                sign_in_head: Some(false),
                ..case.options.clone()
            },
        )
        .unwrap();
        let elements = (case.bytes.len() / case.kind.width_bytes()) as f64;
        let saved_bits =
            (raw_sign.stored_bytes() as f64 - encoded.stored_bytes() as f64) * 8.0 / elements;
        // H(0.1) = 0.47 bit; the flipping tensor has a mixed block.
        let least = match &case.name {
            name if name.starts_with("ninety_percent") => 0.4,
            name if name.starts_with("sign_flips") => 0.8,
            name if name.starts_with("all_positive") => 0.9,
            _ => f64::NEG_INFINITY,
        };
        assert!(saved_bits > least, "{}: {saved_bits:.3} bits", case.name);
    }
}

/// Every head layout and width, at lengths around the joins' groups of
/// eight and past a block, decodes back exactly: each join (the grouped
/// loops and their tails) is reached.
#[test]
fn every_head_layout_decodes_odd_lengths() {
    use ecfloat::codec::{EncodeOptions, FloatKind};
    for kind in [FloatKind::Bf16, FloatKind::F16, FloatKind::F32] {
        let values = ecfloat::synth::heavy_tailed(70_013, 1000, 0.02, 5);
        let all = ecfloat::synth::to_bytes(&values, kind);
        for sign_in_head in [false, true] {
            for head_bits in kind.head_bits_range(sign_in_head) {
                for elements in [1, 7, 8, 9, 23, 4099, 70_013] {
                    let bytes = &all[..elements * kind.width_bytes()];
                    let options = EncodeOptions {
                        head_bits: Some(head_bits),
                        sign_in_head: Some(sign_in_head),
                        ..EncodeOptions::default()
                    };
                    let encoded = codec::encode(kind, bytes, &options).unwrap();
                    let mut decoded = vec![0u8; bytes.len()];
                    codec::decode(&encoded.view(), &mut decoded).unwrap();
                    assert!(
                        decoded == bytes,
                        "{kind}, sign in head {sign_in_head}, {head_bits}-bit heads, {elements} elements"
                    );
                }
            }
        }
    }
}

/// By default the chunk length is fitted to the tensor: the longest coded
/// block makes at most 256 chunks (one round of a GPU workgroup), and no
/// shorter multiple of 64 bits (down to 512) would.
#[test]
fn chunks_are_fitted_to_one_round_of_the_longest_block() {
    use ecfloat::codec::encode::{MIN_FITTED_CHUNK_BITS, fitted_chunk_bits};
    use ecfloat::codec::{EncodeOptions, FloatKind};
    assert_eq!(fitted_chunk_bits(0), MIN_FITTED_CHUNK_BITS);
    assert_eq!(fitted_chunk_bits(256 * 512), 512);
    assert_eq!(fitted_chunk_bits(256 * 512 + 1), 576);
    assert_eq!(fitted_chunk_bits(256 * 14_336), 14_336);
    // Past what 64-bit units store, the next power of two.
    assert_eq!(fitted_chunk_bits(256 * 14_336 + 1), 16_384);
    assert_eq!(fitted_chunk_bits(u64::MAX / 2), 65_536);
    for kind in [FloatKind::Bf16, FloatKind::F8E4M3, FloatKind::F32] {
        let bytes = ecfloat::synth::heavy_tailed_bytes(kind, 300_000, 9);
        let encoded = codec::encode(kind, &bytes, &EncodeOptions::default()).unwrap();
        let chunk_bits = encoded.params.geometry.chunk_bits as u64;
        let index = BlockIndex::parse(&encoded.view()).unwrap();
        let longest = index.blocks.iter().map(|b| b.stream_bits).max().unwrap();
        assert!(
            longest.div_ceil(chunk_bits) <= 256,
            "{kind}: {chunk_bits}-bit chunks"
        );
        assert!(
            chunk_bits == 512 || longest.div_ceil(chunk_bits - 64) > 256,
            "{kind}: {chunk_bits}-bit chunks are longer than they need be"
        );
    }
}
