//! `kernels/decode.cu`, executed on the CPU (`tests/common/kernel_on_cpu.rs`):
//! every conformance case, fed by the same plan — dispatch records and work
//! list — the CUDA backend launches, bit for bit against the original.
//!
//! `kernel_model` decodes the largest tensor of each dtype of
//! `../shared/testdata` with the memory-access model on and prints its
//! figures.
//!
//! `under_thread_sanitizer` runs a subset again with the harness built with
//! ThreadSanitizer; `.ci/run` runs it (`-- --ignored`). Without g++ the
//! tests show as ignored, with the reason; `ECF_REQUIRE_CXX=1` makes that
//! a failure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::harness::{self, Ran, Skip};
use common::kernel_cost::{self, KernelCost, Workload};
use common::kernel_on_cpu::{
    KernelModel, ModelTotals, SANITIZER, kernel_on_cpu, modelled_kernel_on_cpu, require_harness,
};
use ecfloat::backend;
use ecfloat::backend::gpu::layout::DispatchLimits;
use ecfloat::codec::{self, BlockIndex, EncodeOptions, FloatKind};
use ecfloat::conformance::{self, Family};
use ecfloat::container::SourceFile;

fn main() {
    // The whole suite, with the CUDA backend's limits (one segment a
    // tensor)…
    let mut trials =
        common::conformance_trials("cuda_kernel", || kernel_on_cpu(DispatchLimits::UNBOUNDED));
    // …and with limits that cut tensors into many segments of few blocks,
    // as wgpu's are on small devices.
    trials.extend(common::conformance_trials("cuda_kernel_split", || {
        kernel_on_cpu(DispatchLimits {
            max_binding_bytes: 300_000,
            max_workgroups: 3,
        })
    }));
    trials.extend([
        harness::trial(
            "a_barrier_in_divergent_code_fails_instead_of_hanging",
            a_barrier_in_divergent_code_fails_instead_of_hanging,
        ),
        harness::trial(
            "an_endless_loop_ends_the_process_with_a_message",
            an_endless_loop_ends_the_process_with_a_message,
        ),
        harness::trial("kernel_model", kernel_model),
        harness::trial("kernel_cost", kernel_cost),
        harness::trial(
            "the_cost_model_spreads_a_region_over_an_unrolled_loops_copies",
            the_cost_model_spreads_a_region_over_an_unrolled_loops_copies,
        ),
        // Minutes: `.ci/run` runs it.
        harness::on_request("under_thread_sanitizer", under_thread_sanitizer),
    ]);
    harness::run(trials);
}

fn a_barrier_in_divergent_code_fails_instead_of_hanging() -> Ran {
    let harness = require_harness()?;
    let error = harness.divergent_barrier(2.0).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("different barriers") || message.contains("reached the barrier"),
        "{message}"
    );
    // The pool is still usable afterwards.
    let backend = kernel_on_cpu(DispatchLimits::UNBOUNDED)?;
    let case = &Family::HeavyTailed.cases()[0];
    conformance::check_case(backend.as_ref(), case).unwrap();
    Ok(())
}

/// A launch whose threads stop meeting ends the test process with a
/// message, in a child process here.
fn an_endless_loop_ends_the_process_with_a_message() -> Ran {
    const CHILD: &str = "ECF_ENDLESS_LOOP_CHILD";
    let harness = require_harness()?;
    if std::env::var(CHILD).is_ok() {
        let _ = harness.endless_loop(1.0);
        unreachable!("the harness ends the process");
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "an_endless_loop_ends_the_process_with_a_message",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("the launch hung") && stderr.contains("an endless loop"),
        "{stderr}"
    );
    Ok(())
}

/// The largest BF16, F16, F32 and E4M3 tensor of the test data, encoded
/// with the default options and decoded bit for bit by the modelled kernel.
struct ModelledDecode {
    name: String,
    dtype: &'static str,
    model: Box<KernelModel>,
    elements: u64,
    output_bytes: u64,
    coded_bytes: u64,
}

