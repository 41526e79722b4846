//! Fuzzing compressed files on stable Rust. Valid files are taken apart,
//! one structure at a time is changed (`fuzz/mutate.rs`: the header length
//! and JSON, the deflated source header, coded parameters, block records —
//! modes, tables, stream lengths, exceptions — planes, truncations), and
//! every command's code must then either reject the file with an error or
//! rebuild exactly the original: never panic, never hang, never return
//! other bytes.
//!
//! `ECF_FUZZ_ITERATIONS` sets how many mutated files one run judges (and
//! `ECF_FUZZ_SEED` the first seed); `.ci/run` runs a few thousand. A file
//! that breaks a rule is saved under `target/fuzz-failures/`; once fixed, it
//! joins `tests/fuzz/corpus/`, which every backend present replays with the
//! same verdict as the CPU's.

mod common;
#[path = "fuzz/mutate.rs"]
mod mutate;

use common::harness::{self, Ran};

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ecfloat::codec::EncodeOptions;
use ecfloat::conformance::Family;
use ecfloat::container::{self, CompressOptions, Decoder, write::TensorData};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

fn main() {
    use ecfloat::backend::gpu::layout::DispatchLimits;
    let mut trials = vec![
        harness::trial(
            "mutated_files_are_rejected_or_rebuilt_exactly",
            mutated_files_are_rejected_or_rebuilt_exactly,
        ),
        harness::trial(
            "the_corpus_is_rejected_or_rebuilt_exactly_on_the_cpu",
            the_corpus_is_rejected_or_rebuilt_exactly_on_the_cpu,
        ),
    ];
    let backends: [(&str, common::OpenBackend); 3] = [
        ("cuda_kernel_on_cpu", || {
            common::kernel_on_cpu::kernel_on_cpu(DispatchLimits::UNBOUNDED)
        }),
        ("wgpu", || harness::require_backend("wgpu")),
        ("cuda", || harness::require_backend("cuda")),
    ];
    for (name, open) in backends {
        trials.push(harness::trial(
            format!("{name}::the_corpus_is_judged_as_on_the_cpu"),
            move || {
                the_corpus_is_judged_as_on_the_cpu(open()?.as_ref());
                Ok(())
            },
        ));
    }
    // Rewrites tests/fuzz/corpus: run on purpose only.
    trials.push(harness::on_request("regenerate_corpus", regenerate_corpus));
    harness::run(trials);
}

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/corpus");
/// No file of the corpus or the seeds takes a second to judge; ten is a hang.
const HANG: Duration = Duration::from_secs(10);

/// A valid compressed file to mutate, and the file it rebuilds.
struct Seed {
    name: String,
    compressed: Vec<u8>,
    original: Vec<u8>,
}

/// The checked-in test vectors, and a file of small blocks and short
/// chunks (many tables, records and sync exceptions to break).
fn seeds() -> Vec<Seed> {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    let vectors = ["v2", "v1"].into_iter().flat_map(|version| {
        ["defaults.ecf.safetensors", "small_blocks.ecf.safetensors"]
            .map(|name| format!("{version}/{name}"))
    });
    for name in vectors {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors")
            .join(&name);
        let rebuilt = dir.path().join("rebuilt.safetensors");
        container::decompress_file(&path, &rebuilt, true, &Default::default()).unwrap();
        seeds.push(Seed {
            name,
            compressed: std::fs::read(&path).unwrap(),
            original: std::fs::read(&rebuilt).unwrap(),
        });
    }
    // The corpus files are mutations of these seeds and must rebuild to
    // their originals: a new case in these families that passes the size
    // filter changes the seeds, and then the corpus must be regenerated.
    let cases: Vec<_> = [Family::SyncExceptions, Family::MixedBlockModes]
        .into_iter()
        .flat_map(|family| {
            family
                .cases()
                .into_iter()
                .filter(|case| case.bytes.len() <= 8 << 10)
                .take(3)
        })
        .collect();
    let shapes: Vec<[u64; 1]> = cases
        .iter()
        .map(|c| [(c.bytes.len() / c.kind.width_bytes()) as u64])
        .collect();
    let tensors: Vec<TensorData> = cases
        .iter()
        .zip(&shapes)
        .map(|(case, shape)| TensorData {
            name: &case.name,
            dtype: case.kind.safetensors_name(),
            shape,
            bytes: &case.bytes,
        })
        .collect();
    let source = dir.path().join("short_chunks.safetensors");
    container::write::write_safetensors(&source, &[], &tensors).unwrap();
    let compressed = dir.path().join("short_chunks.ecf.safetensors");
    let options = CompressOptions {
        encode: EncodeOptions {
            block_elements: 1 << 10,
            chunk_bits: Some(64),
            warmup_bits: 8,
            ..EncodeOptions::default()
        },
        ..CompressOptions::default()
    };
    container::compress_file(&source, &compressed, &options).unwrap();
    seeds.push(Seed {
        name: "short_chunks.ecf.safetensors".to_string(),
        compressed: std::fs::read(&compressed).unwrap(),
        original: std::fs::read(&source).unwrap(),
    });
    seeds
}

