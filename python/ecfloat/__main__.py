"""``python -m ecfloat``: the ``ecf`` command line's ``compress``,
``decompress``, ``verify`` and ``inspect``, with its arguments, options
and output, for an installation that has the Python package and not the
``ecf`` binary.

Each command prints its report as text or, with ``--json``, as the JSON
document ``ecf`` prints (fields: ``python -m ecfloat docs json``). Exit status: 0 on success,
1 on an error (one line on stderr) or a failed check, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

PROG = "ecf"

EXAMPLES = """\
Examples:
  python -m ecfloat compress model.safetensors           # writes model.ecf.safetensors
  python -m ecfloat compress checkpoint/ -o small/       # every shard of a checkpoint directory
  python -m ecfloat decompress model.ecf.safetensors     # writes model.safetensors, byte for byte
  python -m ecfloat verify model.ecf.safetensors --backend auto   # on a GPU where there is one (default: cpu)
  python -m ecfloat inspect model.ecf.safetensors --json"""

BACKEND_CHOICES = ["auto", "cpu", "wgpu", "cuda"]

JSON_HELP = "Print one JSON document on stdout instead of text (fields: `ecf docs json`)"
OUTPUT_HELP = "Where to write (default: derived from INPUT, beside it)"
FORCE_HELP = (
    "Replace OUT if it exists (only a regular file or a directory ecf could have written; never a device, FIFO or the"
    " input itself)"
)
THREADS_HELP = (
    "Worker threads for encoding and CPU decoding, by every command that reads or writes weights (default: all cores)"
)
QUIET_HELP = "No progress bar (one is shown only when stderr is a terminal anyway)"


def _thread_count(text: str) -> int:
    try:
        count = int(text, 10)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: not a whole number of threads")
    return count


def _add_global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """``--threads`` and ``--quiet``, accepted before or after the command
    as ``ecf`` accepts them. Only the top-level parser sets defaults, so a
    subcommand's parser does not reset what was given before it."""
    keep = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--threads", type=_thread_count, metavar="N", help=THREADS_HELP, **keep)
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP, **keep)