/// The modelled decodes, made once for the tests that read them.
fn modelled_decodes() -> Result<&'static [ModelledDecode], Skip> {
    static DECODES: OnceLock<Result<Vec<ModelledDecode>, String>> = OnceLock::new();
    let files = harness::require_testdata_files()?;
    let (backend, model) = modelled_kernel_on_cpu()?;
    DECODES
        .get_or_init(|| Ok(decode_largest_tensors(&files, backend.as_ref(), &model)))
        .as_deref()
        .map_err(|reason| Skip(reason.clone()))
}

fn decode_largest_tensors(
    files: &[PathBuf],
    backend: &dyn backend::Backend,
    model: &ModelTotals,
) -> Vec<ModelledDecode> {
    // dtype → (bytes, file, tensor name) of its largest tensor.
    let mut largest: BTreeMap<&str, (usize, PathBuf, String)> = BTreeMap::new();
    for file in files {
        let source = SourceFile::open(file).unwrap();
        for tensor in source.tensors() {
            let dtype = format!("{:?}", tensor.dtype);
            let Some(&wanted) = ["BF16", "F16", "F32", "F8_E4M3"]
                .iter()
                .find(|&&wanted| wanted == dtype)
            else {
                continue;
            };
            if largest
                .get(wanted)
                .is_none_or(|(len, ..)| tensor.len() > *len)
            {
                largest.insert(wanted, (tensor.len(), file.clone(), tensor.name.clone()));
            }
        }
    }
    let mut decodes = Vec::new();
    for (dtype, (_, file, name)) in largest {
        let source = SourceFile::open(&file).unwrap();
        let tensor = source
            .tensors()
            .into_iter()
            .find(|t| t.name == name)
            .unwrap();
        let bytes = &source.data()[tensor.range.clone()];
        let kind = FloatKind::from_safetensors_name(dtype).unwrap();
        let encoded = codec::encode(kind, bytes, &EncodeOptions::default()).unwrap();
        let index = BlockIndex::parse(&encoded.view()).unwrap();
        *model.lock().unwrap() = KernelModel::default();
        let decoded = backend::decode_to_host(backend, &encoded.view(), &index).unwrap();
        assert!(decoded == bytes, "{name}: decoded bytes differ");
        decodes.push(ModelledDecode {
            name,
            dtype,
            model: Box::new(model.lock().unwrap().clone()),
            elements: (bytes.len() / kind.width_bytes()) as u64,
            output_bytes: bytes.len() as u64,
            coded_bytes: encoded.stored_bytes(),
        });
    }
    decodes
}

/// The memory-access model on the largest tensor of each dtype: one line
/// of figures each, and at least 90 % of the threads busy.
fn kernel_model() -> Ran {
    for decode in modelled_decodes()? {
        let (name, counts) = (&decode.name, &decode.model);
        let decodes = counts.counts.decodes;
        let elements = decode.elements as f64;
        println!(
            "kernel model: {name} {} decodes_per_element={:.2} active_threads={:.2} \
             store_sectors_per_ideal={:.2} load_sectors_per_ideal={:.2} load_reads_per_byte={:.2}",
            decode.dtype,
            decodes as f64 / elements,
            counts.active_threads(),
            counts.store_sectors_per_ideal(),
            counts.load_sectors_per_ideal(),
            counts.load_reads_per_byte(),
        );
        // Chunks fitted to the tensor make a block one round of nearly
        // all threads.
        assert!(
            counts.active_threads() >= 0.90,
            "{name}: {:.3} of thread rounds have a chunk",
            counts.active_threads()
        );
        // Each thread stores its own run in 16-byte vectors, so a warp's
        // store request fills half of each of 32 sectors (which L2 merges
        // before DRAM: the kernel cost line's dram_bytes_per_ideal), and
        // reads its stream a word and its rest bits 16 bytes at a time
        // from L1: more sectors per request than the staged rings and
        // runs before, for an eighth of the instructions (kernel_cost).
        assert!(
            counts.store_sectors_per_ideal() <= 2.0,
            "{name}: {:.3} store sectors per ideal",
            counts.store_sectors_per_ideal()
        );
        assert!(
            counts.load_sectors_per_ideal() <= 8.0,
            "{name}: {:.3} load sectors per ideal",
            counts.load_sectors_per_ideal()
        );
    }
    Ok(())
}

/// What the kernel must reach on an H100, by the cost model, in TB/s of
/// decoded output: 1.0 for 16- and 32-bit weights, 0.5 for FP8.
fn target_tbps(dtype: &str) -> f64 {
    if dtype == "F8_E4M3" { 0.5 } else { 1.0 }
}

