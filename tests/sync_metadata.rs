//! Files with one field of their sync metadata changed — a stream a few
//! bits longer or shorter, a wrong sync exception, a missing or a needless
//! one, another warm-up or chunk size — as a fuzz campaign made them. Each
//! is decoded on every backend present: the CPU decoder, the CUDA kernel
//! executed on the CPU, wgpu and CUDA. Every one must reject it with the
//! same problem in the same block, or decode it to the original bytes:
//! never wrong bytes, and never accepted by one and refused by another.

mod common;

use ecfloat::backend::gpu::layout::DispatchLimits;
use ecfloat::backend::{self, Backend, CpuBackend};
use ecfloat::codec::index::{BlockRecord, ChunkException, write_record};
use ecfloat::codec::{
    self, BlockIndex, BlockMode, CodecError, EncodeOptions, EncodedTensor, FloatKind, StreamProblem,
};
use ecfloat::container::{self, CompressOptions};
use ecfloat::{Error, synth};

use common::harness;

/// What a backend made of a tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Decoded to the original bytes.
    Decoded,
    /// Rejected as corrupt, with the codec's error (block and problem).
    Rejected(CodecError),
    /// Anything else: wrong bytes, or an error that is not the data's.
    Failed(String),
}

/// The backends each test runs on besides the CPU decoder, which is every
/// test's oracle: one test per backend, ignored (with the reason) where
/// that backend is absent.
const BACKENDS: [(&str, common::OpenBackend); 4] = [
    ("cpu", || Ok(Box::new(CpuBackend::new()))),
    ("cuda_kernel_on_cpu", || {
        common::kernel_on_cpu::kernel_on_cpu(DispatchLimits::UNBOUNDED)
    }),
    ("wgpu", || harness::require_backend("wgpu")),
    ("cuda", || harness::require_backend("cuda")),
];

type Backends = [Box<dyn Backend>];

/// A test of what the backends given make of changed sync metadata.
type BackendsTest = fn(&Backends);

fn main() {
    let tests: [(&str, BackendsTest); 9] = [
        (
            "the_sample_decodes_everywhere",
            the_sample_decodes_everywhere,
        ),
        (
            "a_stream_a_few_bits_off_is_rejected_everywhere",
            a_stream_a_few_bits_off_is_rejected_everywhere,
        ),
        (
            "a_last_codeword_past_a_shortened_stream_is_the_same_problem_everywhere",
            a_last_codeword_past_a_shortened_stream_is_the_same_problem_everywhere,
        ),
        (
            "a_wrong_sync_exception_is_rejected_everywhere",
            a_wrong_sync_exception_is_rejected_everywhere,
        ),
        (
            "a_missing_sync_exception_is_rejected_everywhere",
            a_missing_sync_exception_is_rejected_everywhere,
        ),
        (
            "an_exception_where_the_warmup_lands_right_decodes_only_if_it_is_right",
            an_exception_where_the_warmup_lands_right_decodes_only_if_it_is_right,
        ),
        (
            "a_chunk_start_broken_at_a_round_boundary_is_rejected_everywhere",
            a_chunk_start_broken_at_a_round_boundary_is_rejected_everywhere,
        ),
        (
            "another_warmup_or_chunk_size_is_rejected_or_decoded_alike_everywhere",
            another_warmup_or_chunk_size_is_rejected_or_decoded_alike_everywhere,
        ),
        (
            "decompress_rejects_what_verify_rejects",
            decompress_rejects_what_verify_rejects,
        ),
    ];
    let mut trials = Vec::new();
    for (backend, open) in BACKENDS {
        for (name, test) in tests {
            trials.push(harness::trial(format!("{backend}::{name}"), move || {
                let mut backends: Vec<Box<dyn Backend>> = vec![open()?];
                if backend != "cpu" {
                    backends.insert(0, Box::new(CpuBackend::new()));
                }
                test(&backends);
                Ok(())
            }));
        }
    }
    harness::run(trials);
}

