//! The conformance cases every backend must pass bit for bit: synthetic
//! heavy-tailed weights in every dtype, adversarial tensors, and real
//! weight files. `tests/` instantiates them per backend and `ecf selftest`
//! runs them from the shipped binary.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::backend::{self, Backend};
use crate::codec::{self, BlockIndex, EncodeOptions, FloatKind};
use crate::container::SourceFile;
use crate::error::Result;
use crate::synth;

/// One tensor to encode and decode.
pub struct Case {
    pub name: String,
    pub kind: FloatKind,
    pub bytes: Vec<u8>,
    pub options: EncodeOptions,
}

impl Case {
    fn new(name: impl Into<String>, kind: FloatKind, bytes: Vec<u8>) -> Self {
        Case {
            name: name.into(),
            kind,
            bytes,
            options: EncodeOptions::default(),
        }
    }

    fn with_options(mut self, options: EncodeOptions) -> Self {
        self.options = options;
        self
    }
}

/// Elements built from sign, exponent and mantissa fields.
fn compose(kind: FloatKind, sign: u32, exponent: u32, mantissa: u32) -> u32 {
    let width = kind.width_bits();
    let mantissa_bits = width - 1 - kind.exponent_bits();
    sign << (width - 1) | exponent << mantissa_bits | mantissa & ((1 << mantissa_bits) - 1)
}

fn element_bytes(kind: FloatKind, elements: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let width = kind.width_bytes();
    elements
        .into_iter()
        .flat_map(|e| e.to_le_bytes().into_iter().take(width))
        .collect()
}

/// Families of cases; each holds one case or a few per dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Weights shaped like trained ones: a Student-t draw per row scale.
    HeavyTailed,
    /// Every element has the same exponent: constant-head blocks.
    SingleExponent,
    /// Every exponent value, Inf and NaN included (every bit pattern of the
    /// narrow types).
    AllExponents,
    /// ±0, subnormals, Inf, NaN with payloads, the largest finite value.
    SpecialValues,
    /// Frequencies that push the code to the 12-bit length limit.
    LongestCodes,
    /// Empty, one element, odd lengths, one element past a block.
    Lengths,
    /// Uniformly random bits, which no code shrinks: raw blocks.
    RandomBits,
    /// Constant, raw, new-code and reused-code blocks in one tensor.
    MixedBlockModes,
    /// Tiny chunks with little or no warm-up: many chunks have a sync
    /// exception, and a GPU decodes a block in many rounds.
    SyncExceptions,
    /// Low bits that never vary: upcasts, and all-positive tensors.
    ConstantRestBits,
    /// Signs from all positive to a fair coin, and a sign that flips
    /// half-way through a tensor: sign-first heads, their codes adapting
    /// from block to block.
    SkewedSigns,
}

impl Family {
    pub const ALL: [Family; 11] = [
        Family::HeavyTailed,
        Family::SingleExponent,
        Family::AllExponents,
        Family::SpecialValues,
        Family::LongestCodes,
        Family::Lengths,
        Family::RandomBits,
        Family::MixedBlockModes,
        Family::SyncExceptions,
        Family::ConstantRestBits,
        Family::SkewedSigns,
    ];

    /// The family's cases for every dtype.
    pub fn cases(self) -> Vec<Case> {
        FloatKind::ALL
            .into_iter()
            .flat_map(|kind| family_cases(self, kind))
            .collect()
    }
}

/// Every synthetic and adversarial case, for every dtype.
pub fn synthetic_cases() -> Vec<Case> {
    Family::ALL.into_iter().flat_map(Family::cases).collect()
}