/// The kernel's SASS weighed by the modelled decodes: one `kernel cost:`
/// line per dtype, with the instructions, memory and latency it spends and
/// the throughput they allow on an H100 and an H200 (tests/common/
/// kernel_cost.rs), then the regions that issue the most. The lines also go
/// to `target/kernel-cost.txt`.
/// A region inside `#pragma unroll` loops is compiled once per iteration
/// of each, so its executed count is spread over that many copies; a loop
/// whose iterations its head does not give is refused.
fn the_cost_model_spreads_a_region_over_an_unrolled_loops_copies() -> Ran {
    let source = "#define PAIRS 8u
__device__ void f(u32* out, u32 n) {
#pragma unroll
    for (u32 k = 0u; k < PAIRS / 2u; k++) {
#pragma unroll
        for (u32 j = 2u; j < 8u; j += 3u) {
            if (out[k] == j) {
                ECF_MODEL_REGION();
                out[k] += j;
            }
        }
    }
}
";
    let regions = kernel_cost::regions(source).expect("the source's loops are countable");
    assert_eq!(regions.len(), 1);
    assert_eq!((regions[0].marker, regions[0].copies), (8, 4 * 2));
    let uncountable = source.replace("k < PAIRS / 2u", "k < n");
    let refusal = kernel_cost::regions(&uncountable).expect_err("`k < n` gives no count");
    assert!(refusal.contains("cannot be counted"), "{refusal}");
    Ok(())
}

fn kernel_cost() -> Ran {
    let decodes = modelled_decodes()?;
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/decode.cu"))
            .unwrap();
    let sass = kernel_cost::sass("sm_90")?;
    // The A100's SASS, for its instruction count beside the H100's.
    let ampere = kernel_cost::sass("sm_80")?;
    let ampere_resident_blocks = resident_blocks(80, &ampere);
    let resident_blocks = resident_blocks(90, &sass);
    eprintln!(
        "kernel cost: sm_90, {} instructions, {} registers, {} bytes of shared memory, {resident_blocks} blocks per SM",
        sass.instructions.len(),
        sass.registers,
        sass.shared_bytes
    );
    let mut lines = String::new();
    for decode in decodes {
        let workload = Workload {
            model: &decode.model,
            elements: decode.elements,
            output_bytes: decode.output_bytes,
            coded_bytes: decode.coded_bytes,
        };
        let cost = KernelCost::new(&sass, &source, &workload, resident_blocks)
            .unwrap_or_else(|e| panic!("{e}"));
        let line = format!(
            "kernel cost: {} {} {}",
            decode.name,
            decode.dtype,
            cost.summary()
        );
        println!("{line}");
        lines += &line;
        lines.push('\n');
        let ampere_cost = KernelCost::new(&ampere, &source, &workload, ampere_resident_blocks)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "    sm_80: {:.3} warp-instructions per element, lanes busy {:.2}",
            ampere_cost.total_warp_instructions() / decode.elements as f64,
            ampere_cost.lanes_busy()
        );
        let h100 = cost.estimate(&kernel_cost::H100);
        assert!(
            h100.output_tbps >= target_tbps(decode.dtype),
            "{}: {:.2} TB/s on an H100, under the {} TB/s target ({} binds)",
            decode.name,
            h100.output_tbps,
            target_tbps(decode.dtype),
            h100.bound
        );
        assert!(
            cost.dram_bytes <= 1.05 * cost.ideal_bytes,
            "{}: {:.3} DRAM bytes per coded and decoded byte",
            decode.name,
            cost.dram_bytes / cost.ideal_bytes
        );
        let mut regions = cost.by_region.clone();
        regions.sort_by(|a, b| b.warp_instructions.total_cmp(&a.warp_instructions));
        let total = cost.total_warp_instructions();
        let regions_total: f64 = regions.iter().map(|r| r.warp_instructions).sum();
        assert!(
            (regions_total - total).abs() <= 1e-9 * total,
            "the regions' warp-instructions add up to {regions_total}, the kernel's to {total}"
        );
        for region in regions.iter().take(10) {
            eprintln!(
                "    decode.cu:{} (variant {}): {} instructions, body issued {:.4} per element: {:.3} ({:.0} %)",
                region.marker,
                region.variant,
                region.instructions,
                region.issues / decode.elements as f64,
                region.warp_instructions / decode.elements as f64,
                100.0 * region.warp_instructions / total
            );
        }
        let per_element = |count: u64| count as f64 / decode.elements as f64;
        let counts = &decode.model.counts;
        eprintln!(
            "    per element: {:.3} load and {:.3} store lines in {:.3} and {:.3} wavefronts, {:.4} shared requests taking {:.3} wavefronts",
            per_element(counts.load_lines),
            per_element(counts.store_lines),
            per_element(counts.load_wavefronts),
            per_element(counts.store_wavefronts),
            per_element(counts.shared_requests),
            per_element(counts.shared_wavefronts),
        );
        for (limit, seconds) in cost.estimate(&kernel_cost::H100).limits {
            eprintln!(
                "    h100 {limit}: {:.2} TB/s",
                decode.output_bytes as f64 / seconds / 1e12
            );
        }
    }
    // For scripts/gpu-check.sh, which prints each beside what it measures.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../kernel-cost.txt");
    std::fs::write(&target, lines).unwrap();
    Ok(())
}