fn outcome(backend: &dyn Backend, tensor: &EncodedTensor, original: &[u8]) -> Outcome {
    let index = match BlockIndex::parse(&tensor.view()) {
        Ok(index) => index,
        Err(error) => return Outcome::Rejected(error),
    };
    match backend::decode_to_host(backend, &tensor.view(), &index) {
        Ok(bytes) if bytes == original => Outcome::Decoded,
        Ok(_) => Outcome::Failed("decoded to wrong bytes".to_string()),
        Err(Error::CorruptJob { source, .. }) => Outcome::Rejected(source),
        Err(other) => Outcome::Failed(other.to_string()),
    }
}

/// Decodes `tensor` on every backend; all must agree, and none may fail.
/// Returns what they agreed on.
fn agreed_outcome(
    what: &str,
    backends: &[Box<dyn Backend>],
    tensor: &EncodedTensor,
    original: &[u8],
) -> Outcome {
    let outcomes: Vec<(&str, Outcome)> = backends
        .iter()
        .map(|b| (b.name(), outcome(b.as_ref(), tensor, original)))
        .collect();
    let first = &outcomes[0].1;
    assert!(
        outcomes
            .iter()
            .all(|(_, o)| o == first && !matches!(o, Outcome::Failed(_))),
        "{what}: the backends disagree: {outcomes:#?}"
    );
    first.clone()
}

/// A tensor's index, as records that can be changed and written again.
struct Records {
    index: BlockIndex,
    stream_bits: Vec<u64>,
    exceptions: Vec<Vec<ChunkException>>,
}

impl Records {
    fn of(tensor: &EncodedTensor) -> Self {
        let index = BlockIndex::parse(&tensor.view()).unwrap();
        let stream_bits = index.blocks.iter().map(|b| b.stream_bits).collect();
        let exceptions = (0..index.blocks.len())
            .map(|b| index.block_exceptions(b).to_vec())
            .collect();
        Records {
            index,
            stream_bits,
            exceptions,
        }
    }

    /// The tensor with this index.
    fn write(&self, tensor: &EncodedTensor) -> EncodedTensor {
        let mut bytes = Vec::new();
        let mut tables_sent = 0;
        for (block, entry) in self.index.blocks.iter().enumerate() {
            let record = match entry.mode {
                BlockMode::Raw => BlockRecord::Raw,
                BlockMode::Constant(value) => BlockRecord::Constant(value),
                BlockMode::Coded { table } => {
                    let new_table = (table as usize == tables_sent).then(|| {
                        tables_sent += 1;
                        &self.index.tables[table as usize]
                    });
                    BlockRecord::Coded {
                        new_table,
                        stream_bits: self.stream_bits[block],
                        exceptions: &self.exceptions[block],
                    }
                }
            };
            write_record(&record, tensor.params.alphabet(), &mut bytes);
        }
        EncodedTensor {
            index: bytes,
            ..tensor.clone()
        }
    }
}

/// A warm-up short enough that some chunks need a sync exception (4 to 10
/// in each block of the sample).
fn sample_options() -> EncodeOptions {
    EncodeOptions {
        warmup_bits: 8,
        ..EncodeOptions::default()
    }
}

/// Heavy-tailed BF16 weights in five blocks.
fn sample() -> (Vec<u8>, EncodedTensor) {
    let original = synth::heavy_tailed_bytes(FloatKind::Bf16, 5 * 65_536 - 1000, 11);
    let tensor = codec::encode(FloatKind::Bf16, &original, &sample_options()).unwrap();
    let records = Records::of(&tensor);
    assert!(
        records.exceptions.iter().filter(|e| !e.is_empty()).count() >= 2,
        "the sample has sync exceptions"
    );
    (original, tensor)
}

fn rejected_for(outcome: &Outcome) -> Option<StreamProblem> {
    match outcome {
        Outcome::Rejected(CodecError::CorruptStream { problem, .. }) => Some(*problem),
        _ => None,
    }
}

/// `tensor` with block `block`'s stream said to be `bits` long is rejected
/// by every backend alike.
fn assert_stream_bits_rejected(
    what: &str,
    backends: &[Box<dyn Backend>],
    tensor: &EncodedTensor,
    original: &[u8],
    block: usize,
    bits: u64,
) {
    let mut records = Records::of(tensor);
    records.stream_bits[block] = bits;
    let outcome = agreed_outcome(what, backends, &records.write(tensor), original);
    assert!(
        matches!(outcome, Outcome::Rejected(_)),
        "{what}: {outcome:?}"
    );
}