fn family_cases(family: Family, kind: FloatKind) -> Vec<Case> {
    let tag = kind.safetensors_name().to_lowercase();
    let seed = kind.width_bits() as u64 * 1000 + kind.exponent_bits() as u64;
    let mut rng = Pcg64Mcg::seed_from_u64(seed + family as u64);
    let exponents = 1u32 << kind.exponent_bits();
    let mantissa_max = (1u32 << (kind.width_bits() - 1 - kind.exponent_bits())) - 1;
    match family {
        Family::HeavyTailed => vec![Case::new(
            format!("heavy_tailed_{tag}"),
            kind,
            synth::heavy_tailed_bytes(kind, 200_003, seed),
        )],
        Family::SingleExponent => {
            let bias = exponents / 2 - 1;
            let elements =
                (0..70_000).map(|_| compose(kind, rng.random_range(0..2), bias, rng.random()));
            vec![Case::new(
                format!("single_exponent_{tag}"),
                kind,
                element_bytes(kind, elements),
            )]
        }
        Family::AllExponents => {
            let mut every: Vec<u32> = if kind.width_bits() <= 16 {
                (0..1u32 << kind.width_bits())
                    .cycle()
                    .take(3 << kind.width_bits())
                    .collect()
            } else {
                (0..65_536)
                    .map(|i| compose(kind, rng.random_range(0..2), i % exponents, rng.random()))
                    .collect()
            };
            every.shuffle(&mut rng);
            vec![Case::new(
                format!("all_exponents_{tag}"),
                kind,
                element_bytes(kind, every),
            )]
        }
        Family::SpecialValues => {
            let specials = [
                compose(kind, 0, 0, 0),
                compose(kind, 1, 0, 0),
                compose(kind, 0, 0, 1),
                compose(kind, 1, 0, mantissa_max),
                compose(kind, 0, 1, 0),
                // The top exponent holds Inf and NaN (E4M3: only NaN, at
                // the largest mantissa; the others are finite).
                compose(kind, 0, exponents - 1, 0),
                compose(kind, 1, exponents - 1, 0),
                compose(kind, 0, exponents - 1, mantissa_max),
                compose(kind, 1, exponents - 1, 1),
                compose(kind, 0, exponents - 2, mantissa_max),
            ];
            let elements = (0..10_001).map(|_| specials[rng.random_range(0..specials.len())]);
            vec![Case::new(
                format!("special_values_{tag}"),
                kind,
                element_bytes(kind, elements),
            )]
        }
        Family::LongestCodes => {
            // Fibonacci frequencies make the optimal code deeper than the
            // limit, so the limited code's longest codewords are exercised.
            let mut fibonacci = Vec::new();
            let (mut a, mut b) = (1usize, 1usize);
            for exponent in 0..exponents.min(22) {
                fibonacci.extend(std::iter::repeat_n(compose(kind, 0, exponent, 0), a));
                (a, b) = (b, a + b);
            }
            fibonacci.shuffle(&mut rng);
            let options = EncodeOptions {
                head_bits: Some(kind.exponent_bits()),
                ..EncodeOptions::default()
            };
            vec![
                Case::new(
                    format!("longest_codes_{tag}"),
                    kind,
                    element_bytes(kind, fibonacci),
                )
                .with_options(options),
            ]
        }
        Family::Lengths => [0usize, 1, 3, 1023, 65_537]
            .into_iter()
            .map(|len| {
                Case::new(
                    format!("length_{len}_{tag}"),
                    kind,
                    synth::heavy_tailed_bytes(kind, len, seed + len as u64),
                )
            })
            .collect(),
        Family::RandomBits => vec![Case::new(
            format!("random_bits_{tag}"),
            kind,
            synth::random_bytes(30_000 * kind.width_bytes(), seed),
        )],
        Family::MixedBlockModes => {
            // Blocks of 1024 elements: heavy-tailed, constant, random, then
            // heavy-tailed again.
            let width = kind.width_bytes();
            let mut mixed = synth::heavy_tailed_bytes(kind, 2048, seed + 1);
            let first = mixed[..width].to_vec();
            mixed.extend(std::iter::repeat_n(first, 1024).flatten());
            mixed.extend(synth::random_bytes(1024 * width, seed + 2));
            mixed.extend(synth::heavy_tailed_bytes(kind, 3000, seed + 1));
            let options = EncodeOptions {
                block_elements: 1024,
                ..EncodeOptions::default()
            };
            vec![Case::new(format!("mixed_block_modes_{tag}"), kind, mixed).with_options(options)]
        }
        Family::SyncExceptions => {
            let mut cases: Vec<Case> = [0, 8]
                .into_iter()
                .map(|warmup_bits| {
                    let options = EncodeOptions {
                        chunk_bits: Some(64),
                        warmup_bits,
                        block_elements: 4096,
                        ..EncodeOptions::default()
                    };
                    Case::new(
                        format!("tiny_chunks_warmup_{warmup_bits}_{tag}"),
                        kind,
                        synth::heavy_tailed_bytes(kind, 40_000, seed + 3),
                    )
                    .with_options(options)
                })
                .collect();
            // Full-size blocks of 64-bit chunks: thousands of chunks a
            // block, so a GPU workgroup decodes a block in many rounds.
            let options = EncodeOptions {
                chunk_bits: Some(64),
                warmup_bits: 16,
                ..EncodeOptions::default()
            };
            cases.push(
                Case::new(
                    format!("many_rounds_{tag}"),
                    kind,
                    synth::heavy_tailed_bytes(kind, 70_000, seed + 5),
                )
                .with_options(options),
            );
            cases
        }
        Family::SkewedSigns => {
            let magnitudes: Vec<f32> = synth::heavy_tailed(70_000, 1000, 0.02, seed + 6)
                .into_iter()
                .map(f32::abs)
                .collect();
            let signed = |negative: &mut dyn FnMut(usize) -> bool| -> Vec<u8> {
                let values: Vec<f32> = magnitudes
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| if negative(i) { -v } else { v })
                    .collect();
                synth::to_bytes(&values, kind)
            };
            let half = magnitudes.len() / 2;
            vec![
                Case::new(
                    format!("all_positive_signs_{tag}"),
                    kind,
                    signed(&mut |_| false),
                ),
                Case::new(
                    format!("ninety_percent_positive_{tag}"),
                    kind,
                    signed(&mut |_| rng.random_bool(0.1)),
                ),
                Case::new(
                    format!("fair_signs_{tag}"),
                    kind,
                    signed(&mut |_| rng.random_bool(0.5)),
                ),
                // Blocks of 16K: two all positive, one mixed, two all
                // negative.
                Case::new(
                    format!("sign_flips_half_way_{tag}"),
                    kind,
                    signed(&mut |i| i >= half),
                )
                .with_options(EncodeOptions {
                    block_elements: 1 << 14,
                    ..EncodeOptions::default()
                }),
            ]
        }
        Family::ConstantRestBits => {
            let values = synth::heavy_tailed(50_000, 1000, 0.02, seed + 4);
            let positive: Vec<f32> = values.iter().map(|v| v.abs()).collect();
            let mut cases = vec![Case::new(
                format!("all_positive_{tag}"),
                kind,
                synth::to_bytes(&positive, kind),
            )];
            if kind == FloatKind::F32 {
                let once_bf16: Vec<u8> = synth::to_bytes(&values, FloatKind::Bf16)
                    .chunks_exact(2)
                    .flat_map(|b| [0, 0, b[0], b[1]])
                    .collect();
                cases.push(Case::new("upcast_from_bf16_f32", kind, once_bf16));
            }
            if kind == FloatKind::Bf16 {
                // The lowest mantissa bit always clear: one constant rest
                // bit, seven stored, packed across byte boundaries.
                let even: Vec<u8> = synth::heavy_tailed_bytes(kind, 50_000, seed + 5)
                    .chunks_exact(2)
                    .flat_map(|b| [b[0] & !1, b[1]])
                    .collect();
                cases.push(Case::new("low_bit_clear_bf16", kind, even));
            }
            // Every head width the format allows, each a rest plane of
            // another width, at element counts that leave the plane's last
            // byte (or word) part full; and the cases above so cut.
            let width = kind.width_bytes();
            let mut tails: Vec<Case> =
                [false, true]
                    .into_iter()
                    .flat_map(|sign_in_head| {
                        let layout = if sign_in_head { "sign_" } else { "" };
                        let tag = &tag;
                        kind.head_bits_range(sign_in_head)
                            .flat_map(move |head_bits| {
                                [4099usize, 5].map(|elements| {
                                    Case::new(
                                format!("{layout}head_{head_bits}_bits_{elements}_elements_{tag}"),
                                kind,
                                synth::heavy_tailed_bytes(
                                    kind,
                                    elements,
                                    seed + u64::from(head_bits),
                                ),
                            )
                            .with_options(EncodeOptions {
                                head_bits: Some(head_bits),
                                sign_in_head: Some(sign_in_head),
                                ..EncodeOptions::default()
                            })
                                })
                            })
                    })
                    .collect();
            tails.extend(cases.iter().flat_map(|case| {
                [4099usize, 5].map(|elements| {
                    Case::new(
                        format!("{}_{elements}_elements", case.name),
                        kind,
                        case.bytes[..elements * width].to_vec(),
                    )
                })
            }));
            cases.extend(tails);
            cases
        }
    }
}