/// Thread blocks of 256 threads an SM of compute capability `capability`
/// holds at once, by the kernel's registers and shared memory.
#[cfg(feature = "cuda")]
fn resident_blocks(capability: u32, sass: &kernel_cost::Sass) -> f64 {
    let occupancy =
        ecfloat::backend::cuda::occupancy(capability, 256, sass.registers, sass.shared_bytes)
            .unwrap_or_else(|| panic!("no SM limits known for {capability}"));
    occupancy * kernel_cost::H100.warps_per_sm / 8.0
}

#[cfg(not(feature = "cuda"))]
fn resident_blocks(_capability: u32, _sass: &kernel_cost::Sass) -> f64 {
    unreachable!("kernel_cost::sass skips without the cuda feature")
}

/// Cases that together cover exceptions, runs across chunks, several rounds, every block
/// mode and every dtype, small enough to run under ThreadSanitizer.
fn sanitized_cases() -> Vec<conformance::Case> {
    let mut cases = Family::SyncExceptions.cases();
    cases.extend(Family::MixedBlockModes.cases());
    cases.extend(
        Family::Lengths
            .cases()
            .into_iter()
            .filter(|case| case.name.starts_with("length_1023")),
    );
    cases
}

/// The subset again, in a child process with the harness built with
/// ThreadSanitizer (which must be loaded before anything else, hence the
/// child): a missing barrier shows as a data race and fails this test.
fn under_thread_sanitizer() -> Ran {
    if std::env::var(SANITIZER).is_ok() {
        let backend = kernel_on_cpu(DispatchLimits::UNBOUNDED)?;
        let cases = sanitized_cases();
        for case in &cases {
            conformance::check_case(backend.as_ref(), case)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        }
        println!("{} cases decoded under ThreadSanitizer", cases.len());
        return Ok(());
    }
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let runtime = Command::new(&compiler)
        .arg("-print-file-name=libtsan.so")
        .output()
        .map_err(|e| harness::absent("cxx", format!("cannot run {compiler}: {e}")))?;
    let runtime = String::from_utf8_lossy(&runtime.stdout).trim().to_string();
    if !Path::new(&runtime).is_absolute() {
        return Err(harness::absent(
            "cxx",
            format!("{compiler} has no ThreadSanitizer runtime (libtsan)"),
        ));
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "under_thread_sanitizer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SANITIZER, "thread")
        .env("LD_PRELOAD", &runtime)
        // Races are looked for in the harness and the kernel, which are
        // instrumented; the Rust code around them is not, so TSan cannot
        // see its synchronisation and must not judge its memcpy calls.
        .env(
            "TSAN_OPTIONS",
            "halt_on_error=1 exitcode=66 report_signal_unsafe=0 ignore_noninstrumented_modules=1",
        )
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("cases decoded under ThreadSanitizer"),
        "under ThreadSanitizer ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!(
        "{}",
        stdout
            .lines()
            .find(|l| l.contains("cases decoded"))
            .unwrap_or_default()
    );
    Ok(())
}
