//! `ecf`: the command line. Parses arguments, calls the library, prints the
//! report; every error becomes one line on stderr and exit status 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use ecfloat::backend;
use ecfloat::codec::FloatKind;
use ecfloat::container::{self, CompressOptions, DecodeChecks};
use ecfloat::tools::{self, analyze, bench, demo, inspect, selftest};
use ecfloat::{Error, Result};

#[derive(Parser)]
#[command(
    name = "ecf",
    version,
    about = "Lossless compression of model weights, decoded on the CPU or GPU"
)]
struct Cli {
    /// Worker threads for encoding and CPU decoding (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// No progress bar (one is shown only on a terminal anyway).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compress a safetensors file (default output: NAME.ecf.safetensors beside it),
    /// or a checkpoint directory of shards (default output: DIR.ecf).
    Compress {
        input: PathBuf,
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the original file, or directory, byte for byte (default output drops `.ecf`).
    Decompress {
        input: PathBuf,
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Per-tensor dtype, shape, exponent entropy, bits per element and the bound.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Decode everything and check every checksum; exit 1 on any mismatch.
    Verify {
        file: PathBuf,
        #[arg(long, default_value = "cpu")]
        backend: String,
        #[arg(long)]
        json: bool,
    },
    /// Encode and decode throughput, against a copy of the same bytes.
    Bench {
        /// A safetensors file (plain or compressed); omit with --synthetic.
        #[arg(required_unless_present = "synthetic")]
        file: Option<PathBuf>,
        /// Only the file's largest float tensor.
        #[arg(long, requires = "file")]
        largest: bool,
        /// Per-group decode latency of a compressed model (FILE or a
        /// directory of shards) kept on the device; with --synthetic, of one
        /// 7B-shaped layer of that dtype.
        #[arg(long, conflicts_with = "largest")]
        model: bool,
        /// Heavy-tailed synthetic weights of this dtype (BF16, F16, F8_E4M3, F8_E5M2, F32).
        #[arg(long, conflicts_with = "file", value_name = "DTYPE")]
        synthetic: Option<String>,
        /// Size of the synthetic tensor, e.g. 1GiB, 256MiB or 1000000.
        #[arg(long, default_value = "256MiB", requires = "synthetic")]
        size: String,
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Timed runs of each operation; the median is reported.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        #[arg(long)]
        json: bool,
    },
    /// The exponent-concentration study: exponent histograms and entropy, the
    /// fitted stability index α and the bits per weight it implies per dtype.
    Analyze {
        /// A safetensors file (plain or compressed) or a directory of them.
        path: PathBuf,
        /// Draw the exponent distributions and entropy bounds as SVG.
        #[arg(long, value_name = "OUT.svg")]
        plot: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run the conformance cases on a backend (or all), comparing every bit.
    Selftest {
        #[arg(long, default_value = "all")]
        backend: String,
        /// Also check every float tensor of these safetensors files.
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List the backends this build can use, with their devices and limits.
    Backends {
        #[arg(long)]
        json: bool,
    },
    /// Compress a built-in sample model, decode it on every backend, check every bit.
    Demo {
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ecf: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build_global()
            .map_err(|e| Error::Usage(format!("cannot start {threads} threads: {e}")))?;
    }
    match cli.command {
        Command::Compress {
            input,
            output,
            force,
            json,
        } => {
            let output = output.unwrap_or_else(|| container::compressed_name(&input));
            let total = source_size(&input)?;
            let bar = progress_bar(cli.quiet, total, "compressing");
            let options = CompressOptions {
                force,
                progress: bar.progress(),
                ..CompressOptions::default()
            };
            let (source_bytes, compressed_bytes, seconds, tensors) = if input.is_dir() {
                let report = container::compress_directory(&input, &output, &options)?;
                let tensors: Vec<_> = report
                    .shards
                    .iter()
                    .flat_map(|(_, s)| s.tensors.iter().cloned())
                    .collect();
                (
                    report.source_bytes,
                    report.output_bytes,
                    report.seconds,
                    tensors,
                )
            } else {
                let report = container::compress_file(&input, &output, &options)?;
                (
                    report.source_bytes,
                    report.compressed_bytes,
                    report.seconds,
                    report.tensors,
                )
            };
            bar.finish();
            let coded = tensors.iter().filter(|t| t.coded).count();
            let ratio = compressed_bytes as f64 / source_bytes.max(1) as f64;
            if json {
                print_json(&serde_json::json!({
                    "input": input,
                    "output": output,
                    "source_bytes": source_bytes,
                    "compressed_bytes": compressed_bytes,
                    "ratio": ratio,
                    "coded_tensors": coded,
                    "raw_tensors": tensors.len() - coded,
                    "seconds": seconds,
                    "peak_rss_bytes": tools::peak_rss_bytes(),
                }));
            } else {
                println!(
                    "{} -> {}: {} -> {} ({:.2}% of the original), {} of {} tensors coded, {:.2} s ({:.0} MB/s)",
                    input.display(),
                    output.display(),
                    megabytes(source_bytes),
                    megabytes(compressed_bytes),
                    100.0 * ratio,
                    coded,
                    tensors.len(),
                    seconds,
                    source_bytes as f64 / seconds / 1e6,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Decompress {
            input,
            output,
            force,
            json,
        } => {
            let output = match output {
                Some(output) => output,
                None => container::decompressed_name(&input)?,
            };
            let (bytes, seconds) = if input.is_dir() {
                let bar = progress_bar(
                    cli.quiet,
                    container::directory::decoded_shard_bytes(&input)?,
                    "decompressing",
                );
                let report =
                    container::decompress_directory(&input, &output, force, &bar.progress())?;
                bar.finish();
                (report.output_bytes, report.seconds)
            } else {
                let total = container::CompressedFile::open(&input)?.source_len();
                let bar = progress_bar(cli.quiet, total, "decompressing");
                let checks = container::decompress_file(&input, &output, force, &bar.progress())?;
                bar.finish();
                (checks.source_bytes, checks.seconds)
            };
            if json {
                print_json(&serde_json::json!({
                    "input": input,
                    "output": output,
                    "bytes": bytes,
                    "seconds": seconds,
                    "peak_rss_bytes": tools::peak_rss_bytes(),
                }));
            } else {
                println!(
                    "{} -> {}: {} rebuilt and checked in {:.2} s ({:.0} MB/s)",
                    input.display(),
                    output.display(),
                    megabytes(bytes),
                    seconds,
                    bytes as f64 / seconds / 1e6
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { file, json } => {
            let inspection = inspect::inspect(&file)?;
            if json {
                print_json(&inspection);
            } else {
                print_inspection(&inspection);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            file,
            backend,
            json,
        } => {
            let backend = backend::open(&backend)?;
            let shards = if file.is_dir() {
                let bar = progress_bar(
                    cli.quiet,
                    container::directory::decoded_shard_bytes(&file)?,
                    "verifying",
                );
                let shards =
                    tools::verify::verify_directory_on(&file, backend.as_ref(), &bar.progress())?;
                bar.finish();
                shards
                    .into_iter()
                    .map(|(shard, checks)| (file.join(shard), checks))
                    .collect()
            } else {
                let total = container::CompressedFile::open(&file)?.source_len();
                let bar = progress_bar(cli.quiet, total, "verifying");
                let checks =
                    tools::verify::verify_file_on(&file, backend.as_ref(), &bar.progress())?;
                bar.finish();
                vec![(file.clone(), checks)]
            };
            if json {
                let reports: Vec<_> = shards
                    .iter()
                    .map(|(path, checks)| verify_json(path, backend.name(), checks))
                    .collect();
                print_json(&serde_json::json!({
                    "ok": shards.iter().all(|(_, c)| c.all_ok()),
                    "files": reports,
                }));
            } else {
                for (path, checks) in &shards {
                    print_verify(path, backend.name(), checks);
                }
            }
            Ok(if shards.iter().all(|(_, c)| c.all_ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Bench {
            file,
            largest,
            model,
            synthetic,
            size,
            backend,
            repeats,
            json,
        } => {
            if model {
                let backend = bench_backend(&backend)?;
                let scratch = tempfile::tempdir().map_err(|e| Error::io(Path::new("."), e))?;
                let path = match (&file, &synthetic) {
                    (Some(file), _) => file.clone(),
                    (None, Some(dtype)) => {
                        let kind = parse_dtype(dtype)?;
                        let source = scratch.path().join("layer.safetensors");
                        bench::write_synthetic_layer(&source, kind)?;
                        let compressed = scratch.path().join("layer.ecf.safetensors");
                        container::compress_file(
                            &source,
                            &compressed,
                            &CompressOptions::default(),
                        )?;
                        compressed
                    }
                    (None, None) => unreachable!("clap requires a file or --synthetic"),
                };
                let report = bench::bench_model(&path, backend.as_ref(), repeats)?;
                if json {
                    print_json(&report);
                } else {
                    print_model_bench(&report);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let workload = match (&file, synthetic) {
                (Some(file), _) if largest => bench::Workload::LargestTensor(file),
                (Some(file), _) => bench::Workload::File(file),
                (None, Some(dtype)) => bench::Workload::Synthetic {
                    kind: FloatKind::from_safetensors_name(&dtype.to_uppercase()).ok_or_else(
                        || {
                            Error::Usage(format!(
                                "unknown dtype {dtype:?}; choose BF16, F16, F8_E4M3, F8_E5M2 or F32"
                            ))
                        },
                    )?,
                    bytes: parse_size(&size)?,
                },
                (None, None) => unreachable!("clap requires a file or --synthetic"),
            };
            let backend = bench_backend(&backend)?;
            let report = bench::bench(&workload, backend.as_ref(), repeats)?;
            if json {
                print_json(&report);
            } else {
                print_bench(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Analyze { path, plot, json } => {
            let report = analyze::analyze(&path)?;
            if let Some(plot) = &plot {
                analyze::plot(&report, plot)?;
            }
            if json {
                print_json(&report);
            } else {
                print_analysis(&report, plot.as_deref());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Selftest {
            backend,
            files,
            json,
        } => {
            let report = selftest::run(&backend, &files, |result| {
                if !json {
                    match &result.error {
                        None => println!("PASS {:<5} {}", result.backend, result.case),
                        Some(error) => {
                            println!("FAIL {:<5} {}: {error}", result.backend, result.case)
                        }
                    }
                }
            })?;
            if json {
                print_json(&report);
            } else {
                for skipped in &report.skipped {
                    println!("SKIP {:<5} {}", skipped.backend, skipped.reason);
                }
                println!(
                    "{} cases passed, {} failed, {} backends skipped",
                    report.results.len() - report.failures(),
                    report.failures(),
                    report.skipped.len()
                );
            }
            Ok(if report.failures() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Backends { json } => {
            let listing: Vec<serde_json::Value> = backend::BACKEND_NAMES
                .iter()
                .map(|&name| match backend::open(name) {
                    Ok(backend) => serde_json::json!({"backend": name, "available": true, "info": backend.info()}),
                    Err(Error::BackendUnavailable { reason, .. }) => serde_json::json!({"backend": name, "available": false, "reason": reason}),
                    Err(error) => serde_json::json!({"backend": name, "available": false, "reason": error.to_string()}),
                })
                .collect();
            if json {
                print_json(&listing);
            } else {
                for entry in &listing {
                    let name = entry["backend"].as_str().unwrap_or_default();
                    if entry["available"] == true {
                        let info = &entry["info"];
                        println!("{name}: {}", info["device"].as_str().unwrap_or_default());
                        println!(
                            "    driver: {}",
                            info["driver"].as_str().unwrap_or_default()
                        );
                        for (limit, value) in info["limits"].as_object().into_iter().flatten() {
                            println!("    {limit}: {value}");
                        }
                    } else {
                        println!("{name}: {}", entry["reason"].as_str().unwrap_or_default());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { repeats, json } => {
            let report = demo::run(repeats)?;
            if json {
                print_json(&report);
            } else {
                print_demo(&report);
            }
            Ok(if report.failures() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn parse_dtype(dtype: &str) -> Result<FloatKind> {
    FloatKind::from_safetensors_name(&dtype.to_uppercase()).ok_or_else(|| {
        Error::Usage(format!(
            "unknown dtype {dtype:?}; choose BF16, F16, F8_E4M3, F8_E5M2 or F32"
        ))
    })
}

/// `1GiB`, `256MiB`, `64KiB`, `1GB`, `1000000` → bytes.
fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(Error::Usage(format!("cannot read the size {text:?}"))),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| Error::Usage(format!("cannot read the size {text:?}")))
}

/// Bytes to process for a progress total: a file's size, or the sum of a
/// directory's shard sizes.
fn source_size(input: &Path) -> Result<u64> {
    if !input.is_dir() {
        return Ok(std::fs::metadata(input).map(|m| m.len()).unwrap_or(0));
    }
    let entries = std::fs::read_dir(input).map_err(|e| Error::io(input, e))?;
    Ok(entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .ends_with(".safetensors")
        })
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum())
}

/// A progress bar on stderr when it is a terminal and not `--quiet`.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn progress(&self) -> container::Progress {
        match &self.0 {
            Some(bar) => {
                let bar = bar.clone();
                container::Progress::new(move |bytes| bar.inc(bytes))
            }
            None => container::Progress::default(),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn progress_bar(quiet: bool, total: u64, what: &'static str) -> Bar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return Bar(None);
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what);
    Bar(Some(bar))
}

fn megabytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialise")
    );
}

fn optional(value: Option<f64>, precision: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.precision$}"))
}

fn print_inspection(inspection: &inspect::FileInspection) {
    println!(
        "{}: {}",
        inspection.path,
        match inspection.format_version {
            Some(version) => format!("ecfloat-compressed (format version {version})"),
            None => "plain safetensors (not compressed)".to_string(),
        }
    );
    println!(
        "{:<48} {:<8} {:>16} {:>10} {:>5} {:>8} {:>8} {:>8}",
        "tensor", "dtype", "shape", "elements", "coded", "H(exp)", "bits/el", "bound"
    );
    for t in &inspection.tensors {
        let shape = format!("{:?}", t.shape);
        println!(
            "{:<48} {:<8} {:>16} {:>10} {:>5} {:>8} {:>8.3} {:>8}",
            t.name,
            t.dtype,
            shape,
            t.elements,
            if t.coded { "yes" } else { "no" },
            optional(t.exponent_entropy, 3),
            t.bits_per_element,
            optional(t.bound_bits_per_element, 3),
        );
    }
    println!(
        "total: {} tensors, {} source, {} on disk, ratio {:.4} (exponent-entropy bound {:.4})",
        inspection.tensors.len(),
        megabytes(inspection.source_bytes),
        megabytes(inspection.file_bytes),
        inspection.ratio,
        inspection.bound_ratio
    );
}

fn print_verify(file: &Path, backend: &str, checks: &DecodeChecks) {
    for tensor in &checks.tensors {
        if let Some(error) = &tensor.error {
            println!("FAIL {error}");
        }
    }
    let failed = checks.tensors.iter().filter(|t| t.error.is_some()).count();
    let coded = checks.tensors.iter().filter(|t| t.coded).count();
    println!(
        "{}: {} ({} tensors, {} coded, decoded on {backend}; {} failed; file checksum {}) in {:.2} s",
        file.display(),
        if checks.all_ok() { "OK" } else { "FAILED" },
        checks.tensors.len(),
        coded,
        failed,
        if checks.file_matches() {
            "matches"
        } else {
            "DIFFERS"
        },
        checks.seconds
    );
}

fn verify_json(file: &Path, backend: &str, checks: &DecodeChecks) -> serde_json::Value {
    serde_json::json!({
        "file": file,
        "backend": backend,
        "ok": checks.all_ok(),
        "file_checksum_matches": checks.file_matches(),
        "seconds": checks.seconds,
        "tensors": checks.tensors.iter().map(|t| serde_json::json!({
            "name": t.name,
            "coded": t.coded,
            "bytes": t.bytes,
            "ok": t.error.is_none(),
            "error": t.error.as_ref().map(|e| e.to_string()),
        })).collect::<Vec<_>>(),
    })
}

/// The backend `bench` times. On the CPU it decodes as `decompress` does,
/// checking the sync metadata its own lanes use, not every chunk's as
/// `verify` does: the speed to compare with other tools' decompression.
fn bench_backend(name: &str) -> ecfloat::Result<Box<dyn backend::Backend>> {
    let backend = backend::open(name)?;
    Ok(if backend.name() == "cpu" {
        Box::new(backend::CpuBackend::with_sync_check(
            ecfloat::codec::decode::SyncCheck::Lanes,
        ))
    } else {
        backend
    })
}

fn print_bench(report: &bench::BenchReport) {
    println!(
        "{}: {} float tensors, {} decoded, {} coded (ratio {:.4})",
        report.file,
        report.tensors,
        megabytes(report.decoded_bytes),
        megabytes(report.coded_bytes),
        report.coded_bytes as f64 / report.decoded_bytes.max(1) as f64
    );
    println!(
        "backend {} on {} ({} threads), median of {} runs:",
        report.backend, report.device, report.threads, report.decode.runs
    );
    for (what, timing) in [
        ("encode", &report.encode),
        ("decode", &report.decode),
        ("copy", &report.copy),
    ] {
        println!(
            "  {what:<7} {:>8.3} GB/s  ({:.2} ms, {})",
            timing.gb_per_s,
            timing.median_seconds * 1e3,
            timing.clock
        );
    }
    println!("  decode / copy = {:.3}", report.decode_vs_copy);
}

fn print_analysis(report: &analyze::AnalysisReport, plot: Option<&Path>) {
    let bounds = |b: Option<[f64; 2]>| {
        b.map_or("-".to_string(), |[low, high]| {
            format!("{low:.2}..{high:.2}")
        })
    };
    let width = report
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!(
        "{:<width$} {:<8} {:>10} {:>7} {:>9} {:>6} {:>12}",
        "tensor", "dtype", "elements", "H(exp)", "distinct", "alpha", "H bounds"
    );
    for t in &report.tensors {
        println!(
            "{:<width$} {:<8} {:>10} {:>7.3} {:>9} {:>6} {:>12}",
            t.name,
            t.dtype,
            t.elements,
            t.exponent_entropy,
            t.distinct_exponents,
            optional(t.alpha, 2),
            bounds(t.entropy_bounds)
        );
    }
    for d in &report.dtypes {
        println!(
            "{}: {} tensors, {} elements, exponent entropy {:.3} bits over {} distinct exponents",
            d.dtype, d.tensors, d.elements, d.exponent_entropy, d.distinct_exponents
        );
    }
    if let (Some(alpha), Some(range)) = (report.alpha, report.entropy_bounds) {
        println!(
            "stable-law index α = {alpha:.3} (element-weighted); exponent entropy bounds {}",
            bounds(Some(range))
        );
        for limit in &report.limits {
            println!(
                "  {:<8} {} raw bits + exponent → {:.2}..{:.2} bits per weight",
                limit.dtype, limit.raw_bits, limit.bits_per_weight[0], limit.bits_per_weight[1]
            );
        }
    }
    if let Some(plot) = plot {
        println!("plot: {}", plot.display());
    }
}

fn print_model_bench(report: &bench::ModelBenchReport) {
    let clock = report
        .groups
        .first()
        .map_or(String::new(), |g| format!(", timed by {}", g.clock));
    println!(
        "{} on {} ({}), {} runs per group{clock}:",
        report.model, report.backend, report.device, report.runs
    );
    println!(
        "  {:<40} {:>8} {:>12} {:>11} {:>11} {:>9}",
        "group", "tensors", "decoded", "median ms", "p99 ms", "GB/s"
    );
    for group in &report.groups {
        println!(
            "  {:<40} {:>8} {:>12} {:>11.3} {:>11.3} {:>9.2}",
            group.group,
            group.tensors,
            megabytes(group.decoded_bytes),
            group.median_ms,
            group.p99_ms,
            group.gb_per_s
        );
    }
    let memory = &report.memory;
    let verdict = if report.saved_bytes >= 0 {
        format!("{} saved", megabytes(report.saved_bytes as u64))
    } else {
        format!(
            "{} more: its largest group is too large a part of it",
            megabytes(report.saved_bytes.unsigned_abs())
        )
    };
    println!(
        "  memory: {} resident (compressed) + {} scratch (two groups of {}) = {} peak, against {} uncompressed: {verdict}",
        megabytes(memory.resident_bytes),
        megabytes(memory.scratch_bytes),
        megabytes(memory.largest_group_bytes),
        megabytes(memory.peak_bytes),
        megabytes(memory.uncompressed_bytes),
    );
}

fn print_demo(report: &demo::DemoReport) {
    let inspection = &report.inspection;
    println!(
        "ecfloat demo: a heavy-tailed sample model, {:.1} M parameters in BF16, FP16, FP8 E4M3, FP8 E5M2 and FP32",
        report.parameters as f64 / 1e6
    );
    println!(
        "compressed {} -> {}: ratio {:.4}, exponent-entropy bound {:.4}, in {:.2} s",
        megabytes(inspection.source_bytes),
        megabytes(inspection.file_bytes),
        inspection.ratio,
        inspection.bound_ratio,
        report.compress_seconds
    );
    for run in &report.backends {
        if let Some(reason) = &run.skipped {
            println!("  {:<5} skipped: {reason}", run.backend);
        }
        if let Some(error) = &run.error {
            println!("  {:<5} FAILED: {error}", run.backend);
        }
        if let Some(bench) = &run.bench {
            println!(
                "  {:<5} {:<40} every bit identical; decode {:.2} GB/s = {:.2} x copy ({:.2} GB/s); encode {:.2} GB/s",
                run.backend,
                bench.device,
                bench.decode.gb_per_s,
                bench.decode_vs_copy,
                bench.copy.gb_per_s,
                bench.encode.gb_per_s
            );
        }
    }
}