def _version() -> str:
    from . import _ecfloat

    version = getattr(_ecfloat, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as installed_version

            version = installed_version("ecfloat")
        except Exception:
            version = "unknown"
    return f"{PROG} {version}"


class _VersionAction(argparse.Action):
    """``-V/--version``, reading the version only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="Print version")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog=PROG,
        description="Lossless compression of model weights, decoded on the CPU or GPU: the compress, decompress,"
        " inspect, verify and docs commands of the ecf command line",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    top.add_argument("-V", "--version", action=_VersionAction)
    _add_global_options(top, defaults=True)
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, epilog: Optional[str] = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=formatter)
        _add_global_options(sub, defaults=False)
        return sub

    compress = command(
        "compress",
        "Compress a safetensors file, or every shard of a checkpoint directory",
        "Default output: NAME.safetensors -> NAME.ecf.safetensors; directory DIR -> DIR.ecf.\n"
        "A directory's other files (config, tokenizer) are copied; its index is rewritten.\n\n"
        "Examples:\n"
        "  python -m ecfloat compress model.safetensors\n"
        "  python -m ecfloat compress meta-llama-3-8b/ -o llama.ecf",
    )
    compress.add_argument("input", metavar="INPUT", help="The safetensors file or checkpoint directory to compress")
    _add_output_options(compress)

    decompress = command(
        "decompress",
        "Rebuild the original file, or directory, byte for byte, checking every checksum before anything is kept",
        "Default output: NAME.ecf.safetensors or NAME.ecf -> NAME.safetensors; directory DIR.ecf -> DIR.\n\n"
        "Example:\n"
        "  python -m ecfloat decompress model.ecf.safetensors -o model.safetensors",
    )
    decompress.add_argument("input", metavar="INPUT", help="The compressed file or directory")
    _add_output_options(decompress)

    inspect = command(
        "inspect",
        "Per-tensor dtype, shape, exponent entropy, bits per element and the bound, of a compressed or plain file"
        " or of every file of a directory",
    )
    inspect.add_argument("path", metavar="PATH", help="A safetensors file (compressed or plain) or a directory of them")
    inspect.add_argument("--json", action="store_true", help=JSON_HELP)

    verify = command(
        "verify",
        "Decode everything and check every checksum; exit 1 on any mismatch",
        "Example:\n  python -m ecfloat verify model.ecf.safetensors --backend cuda",
    )
    verify.add_argument("path", metavar="PATH", help="A compressed file or directory")
    verify.add_argument(
        "--backend",
        default="cpu",
        choices=BACKEND_CHOICES,
        metavar="BACKEND",
        help="Where to decode: auto picks CUDA, else wgpu on a hardware GPU, else the CPU (`ecf backends` says"
        " which) [default: cpu] [possible values: auto, cpu, wgpu, cuda]",
    )
    verify.add_argument("--json", action="store_true", help=JSON_HELP)

    docs = command(
        "docs",
        "Print a document: the fields of every command's --json report (json), or the compressed file format (format)",
    )
    docs.add_argument("document", metavar="DOCUMENT", choices=["json", "format"], help="json or format")
    return top


def _add_output_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("-o", "--output", metavar="OUT", help=OUTPUT_HELP)
    command.add_argument("--force", action="store_true", help=FORCE_HELP)
    command.add_argument("--json", action="store_true", help=JSON_HELP)


def run(arguments: argparse.Namespace) -> int:
    """Runs the parsed command, printing its report; returns the exit
    status. The extension's errors propagate."""
    from . import _ecfloat

    if arguments.threads is not None:
        _ecfloat.use_threads(arguments.threads)
    # No command here draws a progress bar, so --quiet has nothing to hide.
    if arguments.command == "docs":
        sys.stdout.write(_ecfloat.document(arguments.document))
        sys.stdout.flush()
        return 0
    if arguments.command == "compress":
        report = json.loads(_ecfloat.compress(arguments.input, arguments.output, arguments.force))
        text: Callable[[Dict[str, Any]], List[str]] = compress_text
    elif arguments.command == "decompress":
        report = json.loads(_ecfloat.decompress(arguments.input, arguments.output, arguments.force))
        text = decompress_text
    elif arguments.command == "inspect":
        report = json.loads(_ecfloat.inspect(arguments.path))
        text = inspect_text
    else:
        report = json.loads(_ecfloat.verify(arguments.path, arguments.backend))
        text = verify_text
    if arguments.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for line in text(report):
            print(line)
    sys.stdout.flush()
    return 0 if report.get("ok", True) else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: parses ``argv`` (``sys.argv[1:]`` by default),
    runs the command, and returns the exit status; an error is one line on
    stderr, never a traceback."""
    arguments = parser().parse_args(argv)
    try:
        return run(arguments)
    except BrokenPipeError:
        # The reader of standard output went away (`… | head`): stop
        # quietly, and keep Python from complaining at exit as it flushes.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        message = str(error) or type(error).__name__
        try:
            print(f"{PROG}: error: {message}", file=sys.stderr)
        except OSError:
            pass  # With stderr gone too there is no one left to tell.
        return 1


# Reports as text, as `ecf` prints them (src/tools/*.rs, `write_text`).


def bytes_text(count: int) -> str:
    """A byte count in decimal units: ``512 B``, ``1.50 kB``, ``3.26 MB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def count_text(count: int, noun: str) -> str:
    """``1 tensor``, ``3 tensors``."""
    return f"1 {noun}" if count == 1 else f"{count} {noun}s"


def _optional(value: Optional[float], precision: int) -> str:
    return "-" if value is None else f"{value:.{precision}f}"


def compress_text(report: Dict[str, Any]) -> List[str]:
    coded, raw = report["coded_tensors"], report["raw_tensors"]
    weights = report.get("weights")
    lines = [
        f"{report['input']} -> {report['output']}: {bytes_text(report['source_bytes'])} ->"
        f" {bytes_text(report['compressed_bytes'])} ({100.0 * report['ratio']:.2f}% of the original"
        f"{', every file' if weights else ''}),"
        f" {coded} of {count_text(coded + raw, 'tensor')} coded, {report['seconds']:.2f} s"
        f" ({report['source_bytes'] / max(report['seconds'], 1e-9) / 1e6:.0f} MB/s)"
    ]
    if weights:
        lines.append(
            f"safetensors files alone: {bytes_text(weights['source_bytes'])} ->"
            f" {bytes_text(weights['compressed_bytes'])} ({100.0 * weights['ratio']:.2f}% of the original)"
        )
    copied = report.get("copied_files") or []
    if copied:
        total = sum(file["bytes"] for file in copied)
        lines.append(
            f"copied unchanged: {count_text(len(copied), 'file')} ({bytes_text(total)}), counted in the sizes above"
        )
    for file in copied:
        if file["unread_weights"]:
            lines.append(
                f"note: {file['name']} ({bytes_text(file['bytes'])}) looks like weights in a format ecf does not read"
                " (only .safetensors files are compressed); it was copied as it is"
            )
    return lines


def decompress_text(report: Dict[str, Any]) -> List[str]:
    return [
        f"{report['input']} -> {report['output']}: {bytes_text(report['bytes'])} rebuilt and checked in"
        f" {report['seconds']:.2f} s ({report['bytes'] / max(report['seconds'], 1e-9) / 1e6:.0f} MB/s)"
    ]


def verify_text(report: Dict[str, Any]) -> List[str]:
    lines = []
    for file in report["files"]:
        tensors = file["tensors"]
        lines.extend(f"FAIL {tensor['error']}" for tensor in tensors if tensor["error"] is not None)
        failed = sum(1 for tensor in tensors if not tensor["ok"])
        coded = sum(1 for tensor in tensors if tensor["coded"])
        matches = file["file_checksum_matches"]
        if matches is None:
            file_checksum = f"file checksum not compared: {count_text(failed, 'tensor')} failed"
        else:
            file_checksum = f"file checksum {'matches' if matches else 'DIFFERS'}"
        lines.append(
            f"{file['file']}: {'OK' if file['ok'] else 'FAILED'} ({count_text(len(tensors), 'tensor')}, {coded} coded,"
            f" decoded on {file['backend']}; {failed} failed; {file_checksum}) in {file['seconds']:.2f} s"
        )
    return lines


def inspect_text(report: Dict[str, Any]) -> List[str]:
    def describe(compressed: bool, version: Optional[int]) -> str:
        if not compressed:
            return "plain safetensors (not compressed)"
        if version is None:
            return "ecfloat-compressed"
        return f"ecfloat-compressed (format version {version})"

    files, tensors = report["files"], report["tensors"]
    directory = len(files) != 1 or files[0]["path"] != report["path"]
    if directory:
        lines = [f"{report['path']}: a directory of {count_text(len(files), 'safetensors file')}"]
    else:
        lines = [f"{report['path']}: {describe(report['compressed'], report['format_version'])}"]
    # Names are measured in UTF-8 bytes, as ecf measures them.
    width = min(max([len(t["name"].encode()) for t in tensors] + [0]), 60)
    width = max(width, 6)
    for file in files:
        if directory:
            lines.append("")
            lines.append(
                f"{file['path']}: {describe(file['compressed'], file['format_version'])},"
                f" {bytes_text(file['source_bytes'])} -> {bytes_text(file['file_bytes'])}"
            )
        lines.append(
            f"{'tensor':<{width}} {'dtype':<8} {'shape':>16} {'elements':>12} {'coded':>5} {'H(exp)':>8}"
            f" {'bits/el':>8} {'bound':>8}"
        )
        for t in tensors:
            if t["file"] != file["path"]:
                continue
            shape = "[" + ", ".join(str(d) for d in t["shape"]) + "]"
            lines.append(
                f"{t['name']:<{width}} {t['dtype']:<8} {shape:>16} {t['elements']:>12}"
                f" {'yes' if t['coded'] else 'no':>5} {_optional(t['exponent_entropy'], 3):>8}"
                f" {t['bits_per_element']:>8.3f} {_optional(t['bound_bits_per_element'], 3):>8}"
            )
    lines.append(
        f"total: {count_text(len(tensors), 'tensor')}, {bytes_text(report['source_bytes'])} source,"
        f" {bytes_text(report['file_bytes'])} on disk, ratio {report['ratio']:.4f}"
        f" (exponent-entropy bound {report['bound_ratio']:.4f})"
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
