//! `ecf`: the command line. Parses arguments, runs the command's library
//! function (`ecfloat::tools`) and prints its report as text or, with
//! `--json`, as JSON. Every error becomes one line on stderr and exit status
//! 1; a closed standard output ends the program quietly.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};

use ecfloat::Error;
use ecfloat::backend::BACKEND_CHOICES;
use ecfloat::codec::FloatKind;
use ecfloat::container::{self, Progress, ProgressSink};
use ecfloat::tools::{
    self, Report, analyze, backends, bench, compress, decompress, demo, inspect, selftest, verify,
};

const EXAMPLES: &str = "\
Examples:
  ecf compress model.safetensors           # writes model.ecf.safetensors
  ecf compress checkpoint/ -o small/       # every shard of a checkpoint directory
  ecf decompress model.ecf.safetensors     # writes model.safetensors, byte for byte
  ecf verify model.ecf.safetensors --backend auto   # on a GPU where there is one (default: cpu)
  ecf inspect model.ecf.safetensors --json
  ecf bench model.safetensors --backend cuda
  ecf selftest                             # every backend present, every bit checked";

#[derive(Parser)]
#[command(
    name = "ecf",
    version,
    about = "Lossless compression of model weights, decoded on the CPU or GPU",
    after_help = EXAMPLES
)]
struct Cli {
    /// Worker threads for encoding and CPU decoding, by every command that
    /// reads or writes weights (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// No progress bar (one is shown only when stderr is a terminal anyway).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// `--json`, shared by every command that prints a report.
#[derive(Args)]
struct JsonFlag {
    /// Print one JSON document on stdout instead of text (fields: `ecf docs json`).
    #[arg(long)]
    json: bool,
}

/// Where a command writes.
#[derive(Args)]
struct OutputArgs {
    /// Where to write (default: derived from INPUT, beside it).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Replace OUT if it exists (only a regular file or a directory ecf
    /// could have written; never a device, FIFO or the input itself).
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Compress a safetensors file, or every shard of a checkpoint directory.
    #[command(after_help = "\
Default output: NAME.safetensors -> NAME.ecf.safetensors; directory DIR -> DIR.ecf.
A directory's other files (config, tokenizer) are copied; its index is rewritten.

Examples:
  ecf compress model.safetensors
  ecf compress meta-llama-3-8b/ -o llama.ecf")]
    Compress {
        /// The safetensors file or checkpoint directory to compress.
        #[arg(value_name = "INPUT")]
        input: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Rebuild the original file, or directory, byte for byte, checking
    /// every checksum before anything is kept.
    #[command(after_help = "\
Default output: NAME.ecf.safetensors or NAME.ecf -> NAME.safetensors; directory DIR.ecf -> DIR.

Example:
  ecf decompress model.ecf.safetensors -o model.safetensors")]
    Decompress {
        /// The compressed file or directory.
        #[arg(value_name = "INPUT")]
        input: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Per-tensor dtype, shape, exponent entropy, bits per element and the
    /// bound, of a compressed or plain file or of every file of a directory.
    Inspect {
        /// A safetensors file (compressed or plain) or a directory of them.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Decode everything and check every checksum; exit 1 on any mismatch.
    #[command(after_help = "\
Example:
  ecf verify model.ecf.safetensors --backend wgpu")]
    Verify {
        /// A compressed file or directory.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        #[command(flatten)]
        backend: BackendArg,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Encode and decode throughput, against a copy of the same bytes on the
    /// same device.
    #[command(after_help = "\
Examples:
  ecf bench model.safetensors --backend cuda
  ecf bench --synthetic bf16 --size 1GiB
  ecf bench --model llama.ecf --backend cuda      # per-layer decode latency")]
    Bench {
        /// A safetensors file (plain or compressed) or a directory of them;
        /// omit with --synthetic.
        #[arg(required_unless_present = "synthetic", value_name = "PATH")]
        path: Option<PathBuf>,
        /// Only the largest float tensor.
        #[arg(long, requires = "path")]
        largest: bool,
        /// Per-group decode latency of a compressed model (PATH) kept on the
        /// device; with --synthetic, of one 7B-shaped layer of that dtype.
        #[arg(long, conflicts_with = "largest")]
        model: bool,
        /// Heavy-tailed synthetic weights of this dtype.
        #[arg(long, conflicts_with = "path", value_name = "DTYPE", value_parser = parse_dtype)]
        synthetic: Option<FloatKind>,
        /// Size of the synthetic tensor: 1GiB, 256MiB, 500MB or 1000000 (bytes).
        #[arg(long, default_value = "256MiB", requires = "synthetic", value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        backend: BackendArg,
        /// Timed runs of each operation; the median is reported.
        #[arg(long, default_value_t = 5, value_name = "N")]
        repeats: usize,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// The exponent-concentration study: exponent histograms and entropy, the
    /// fitted stability index α and the bits per weight it implies per dtype.
    Analyze {
        /// A safetensors file (plain or compressed) or a directory of them.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Draw the exponent distributions and the entropies the α-stable
        /// model predicts against those measured, as SVG.
        #[arg(long, value_name = "OUT.svg")]
        plot: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Run the conformance cases on a backend (or all), comparing every bit
    /// with the original.
    Selftest {
        /// The backend to check, or all of them (those absent are skipped).
        #[arg(long, default_value = "all", value_name = "BACKEND",
              value_parser = PossibleValuesParser::new(["all", "cpu", "wgpu", "cuda"]))]
        backend: String,
        /// Also check every float tensor of these safetensors files or
        /// directories.
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List the backends this build can use, with their devices and limits,
    /// and the one `--backend auto` picks.
    Backends {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print a document: the fields of every command's --json report
    /// (json), or the compressed file format (format).
    Docs {
        #[arg(value_name = "DOCUMENT", value_parser = PossibleValuesParser::new(ecfloat::tools::DOCUMENTS.map(|(name, _)| name)))]
        document: String,
    },
    /// Compress a built-in sample model, decode it on every backend, check
    /// every bit.
    Demo {
        /// Timed runs of each operation; the median is reported.
        #[arg(long, default_value_t = 5, value_name = "N")]
        repeats: usize,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `--backend`, for the commands that decode.
#[derive(Args)]
struct BackendArg {
    /// Where to decode: auto picks CUDA, else wgpu on a hardware GPU, else
    /// the CPU (`ecf backends` says which).
    #[arg(long = "backend", default_value = "cpu", value_name = "BACKEND",
          value_parser = PossibleValuesParser::new(BACKEND_CHOICES))]
    name: String,
}

/// Why `ecf` stops early.
enum Stop {
    Failed(Error),
    /// The reader of standard output went away (`ecf … | head`).
    OutputClosed,
}

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        Stop::Failed(error)
    }
}

fn main() -> ExitCode {
    keep_mesa_quiet();
    remove_partial_outputs_on_signals();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Stop::OutputClosed) => ExitCode::SUCCESS,
        Err(Stop::Failed(error)) => {
            // If stderr is gone too there is no one left to tell.
            let _ = writeln!(io::stderr(), "ecf: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Mesa's Vulkan device-selection layer prints "error: XDG_RUNTIME_DIR is
/// invalid or not set" when it has no session directory to look for a
/// display in, though ecf never draws. Without one, that layer has nothing
/// to select by, so it is switched off by its own variable.
fn keep_mesa_quiet() {
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    if !runtime_dir.is_some_and(|dir| dir.is_dir()) && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // SAFETY: called first thing in main, before any thread exists, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// On SIGINT, SIGTERM or SIGHUP, removes the outputs being written (their
/// `.ecf-partial-*` temporary files and directories), then dies of the
/// signal as if it had not been caught, so the shell sees why.
fn remove_partial_outputs_on_signals() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                container::write::remove_partial_outputs();
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        });
    }
}

fn run(cli: Cli) -> std::result::Result<ExitCode, Stop> {
    if let Some(threads) = cli.threads {
        tools::use_threads(threads)?;
    }
    let quiet = cli.quiet;
    match cli.command {
        Command::Compress {
            input,
            output,
            json,
        } => {
            let bar = Bar::new(quiet, "compressing");
            let summary = compress::compress(
                &input,
                output.output.as_deref(),
                output.force,
                bar.progress(),
            );
            bar.finish();
            emit(&summary?, json.json)
        }
        Command::Decompress {
            input,
            output,
            json,
        } => {
            let bar = Bar::new(quiet, "decompressing");
            let summary = decompress::decompress(
                &input,
                output.output.as_deref(),
                output.force,
                &bar.progress(),
            );
            bar.finish();
            emit(&summary?, json.json)
        }
        Command::Inspect { path, json } => emit(&inspect::inspect(&path)?, json.json),
        Command::Verify {
            path,
            backend,
            json,
        } => {
            let backend = ecfloat::backend::open(&backend.name)?;
            let bar = Bar::new(quiet, "verifying");
            let report = verify::verify(&path, backend.as_ref(), &bar.progress());
            bar.finish();
            emit(&report?, json.json)
        }
        Command::Bench {
            path,
            largest,
            model,
            synthetic,
            size,
            backend,
            repeats,
            json,
        } => {
            let backend = ecfloat::backend::open(&backend.name)?;
            if model {
                let report = match (&path, synthetic) {
                    (Some(path), _) => bench::bench_model(path, backend.as_ref(), repeats)?,
                    (None, Some(kind)) => {
                        bench::bench_synthetic_layer(kind, backend.as_ref(), repeats)?
                    }
                    (None, None) => unreachable!("clap requires a path or --synthetic"),
                };
                return emit(&report, json.json);
            }
            let workload = match (&path, synthetic) {
                (Some(path), _) if largest => bench::Workload::LargestTensor(path),
                (Some(path), _) => bench::Workload::File(path),
                (None, Some(kind)) => bench::Workload::Synthetic { kind, bytes: size },
                (None, None) => unreachable!("clap requires a path or --synthetic"),
            };
            emit(
                &bench::bench(&workload, backend.as_ref(), repeats)?,
                json.json,
            )
        }
        Command::Analyze { path, plot, json } => {
            emit(&analyze::analyze(&path, plot.as_deref())?, json.json)
        }
        Command::Selftest {
            backend,
            paths,
            json,
        } => {
            let mut closed = false;
            let report = selftest::run(&backend, &paths, |result| {
                if !json.json && !closed {
                    closed = write_stdout(|out| result.write_text(out)).is_err();
                }
            })?;
            if closed {
                return Err(Stop::OutputClosed);
            }
            if json.json {
                emit(&report, true)
            } else {
                write_stdout(|out| report.write_summary(out))?;
                Ok(exit_code(&report))
            }
        }
        Command::Backends { json } => emit(&backends::list(), json.json),
        Command::Demo { repeats, json } => emit(&demo::run(repeats)?, json.json),
        Command::Docs { document } => {
            let text = ecfloat::tools::document(&document)?;
            write_stdout(|out| out.write_all(text.as_bytes()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_dtype(name: &str) -> std::result::Result<FloatKind, String> {
    name.parse()
}

/// `1GiB`, `256MiB`, `64KiB`, `1GB`, `500MB`, `1000000` → bytes.
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unreadable = || format!("cannot read the size {text:?} (try 1GiB, 256MiB or 1000000)");
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(unreadable()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(unreadable)
}

/// Prints `report` on stdout, as JSON or text, and gives its exit status.
fn emit(report: &impl Report, json: bool) -> std::result::Result<ExitCode, Stop> {
    write_stdout(|out| {
        if json {
            serde_json::to_writer_pretty(&mut *out, report).map_err(io::Error::from)?;
            writeln!(out)
        } else {
            report.write_text(out)
        }
    })?;
    Ok(exit_code(report))
}

fn exit_code(report: &impl Report) -> ExitCode {
    if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `write` on stdout and flushes it: a closed pipe stops the program
/// quietly, any other failure (a full disk) is an error.
fn write_stdout(
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> std::result::Result<(), Stop> {
    let mut out = io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Err(Stop::OutputClosed),
        Err(error) => Err(Stop::Failed(Error::io(
            std::path::Path::new("standard output"),
            error,
        ))),
    }
}

/// A progress bar on stderr when it is a terminal and not `--quiet`, in the
/// decimal units of every other figure ecf prints.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(quiet: bool, what: &'static str) -> Self {
        use std::io::IsTerminal;
        if quiet || !io::stderr().is_terminal() {
            return Bar(indicatif::ProgressBar::hidden());
        }
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what);
        Bar(bar)
    }

    fn progress(&self) -> Progress {
        if self.0.is_hidden() {
            return Progress::default();
        }
        Progress::new(BarSink(self.0.clone()))
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

struct BarSink(indicatif::ProgressBar);

impl ProgressSink for BarSink {
    fn begin(&self, total: u64) {
        self.0.set_length(total);
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_both_unit_systems() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("256 MiB"), Ok(256 << 20));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1000000"), Ok(1_000_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