/// What a decoder made of a file: rejected when opened (with the message),
/// or opened and each tensor's checksum matched or not, and the file's.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Rejected(String),
    Decoded {
        tensors_ok: Vec<bool>,
        file_ok: bool,
    },
}

impl Verdict {
    /// The verdict without numbers: files rejected for the same reason share
    /// it, whatever the offsets and counts.
    fn class(&self) -> String {
        match self {
            Verdict::Rejected(message) => message
                .split(|c: char| c.is_ascii_digit())
                .filter(|piece| !piece.is_empty())
                .collect::<Vec<_>>()
                .join("#"),
            Verdict::Decoded {
                tensors_ok,
                file_ok,
            } => format!(
                "decoded, {} of {} tensors ok, file {}",
                tensors_ok.iter().filter(|&&ok| ok).count(),
                tensors_ok.len(),
                if *file_ok { "ok" } else { "differs" }
            ),
        }
    }
}

fn verdict(path: &Path, decode: &Decoder) -> Verdict {
    match container::verify_file_with(path, decode, &Default::default()) {
        Err(error) => {
            let message = error.to_string();
            let prefix = format!("{}: ", path.display());
            Verdict::Rejected(
                message
                    .strip_prefix(&prefix)
                    .unwrap_or(&message)
                    .to_string(),
            )
        }
        Ok(checks) => Verdict::Decoded {
            tensors_ok: checks.tensors.iter().map(|t| t.error.is_none()).collect(),
            file_ok: checks.file_matches(),
        },
    }
}

/// Runs every command's code on `path` on the CPU and checks the rules
/// (what it rebuilds must be one of `originals`); returns the CPU's
/// verdict, or which rule broke.
fn judge(path: &Path, originals: &[&[u8]]) -> Result<Verdict, String> {
    let run = || -> Result<Verdict, String> {
        let _ = ecfloat::tools::inspect::inspect(path);
        let _ = ecfloat::tools::analyze::analyze(path, None);
        let verdict = verdict(path, &container::cpu_decoder());
        let rebuilt = path.with_extension("rebuilt");
        let decompressed = container::decompress_file(path, &rebuilt, true, &Default::default());
        if decompressed.is_ok() {
            let bytes = std::fs::read(&rebuilt).unwrap();
            let _ = std::fs::remove_file(&rebuilt);
            if !originals.contains(&bytes.as_slice()) {
                return Err("decompress succeeded with other bytes than the original".into());
            }
        }
        let verified = matches!(&verdict, Verdict::Decoded { tensors_ok, file_ok }
            if *file_ok && tensors_ok.iter().all(|&ok| ok));
        if let (true, Err(error)) = (verified, &decompressed) {
            return Err(format!(
                "verify passed every check but decompress failed: {error}"
            ));
        }
        Ok(verdict)
    };
    let (sender, receiver) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
            let _ = sender.send(outcome);
        });
        match receiver.recv_timeout(HANG) {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => Err(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Err(_) => {
                // The judging thread cannot be stopped: report and end.
                eprintln!("{}: still running after {HANG:?}: a hang", path.display());
                std::process::exit(1);
            }
        }
    })
}