/// `tensor` is rejected by every backend alike, for chunk `chunk`'s start.
fn assert_chunk_rejected(
    what: &str,
    backends: &[Box<dyn Backend>],
    tensor: &EncodedTensor,
    original: &[u8],
    chunk: u32,
) {
    let outcome = agreed_outcome(what, backends, tensor, original);
    assert_eq!(
        rejected_for(&outcome),
        Some(StreamProblem::ChunkStart {
            chunk: chunk as u64
        }),
        "{what}"
    );
}

fn the_sample_decodes_everywhere(backends: &Backends) {
    let (original, tensor) = sample();
    assert_eq!(
        agreed_outcome("unchanged", backends, &tensor, &original),
        Outcome::Decoded
    );
}

fn a_stream_a_few_bits_off_is_rejected_everywhere(backends: &Backends) {
    let (original, tensor) = sample();
    let records = Records::of(&tensor);
    let mut tried = 0;
    for block in 0..records.stream_bits.len() {
        let bits = records.stream_bits[block];
        for delta in [-3i64, -2, -1, 1, 2, 3] {
            let changed = bits.checked_add_signed(delta).unwrap();
            // Only lengths that keep the head plane's bytes pass parsing.
            if changed.div_ceil(8) != bits.div_ceil(8) {
                continue;
            }
            let what = format!("block {block}, stream_bits {delta:+}");
            assert_stream_bits_rejected(&what, backends, &tensor, &original, block, changed);
            tried += 1;
        }
    }
    assert!(tried >= 5, "only {tried} lengths tried");
}

/// Single-block tensors whose last chunk is short: a stream a few bits
/// short leaves its last codeword past the end, which starts the last chunk
/// past the end too. Every backend must name the same problem.
fn a_last_codeword_past_a_shortened_stream_is_the_same_problem_everywhere(backends: &Backends) {
    let mut tried = 0;
    for (elements, seed) in [
        (3354, 3354),
        (3000, 1),
        (4095, 2),
        (1500, 3),
        (2222, 4),
        (3900, 5),
    ] {
        let original = synth::heavy_tailed_bytes(FloatKind::Bf16, elements, seed);
        let tensor = codec::encode(FloatKind::Bf16, &original, &EncodeOptions::default()).unwrap();
        let records = Records::of(&tensor);
        let bits = records.stream_bits[0];
        for delta in 1..=3 {
            if (bits - delta).div_ceil(8) != bits.div_ceil(8) {
                continue;
            }
            let what = format!("{elements} elements, seed {seed}, stream_bits -{delta}");
            assert_stream_bits_rejected(&what, backends, &tensor, &original, 0, bits - delta);
            tried += 1;
        }
    }
    assert!(tried >= 8, "only {tried} lengths tried");
}

fn a_wrong_sync_exception_is_rejected_everywhere(backends: &Backends) {
    let (original, tensor) = sample();
    let records = Records::of(&tensor);
    let mut tried = 0;
    // The first two exceptions of each block, each moved by a few bits.
    for (block, exceptions) in records.exceptions.iter().enumerate() {
        for (number, exception) in exceptions.iter().enumerate().take(2) {
            for shift in [1, 4, 11] {
                let boundary = (exception.first_boundary + shift) % 12;
                let mut records = Records::of(&tensor);
                records.exceptions[block][number].first_boundary = boundary;
                let what = format!(
                    "block {block}, chunk {}, boundary {} instead of {}",
                    exception.chunk, boundary, exception.first_boundary
                );
                let changed = records.write(&tensor);
                assert_chunk_rejected(&what, backends, &changed, &original, exception.chunk);
                tried += 1;
            }
        }
    }
    assert!(tried >= 20, "only {tried} exceptions tried");
}

fn a_missing_sync_exception_is_rejected_everywhere(backends: &Backends) {
    let (original, tensor) = sample();
    let records = Records::of(&tensor);
    for (block, exceptions) in records.exceptions.iter().enumerate() {
        let Some(exception) = exceptions.first() else {
            continue;
        };
        let mut records = Records::of(&tensor);
        records.exceptions[block].remove(0);
        let what = format!(
            "block {block}, chunk {} without its exception",
            exception.chunk
        );
        let changed = records.write(&tensor);
        assert_chunk_rejected(&what, backends, &changed, &original, exception.chunk);
    }
}

