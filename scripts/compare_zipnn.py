#!/usr/bin/env python3
"""Compares ecfloat with ZipNN on safetensors files, in one run.

Size: ZipNN compresses each float tensor (byte input, its dtype named); other
tensors count at their size, plus the file's header. ecfloat's figure is the
size of the file `ecf compress` writes, which `ecf decompress` must turn back
into the original byte for byte.

Speed: both in-process with the same thread count, over the float tensors:
ZipNN's compress/decompress calls, and `ecf bench` (median of its runs).

Usage: python3 scripts/compare_zipnn.py [--ecf target/release/ecf] [--threads N] FILE...
Needs: pip install zipnn numpy
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import zipnn  # noqa: E402

ZIPNN_DTYPES = {
    "F32": "float32",
    "BF16": "bfloat16",
    "F16": "float16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def zipnn_file(path, threads):
    data = open(path, "rb").read()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    total = 8 + header_len
    compress_s = decompress_s = 0.0
    float_bytes = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensor = body[start:end]
        dtype = ZIPNN_DTYPES.get(info["dtype"])
        if dtype is None or not tensor:
            total += len(tensor)
            continue
        float_bytes += len(tensor)
        codec = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
        # ZipNN modifies the buffer it is given for some dtypes: hand it a copy.
        started = time.perf_counter()
        compressed = codec.compress(bytearray(tensor))
        compress_s += time.perf_counter() - started
        started = time.perf_counter()
        restored = codec.decompress(compressed)
        decompress_s += time.perf_counter() - started
        if bytes(restored) != tensor:
            sys.exit(f"{path}: ZipNN did not restore {name}")
        total += min(len(compressed), len(tensor))
    return len(data), total, compress_s, decompress_s, float_bytes


def ecf_file(path, ecf, threads):
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "out.ecf.safetensors")
        back = os.path.join(directory, "back.safetensors")
        subprocess.run([ecf, "--threads", str(threads), "compress", path, "-o", out], check=True, capture_output=True)
        subprocess.run([ecf, "--threads", str(threads), "decompress", out, "-o", back], check=True, capture_output=True)
        if open(back, "rb").read() != open(path, "rb").read():
            sys.exit(f"{path}: ecf did not restore the file byte for byte")
        bench = subprocess.run(
            [ecf, "--threads", str(threads), "bench", path, "--json"], check=True, capture_output=True, text=True
        )
        report = json.loads(bench.stdout)
        seconds = lambda timing: timing["median_seconds"]
        return os.path.getsize(out), report["decoded_bytes"], seconds(report["encode"]), seconds(report["decode"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ecf", default="target/release/ecf")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    print(f"threads: {args.threads}; ratio = compressed / original; speeds in MB/s of float tensor bytes")
    print(
        f"{'file':38} {'ZipNN':>7} {'ecf':>7} {'ecf-ZipNN':>10}  "
        f"{'ZipNN comp':>10} {'ecf enc':>8}  {'ZipNN decomp':>12} {'ecf dec':>8}"
    )
    for path in args.files:
        size, zipnn_size, zc, zd, float_bytes = zipnn_file(path, args.threads)
        ecf_size, ecf_bytes, ec, ed = ecf_file(path, args.ecf, args.threads)
        zmb, emb = float_bytes / 1e6, ecf_bytes / 1e6
        print(
            f"{os.path.basename(path):38} {zipnn_size / size:7.4f} {ecf_size / size:7.4f} "
            f"{(ecf_size - zipnn_size) / size * 100:+9.3f}%  "
            f"{zmb / zc:10.0f} {emb / ec:8.0f}  {zmb / zd:12.0f} {emb / ed:8.0f}"
        )


if __name__ == "__main__":
    main()
