#!/usr/bin/env bash
# A whole GPU sitting in one command, on a machine without a Rust toolchain:
# the binary built elsewhere lists the backends, runs the conformance suite
# on every backend (CUDA and wgpu required where an NVIDIA GPU is present),
# and benchmarks decoding on each GPU backend, all into one report.
#
#   scripts/gpu-check.sh [ECF] [DATA_DIR] [REPORT]
#
# ECF       the ecf binary (default ./ecf)
# DATA_DIR  safetensors files to check and bench (default .gpu; may be absent)
# REPORT    the report to write (default $OUT/gpu-report.txt, else ./gpu-report.txt)
#
# Vulkan needs its loader: carried Debian packages in .gl/*.deb are unpacked
# first. NVRTC comes from the CUDA toolkit (/usr/local/cuda).
set -uo pipefail

ECF=${1:-./ecf}
DATA=${2:-.gpu}
REPORT=${3:-${OUT:-.}/gpu-report.txt}

if ls .gl/*.deb >/dev/null 2>&1; then
    for package in .gl/*.deb; do dpkg -x "$package" /; done
    ldconfig
fi
for directory in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$directory" ] && export LD_LIBRARY_PATH="$directory${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
if command -v nvidia-smi >/dev/null 2>&1; then
    export ECF_REQUIRE_CUDA=1 ECF_REQUIRE_WGPU=1
fi

files=()
if [ -d "$DATA" ]; then
    while IFS= read -r file; do files+=("$file"); done < <(ls "$DATA"/*.safetensors 2>/dev/null)
fi

step() { printf '\n## %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; echo "(exit status $?)"; }

{
    echo "# ecfloat GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    uname -srm
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    step "backends" "$ECF" backends
    step "conformance, every backend" "$ECF" selftest --backend all "${files[@]}"
    for backend in cuda wgpu cpu; do
        step "decode, 1 GiB synthetic BF16, $backend" "$ECF" bench --synthetic BF16 --size 1GiB --backend "$backend" --repeats 20
        for file in "${files[@]}"; do
            step "decode, largest tensor of $file, $backend" "$ECF" bench "$file" --largest --backend "$backend" --repeats 20
        done
    done
} 2>&1 | grep -v 'XDG_RUNTIME_DIR' | tee "$REPORT"
