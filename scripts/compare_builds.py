#!/usr/bin/env python3
"""Compares the CPU decode speed of several `ecf` builds in one sitting.

Runs `ecf --threads T bench FILE --backend cpu --json` for every build on
every file, the builds alternating, for a number of rounds; prints a
Markdown table of each build's fastest decode over all its runs (GB/s of
decoded bytes), with the median of the runs' medians beside it, and the
fastest copy of the same bytes. Interference from other work on the
machine only ever adds time, so the fastest run is the steadiest figure
where the machine is shared; alternating the builds in one sitting keeps
what remains fair.

Usage: python3 scripts/compare_builds.py --ecf NAME=PATH [--ecf NAME=PATH ...]
           [--threads 1] [--rounds 3] [--repeats 11] FILE...
"""
import argparse
import json
import os
import statistics
import subprocess


def bench(ecf, path, threads, repeats):
    command = [ecf, "--threads", str(threads), "bench", path, "--backend", "cpu"]
    command += ["--repeats", str(repeats), "--json", "-q"]
    report = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    gbps = lambda seconds: report["decoded_bytes"] / seconds / 1e9
    decode, copy = report["decode"], report["copy"]
    return gbps(decode["min_seconds"]), decode["gb_per_s"], gbps(copy["min_seconds"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ecf", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    builds = [entry.split("=", 1) for entry in args.ecf]
    fastest = {(name, path): [] for name, _ in builds for path in args.files}
    medians = {(name, path): [] for name, _ in builds for path in args.files}
    copy = {path: [] for path in args.files}
    for _ in range(args.rounds):
        for path in args.files:
            for name, ecf in builds:
                best, median, copy_best = bench(ecf, path, args.threads, args.repeats)
                fastest[(name, path)].append(best)
                medians[(name, path)].append(median)
                copy[path].append(copy_best)
    names = [name for name, _ in builds]
    print(f"| file | {' | '.join(names)} | {names[-1]} / {names[0]} | copy |")
    print("|---" * (len(names) + 3) + "|")
    for path in args.files:
        best = [max(fastest[(name, path)]) for name in names]
        typical = [statistics.median(medians[(name, path)]) for name in names]
        cells = " | ".join(f"**{b:.2f}** ({t:.2f})" for b, t in zip(best, typical))
        label = os.path.basename(path).removesuffix(".safetensors")
        print(f"| {label} | {cells} | {best[-1] / best[0]:.2f} | {max(copy[path]):.1f} |")


if __name__ == "__main__":
    main()