/// Encodes `case` with the CPU encoder, decodes it on `backend`, and
/// compares every byte. The error says where the first difference is.
pub fn check_case(backend: &dyn Backend, case: &Case) -> Result<(), String> {
    let encoded =
        codec::encode(case.kind, &case.bytes, &case.options).map_err(|e| e.to_string())?;
    let index = BlockIndex::parse(&encoded.view()).map_err(|e| e.to_string())?;
    let decoded =
        backend::decode_to_host(backend, &encoded.view(), &index).map_err(|e| e.to_string())?;
    compare(case.kind, &case.bytes, &decoded)
}

/// Decodes several cases, and tensors stored raw between them, in one call
/// into one buffer, each at its own 4-byte aligned offset, as a model
/// runtime does with a layer's tensors.
pub fn check_batch(backend: &dyn Backend, cases: &[Case]) -> Result<(), String> {
    // (what it is, its original bytes, the uploaded tensor)
    let mut uploaded = Vec::with_capacity(cases.len() * 2);
    for (number, case) in cases.iter().enumerate() {
        let encoded =
            codec::encode(case.kind, &case.bytes, &case.options).map_err(|e| e.to_string())?;
        let index = BlockIndex::parse(&encoded.view()).map_err(|e| e.to_string())?;
        let tensor = backend
            .upload(&encoded.view(), &index)
            .map_err(|e| e.to_string())?;
        uploaded.push((case.name.clone(), case.bytes.clone(), tensor));
        // An odd-length raw tensor after every other coded one.
        if number % 2 == 0 {
            let raw = synth::random_bytes(2 * number + 7, number as u64);
            let tensor = backend.upload_raw(&raw).map_err(|e| e.to_string())?;
            uploaded.push((format!("raw after {}", case.name), raw, tensor));
        }
    }
    // Offsets as tight as the backend allows (odd ones on the CPU), with a
    // gap after every third tensor, in a buffer that earlier work left full
    // of 0xFF: a decode must write its tensor's bytes and nothing past the
    // alignment word its last byte lies in.
    let alignment = backend.output_alignment();
    let mut offsets = Vec::with_capacity(uploaded.len());
    let mut end = 0u64;
    for (number, (_, _, tensor)) in uploaded.iter().enumerate() {
        let gap = if number % 3 == 2 { alignment + 3 } else { 0 };
        let offset = (end + gap).next_multiple_of(alignment);
        offsets.push(offset);
        end = offset + tensor.decoded_bytes();
    }
    let out = backend.alloc(end).map_err(|e| e.to_string())?;
    let fill = backend
        .upload_raw(&vec![0xFF; end as usize])
        .map_err(|e| e.to_string())?;
    let fill_job = backend::DecodeJob {
        tensor: fill.as_ref(),
        offset: 0,
    };
    backend
        .decode(&[fill_job], out.as_ref())
        .map_err(|e| format!("filling the buffer: {e}"))?;
    let jobs: Vec<backend::DecodeJob> = uploaded
        .iter()
        .zip(&offsets)
        .map(|((_, _, tensor), &offset)| backend::DecodeJob {
            tensor: tensor.as_ref(),
            offset,
        })
        .collect();
    backend
        .decode(&jobs, out.as_ref())
        .map_err(|e| e.to_string())?;
    let mut decoded = vec![0u8; end as usize];
    backend
        .download(out.as_ref(), 0, &mut decoded)
        .map_err(|e| e.to_string())?;
    for (number, ((name, original, _), &offset)) in uploaded.iter().zip(&offsets).enumerate() {
        let start = offset as usize;
        let tensor_end = start + original.len();
        let decoded_tensor = &decoded[start..tensor_end];
        if decoded_tensor != original.as_slice() {
            let first = decoded_tensor
                .iter()
                .zip(original)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!("{name}: byte {first} differs"));
        }
        let next = offsets.get(number + 1).copied().unwrap_or(end) as usize;
        let word_end = (tensor_end as u64).next_multiple_of(alignment) as usize;
        for (position, &byte) in decoded.iter().enumerate().take(next).skip(tensor_end) {
            let allowed = byte == 0xFF || (position < word_end && byte == 0);
            if !allowed {
                return Err(format!(
                    "{name}: the decode wrote {byte:#04x} at byte {} past its end, \
                     where the buffer held 0xff",
                    position - tensor_end
                ));
            }
        }
    }
    Ok(())
}

