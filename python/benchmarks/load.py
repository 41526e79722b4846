"""Load time of ecfloat.torch.load_file against safetensors.torch.load_file
of the original, same run, and the peak resident memory of safe_open.

    python python/benchmarks/load.py [CHECKPOINT ...] [--rss DIRECTORY]

CHECKPOINT is a safetensors file or a directory of shards (compressed first,
untimed); without any, the files of ../shared/testdata. Each figure is the
median of 5 runs after a warm-up, from the page cache. safetensors maps the
file and copies on access, so each load is also timed with every byte read
(a sum over each tensor's bytes).

--rss DIRECTORY compresses that checkpoint, then in fresh processes reads
every tensor once, one at a time, through ecfloat.safe_open and through
safetensors.safe_open on the original, and loads it whole with
ecfloat.torch.load_file, printing each one's peak resident memory (the
processes' ru_maxrss, torch's import included: "imports alone" is that)
against the largest tensor and the whole checkpoint.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch

import ecfloat
import ecfloat.torch

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO / ".." / "shared" / "testdata"
RUNS = 5


def median_seconds(load):
    load()
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        load()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def touched(tensors):
    """Reads every byte of every tensor."""
    return sum(int(t.reshape(-1).view(torch.uint8).sum()) for t in tensors.values() if t.numel())


def shards(path: Path):
    return sorted(path.glob("*.safetensors")) if path.is_dir() else [path]


def safetensors_load(path: Path):
    tensors = {}
    for shard in shards(path):
        tensors.update(safetensors.torch.load_file(shard))
    return tensors


def load_times(original: Path, scratch: Path):
    compressed = ecfloat.compress_file(original, scratch / (original.name + ".ecf"))["output"]
    size = sum(p.stat().st_size for p in shards(original))
    theirs = median_seconds(lambda: safetensors_load(original))
    ours = median_seconds(lambda: ecfloat.torch.load_file(compressed))
    theirs_read = median_seconds(lambda: touched(safetensors_load(original)))
    ours_read = median_seconds(lambda: touched(ecfloat.torch.load_file(compressed)))
    print(
        f"{original.name}: {size / 1e6:.1f} MB; load_file {ours:.3f} s against safetensors {theirs:.3f} s "
        f"({ours / theirs:.2f}x); with every byte read {ours_read:.3f} s against {theirs_read:.3f} s "
        f"({ours_read / theirs_read:.2f}x)"
    )


PEAK = """
import resource, sys
import ecfloat, ecfloat.torch, safetensors
mode, path = sys.argv[1], sys.argv[2]
if mode == "ecfloat.safe_open":
    with ecfloat.safe_open(path, framework="pt") as f:
        for name in f.keys():
            f.get_tensor(name)
elif mode == "safetensors.safe_open":
    import glob, os
    for shard in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        with safetensors.safe_open(shard, framework="pt") as f:
            for name in f.keys():
                f.get_tensor(name).sum()
elif mode == "ecfloat.torch.load_file":
    tensors = ecfloat.torch.load_file(path)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss(directory: Path, scratch: Path):
    compressed = ecfloat.compress_file(directory, scratch / (directory.name + ".ecf"))["output"]
    largest = 0
    total = 0
    with ecfloat.safe_open(directory) as f:
        for name in f.keys():
            _, _, nbytes = f._checkpoint.info(name)
            largest = max(largest, nbytes)
            total += nbytes
    print(f"{directory}: {total / 2**30:.2f} GiB of tensors, the largest {largest / 2**20:.0f} MiB")
    for mode, path in [
        ("imports alone", compressed),
        ("ecfloat.safe_open", compressed),
        ("safetensors.safe_open", str(directory)),
        ("ecfloat.torch.load_file", compressed),
    ]:
        peak = int(subprocess.run([sys.executable, "-c", PEAK, mode, path], check=True, capture_output=True, text=True).stdout)
        print(f"    {mode}: peak RSS {peak / 2**20:.0f} MiB ({peak / largest:.2f}x the largest tensor, {peak / total:.2f}x the checkpoint)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--rss", type=Path)
    arguments = parser.parse_args()
    checkpoints = arguments.checkpoints or sorted(TESTDATA.glob("*.safetensors"))
    with tempfile.TemporaryDirectory() as scratch:
        for checkpoint in checkpoints:
            load_times(checkpoint, Path(scratch))
        if arguments.rss:
            peak_rss(arguments.rss, Path(scratch))


if __name__ == "__main__":
    main()