fn an_exception_where_the_warmup_lands_right_decodes_only_if_it_is_right(backends: &Backends) {
    let (original, tensor) = sample();
    let records = Records::of(&tensor);
    let entry = &records.index.blocks[0];
    let chunk = (1..tensor.params.geometry.chunk_count(entry.stream_bits))
        .find(|&c| records.exceptions[0].iter().all(|e| e.chunk as u64 != c))
        .unwrap();
    exceptions_decode_only_where_right(backends, &tensor, &original, 0, chunk);
}

/// The chunk start each round of a GPU workgroup's chunks begins with is
/// checked against the previous round's end by the round's first thread
/// alone: a start broken exactly there is rejected as within a round.
fn a_chunk_start_broken_at_a_round_boundary_is_rejected_everywhere(backends: &Backends) {
    use ecfloat::backend::gpu::layout::WORKGROUP_SIZE;

    // Short chunks: a block of thousands, many rounds.
    let original = synth::heavy_tailed_bytes(FloatKind::Bf16, 65_536, 12);
    let options = EncodeOptions {
        chunk_bits: Some(64),
        ..sample_options()
    };
    let tensor = codec::encode(FloatKind::Bf16, &original, &options).unwrap();
    let records = Records::of(&tensor);
    let chunks = tensor
        .params
        .geometry
        .chunk_count(records.index.blocks[0].stream_bits);
    assert!(chunks > 3 * WORKGROUP_SIZE as u64, "{chunks} chunks");
    let mut tried = 0;
    for round in 1..=3u64 {
        let chunk = round * WORKGROUP_SIZE as u64;
        if records.exceptions[0]
            .iter()
            .any(|e| e.chunk as u64 == chunk)
        {
            continue;
        }
        exceptions_decode_only_where_right(backends, &tensor, &original, 0, chunk);
        tried += 1;
    }
    assert!(tried >= 2, "only {tried} round boundaries tried");
}

/// An exception added at `chunk` of `block` (which has none) decodes where
/// it names the first boundary the warm-up lands on, and is rejected for
/// that chunk's start everywhere where it names the next bit.
fn exceptions_decode_only_where_right(
    backends: &Backends,
    tensor: &EncodedTensor,
    original: &[u8],
    block: usize,
    chunk: u64,
) {
    let records = Records::of(tensor);
    let geometry = tensor.params.geometry;
    let entry = &records.index.blocks[block];
    let stream =
        &tensor.head[entry.stream_offset as usize..][..entry.stream_bits.div_ceil(8) as usize];
    let BlockMode::Coded { table } = entry.mode else {
        panic!("block {block} is coded")
    };
    let decode_table = codec::huffman::DecodeTable::new(
        &records.index.tables[table as usize],
        records.index.table_max_len[table as usize] as u32,
    );
    let landing = geometry.warmup_landing(stream, entry.stream_bits, &decode_table, chunk);
    let right = (landing - chunk * geometry.chunk_bits as u64) as u8;
    for boundary in [right, (right + 1) % 12] {
        let mut records = Records::of(tensor);
        let exceptions = &mut records.exceptions[block];
        let at = exceptions.partition_point(|e| (e.chunk as u64) < chunk);
        exceptions.insert(
            at,
            ChunkException {
                chunk: chunk as u32,
                first_boundary: boundary,
            },
        );
        let what = format!("chunk {chunk} with an exception at {boundary} (true: {right})");
        let outcome = agreed_outcome(&what, backends, &records.write(tensor), original);
        if boundary == right {
            assert_eq!(outcome, Outcome::Decoded, "{what}");
        } else {
            assert_eq!(
                rejected_for(&outcome),
                Some(StreamProblem::ChunkStart { chunk }),
                "{what}"
            );
        }
    }
}

fn another_warmup_or_chunk_size_is_rejected_or_decoded_alike_everywhere(backends: &Backends) {
    let (original, tensor) = sample();
    let mut rejected = 0;
    for (chunk_bits, warmup_bits) in [(1024, 0), (1024, 4), (1024, 64), (512, 8), (2048, 8)] {
        let mut changed = tensor.clone();
        changed.params.geometry.chunk_bits = chunk_bits;
        changed.params.geometry.warmup_bits = warmup_bits;
        let what = format!("chunk_bits {chunk_bits}, warmup_bits {warmup_bits}");
        let outcome = agreed_outcome(&what, backends, &changed, &original);
        rejected += usize::from(outcome != Outcome::Decoded);
    }
    assert!(rejected >= 3, "most changes must be caught: {rejected}");
}