/// A tensor that claims fewer decoded bytes than it holds: jobs checked by
/// its claim fit the buffer, yet its decode would run past it, as if the
/// host's check of the jobs had gone wrong.
struct Understated(Box<dyn backend::DeviceTensor>);

impl backend::DeviceTensor for Understated {
    fn decoded_bytes(&self) -> u64 {
        4
    }

    fn resident_bytes(&self) -> u64 {
        self.0.resident_bytes()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self.0.as_any()
    }
}

/// The backend refuses, before its device sees them, jobs that overlap,
/// that run past the buffer's end or that start off its alignment, and
/// refuses by itself a decode that would write past the buffer whatever
/// the jobs claim; and decodes jobs that touch but do not overlap.
pub fn check_job_validation(backend: &dyn Backend) -> Result<(), String> {
    let original = synth::heavy_tailed_bytes(FloatKind::Bf16, 1001, 7);
    let encoded = codec::encode(FloatKind::Bf16, &original, &EncodeOptions::default())
        .map_err(|e| e.to_string())?;
    let index = BlockIndex::parse(&encoded.view()).map_err(|e| e.to_string())?;
    let tensor = backend
        .upload(&encoded.view(), &index)
        .map_err(|e| e.to_string())?;
    let alignment = backend.output_alignment();
    let len = original.len() as u64;
    let second = len.next_multiple_of(alignment);
    let out = backend.alloc(second + len).map_err(|e| e.to_string())?;
    let job = |offset| backend::DecodeJob {
        tensor: tensor.as_ref(),
        offset,
    };
    let mut refused = vec![
        ("overlapping jobs", vec![job(0), job(second - alignment)]),
        ("a job past the buffer's end", vec![job(second + alignment)]),
        ("the same job twice", vec![job(0), job(0)]),
    ];
    if alignment > 1 {
        refused.push(("a job off the alignment", vec![job(1)]));
    }
    let understated = Understated(
        backend
            .upload(&encoded.view(), &index)
            .map_err(|e| e.to_string())?,
    );
    let last_word = (second + len - 4) / alignment * alignment;
    refused.push((
        "a tensor claiming fewer bytes than it decodes",
        vec![backend::DecodeJob {
            tensor: &understated,
            offset: last_word,
        }],
    ));
    for (what, jobs) in refused {
        match backend.decode(&jobs, out.as_ref()) {
            Err(crate::Error::Backend { .. }) => {}
            Err(other) => return Err(format!("{what}: refused with another error: {other}")),
            Ok(()) => return Err(format!("{what}: decoded instead of refused")),
        }
    }
    backend
        .decode(&[job(0), job(second)], out.as_ref())
        .map_err(|e| format!("two adjacent jobs: {e}"))?;
    for offset in [0, second] {
        let mut decoded = vec![0u8; original.len()];
        backend
            .download(out.as_ref(), offset, &mut decoded)
            .map_err(|e| e.to_string())?;
        if decoded != original {
            return Err(format!("two adjacent jobs: the one at {offset} differs"));
        }
    }
    Ok(())
}