fn failures_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mutated_files_are_rejected_or_rebuilt_exactly() -> Ran {
    let iterations = env_number("ECF_FUZZ_ITERATIONS", 300);
    let first_seed = env_number("ECF_FUZZ_SEED", 0x5eed);
    let seeds = seeds();
    let dir = tempfile::tempdir().unwrap();
    let mut classes = std::collections::BTreeMap::<String, u64>::new();
    let mut failures = Vec::new();
    for iteration in 0..iterations {
        let mut rng = Pcg64Mcg::seed_from_u64(first_seed.wrapping_add(iteration));
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let mut bytes = seed.compressed.clone();
        let mut what = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let (mutated, description) = mutate::mutate(&mut rng, &bytes);
            bytes = mutated;
            what.push(description);
        }
        let path = dir.path().join(format!("{iteration}.ecf.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        match judge(&path, &[&seed.original]) {
            Ok(verdict) => *classes.entry(verdict.class()).or_default() += 1,
            Err(broken) => {
                let saved = failures_dir().join(format!(
                    "seed-{}-{}.ecf.safetensors",
                    first_seed.wrapping_add(iteration),
                    seed.name.trim_end_matches(".ecf.safetensors")
                ));
                std::fs::copy(&path, &saved).unwrap();
                failures.push(format!(
                    "{}: {broken}\n    {}",
                    saved.display(),
                    what.join("; ")
                ));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    eprintln!(
        "{iterations} mutated files from seed {first_seed:#x}: {} kinds of verdict",
        classes.len()
    );
    for (class, count) in &classes {
        eprintln!("{count:>6}  {class}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A mutator that changes nothing, or breaks only the outermost check,
    // would leave this run judging one kind of file.
    if iterations >= 300 {
        assert!(
            classes.len() >= 20,
            "only {} kinds of verdict",
            classes.len()
        );
    }
    Ok(())
}

/// The corpus files, sorted.
fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(CORPUS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

fn the_corpus_is_rejected_or_rebuilt_exactly_on_the_cpu() -> Ran {
    let files = corpus();
    assert!(!files.is_empty(), "{CORPUS} is empty");
    let seeds = seeds();
    let originals: Vec<&[u8]> = seeds.iter().map(|s| s.original.as_slice()).collect();
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        let copy = dir.path().join("file.ecf.safetensors");
        std::fs::copy(&file, &copy).unwrap();
        if let Err(broken) = judge(&copy, &originals) {
            panic!("{}: {broken}", file.display());
        }
    }
    Ok(())
}

/// `backend` judges every corpus file as the CPU does: the same files
/// rejected, the same tensors failing their checksum.
fn the_corpus_is_judged_as_on_the_cpu(backend: &dyn ecfloat::backend::Backend) {
    let cpu = container::cpu_decoder();
    let decode = ecfloat::backend::decoder(backend);
    let name = backend.name();
    for file in corpus() {
        let expected = verdict(&file, &cpu);
        let judged = verdict(&file, &decode);
        let same = match (&expected, &judged) {
            (Verdict::Rejected(_), Verdict::Rejected(_)) => true,
            (a, b) => a == b,
        };
        assert!(
            same,
            "{}: the CPU says {expected:?}, {name} says {judged:?}",
            file.display()
        );
    }
}

/// A verdict's kind, coarser than [`Verdict::class`]: without the tensor's
/// name either, so the corpus keeps one file per check that fired.
fn kind_of(verdict: &Verdict) -> String {
    if matches!(verdict, Verdict::Decoded { .. }) {
        return "decoded".to_string();
    }
    let class = verdict.class();
    let mut kind = String::new();
    let mut rest = class.as_str();
    while let Some(at) = rest.find("tensor ") {
        kind.push_str(&rest[..at + "tensor ".len()]);
        rest = &rest[at + "tensor ".len()..];
        rest = rest.find(": ").map_or("", |end| &rest[end..]);
    }
    kind.push_str(rest);
    kind.chars()
        .filter(char::is_ascii_lowercase)
        .take(60)
        .collect()
}

/// Rebuilds `tests/fuzz/corpus`: the first mutated file of each kind of
/// verdict a fixed run meets, and the shapes of decompression bomb (sized
/// to replay in seconds on a software GPU).
fn regenerate_corpus() -> Ran {
    let corpus = Path::new(CORPUS);
    for entry in std::fs::read_dir(corpus).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let seeds = seeds();
    let dir = tempfile::tempdir().unwrap();
    let mut kinds = std::collections::BTreeMap::new();
    let mut listing = String::from(
        "# Fuzz corpus\n\nWritten by `cargo test --release --test fuzz -- --ignored regenerate_corpus`: \
         one mutated file per kind of verdict, and the shapes of decompression bomb. \
         Each line: file, what was changed, what the CPU decided.\n\n",
    );
    // The smallest seed keeps the corpus small.
    let seed = seeds.iter().min_by_key(|s| s.compressed.len()).unwrap();
    for iteration in 0..20_000u64 {
        let mut rng = Pcg64Mcg::seed_from_u64(0x5eed + iteration);
        let mut bytes = seed.compressed.clone();
        let mut what = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let (mutated, description) = mutate::mutate(&mut rng, &bytes);
            bytes = mutated;
            what.push(description);
        }
        let path = dir.path().join("file.ecf.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let verdict = verdict(&path, &container::cpu_decoder());
        let kind = kind_of(&verdict);
        if kinds.contains_key(&kind) {
            continue;
        }
        let name = format!("{:03}.ecf.safetensors", kinds.len());
        std::fs::write(corpus.join(&name), &bytes).unwrap();
        listing.push_str(&format!(
            "- `{name}` ({}): {} — {}\n",
            seed.name,
            what.join("; "),
            verdict.class()
        ));
        kinds.insert(kind, name);
    }
    let bombs: [(&str, u64, u32, usize); 3] = [
        ("bomb-constant-blocks", 1 << 23, 1 << 20, 2),
        ("bomb-huge-index", 1 << 23, 1 << 10, 2),
        ("bomb-empty-planes", 1 << 23, 1 << 20, 0),
    ];
    for (name, elements, block_elements, record_bytes) in bombs {
        let params = common::constant_bf16_params(elements, block_elements);
        let blocks = params.block_count() as usize;
        let file = format!("{name}.ecf.safetensors");
        common::write_coded_file(
            &corpus.join(&file),
            &common::CodedPlanes {
                params,
                checksum: 0,
                index: [1u8, 0x7f][..record_bytes].repeat(blocks),
                head: Vec::new(),
                rest: Vec::new(),
            },
        );
        let verdict = verdict(&corpus.join(&file), &container::cpu_decoder());
        listing.push_str(&format!(
            "- `{file}`: {elements} BF16 elements claimed in blocks of {block_elements}, {} index bytes — {}\n",
            blocks * record_bytes,
            verdict.class()
        ));
    }
    std::fs::write(corpus.join("README.md"), listing).unwrap();
    eprintln!("{} kinds of verdict", kinds.len());
    Ok(())
}