fn decompress_rejects_what_verify_rejects(backends: &Backends) {
    // The file, compressed, then changed two ways that leave its stream
    // decodable in order and every checksum right: one exception made
    // wrong (in a chunk where none of the CPU decoder's lanes starts, so
    // that its bytes would not change), and the warm-up set to nothing.
    // Both break the sync rule: decompress refuses each, leaving no
    // output, with the error verify gives on every backend.
    let directory = tempfile::tempdir().unwrap();
    let (original, tensor) = sample();
    let source = directory.path().join("model.safetensors");
    let name = "layers.0.mlp.weight";
    common::write_safetensors(
        &source,
        &[common::SampleTensor {
            name,
            dtype: "BF16",
            shape: vec![original.len() as u64 / 2],
            bytes: original.clone(),
        }],
        &[],
    );
    let compressed = directory.path().join("model.ecf.safetensors");
    let options = CompressOptions {
        encode: sample_options(),
        ..CompressOptions::default()
    };
    container::compress_file(&source, &compressed, &options).unwrap();
    let elements = original.len() as u64 / 2;

    let records = Records::of(&tensor);
    let (block, exception) = records
        .exceptions
        .iter()
        .enumerate()
        .find_map(|(b, e)| {
            e.iter()
                .find(|e| {
                    let chunks = tensor.params.geometry.chunk_count(records.stream_bits[b]);
                    (1..codec::decode::LANES as u64).all(|l| chunks * l / 4 != e.chunk as u64)
                })
                .map(|e| (b, *e))
        })
        .unwrap();
    let mut wrong = Records::of(&tensor);
    let number = wrong.exceptions[block]
        .iter()
        .position(|e| e.chunk == exception.chunk)
        .unwrap();
    wrong.exceptions[block][number].first_boundary = (exception.first_boundary + 1) % 12;
    let wrong_exception = directory.path().join("wrong-exception.ecf.safetensors");
    std::fs::copy(&compressed, &wrong_exception).unwrap();
    common::replace_coded_index(
        &wrong_exception,
        name,
        FloatKind::Bf16,
        elements,
        &wrong.write(&tensor).index,
    );

    let mut no_warmup_tensor = tensor.clone();
    no_warmup_tensor.params.geometry.warmup_bits = 0;
    let Outcome::Rejected(CodecError::CorruptStream {
        block: no_warmup_block,
        problem: StreamProblem::ChunkStart { chunk },
    }) = outcome(&CpuBackend::new(), &no_warmup_tensor, &original)
    else {
        panic!("a warm-up of nothing breaks a chunk start of the sample")
    };
    let no_warmup = directory.path().join("no-warmup.ecf.safetensors");
    std::fs::copy(&compressed, &no_warmup).unwrap();
    common::rewrite_coded_tensor(&no_warmup, name, FloatKind::Bf16, elements, |coded, _| {
        coded.params.geometry.warmup_bits = 0
    });

    for (path, block, chunk) in [
        (&wrong_exception, block, exception.chunk as u64),
        (&no_warmup, no_warmup_block, chunk),
    ] {
        let expected = format!(
            "tensor {name}: corrupt coded stream in block {block}: chunk {chunk} does not start"
        );
        let rebuilt = directory.path().join("rebuilt.safetensors");
        let error = container::decompress_file(path, &rebuilt, false, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains(&expected), "decompress: {error}");
        assert!(!rebuilt.exists(), "decompress left an output");
        for backend in backends {
            let checks =
                ecfloat::tools::verify::verify_file_on(path, backend.as_ref(), &Default::default())
                    .unwrap();
            let errors: Vec<String> = checks
                .tensors
                .iter()
                .filter_map(|t| t.error.as_ref().map(|e| e.to_string()))
                .collect();
            assert_eq!(errors.len(), 1, "{}: {errors:?}", backend.name());
            assert!(
                errors[0].contains(&expected),
                "{}: {}",
                backend.name(),
                errors[0]
            );
        }
    }
}