/// `Ok` when `actual` equals `expected`, else where they first differ.
pub(crate) fn compare(kind: FloatKind, expected: &[u8], actual: &[u8]) -> Result<(), String> {
    if expected.len() != actual.len() {
        return Err(format!(
            "decoded {} bytes, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    let width = kind.width_bytes();
    match expected
        .chunks(width)
        .zip(actual.chunks(width))
        .position(|(e, a)| e != a)
    {
        None => Ok(()),
        Some(element) => {
            let mismatches = expected
                .chunks(width)
                .zip(actual.chunks(width))
                .filter(|(e, a)| e != a)
                .count();
            Err(format!(
                "{mismatches} elements differ; the first, element {element}, is {:02x?} instead of {:02x?}",
                &actual[element * width..][..width],
                &expected[element * width..][..width]
            ))
        }
    }
}

/// One conformance check of a real file's tensor.
pub struct FileTensorCase {
    pub name: String,
    pub result: Result<(), String>,
}

/// Encodes every float tensor of a plain safetensors file in memory and
/// checks that `backend` decodes each back exactly.
pub fn check_file(backend: &dyn Backend, path: &Path) -> Result<Vec<FileTensorCase>> {
    let source = SourceFile::open(path)?;
    let mut results = Vec::new();
    for tensor in source.tensors() {
        let Some(kind) = FloatKind::from_safetensors_name(&format!("{:?}", tensor.dtype)) else {
            continue;
        };
        let case = Case::new(
            tensor.name.clone(),
            kind,
            source.data()[tensor.range.clone()].to_vec(),
        );
        results.push(FileTensorCase {
            name: tensor.name,
            result: check_case(backend, &case),
        });
    }
    Ok(results)
}
