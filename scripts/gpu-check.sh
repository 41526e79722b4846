#!/usr/bin/env bash
# A whole GPU sitting in one command, on a machine without a Rust toolchain:
# the binary built elsewhere lists the backends, runs the conformance suite
# on every backend (CUDA and wgpu required where an NVIDIA GPU is present),
# and benchmarks decoding on each GPU backend, all into one report.
#
#   scripts/gpu-check.sh [ECF] [DATA_DIR] [REPORT] [COST]
#
# ECF       the ecf binary (default ./ecf)
# DATA_DIR  safetensors files to check and bench (default .gpu; may be absent)
# REPORT    the report to write (default $OUT/gpu-report.txt, else ./gpu-report.txt)
# COST      the kernel cost model's estimates, `kernel cost:` lines that
#           `cargo test --release --test cuda_on_cpu kernel_cost` writes to
#           target/kernel-cost.txt (default DATA_DIR/kernel-cost.txt): each
#           is printed beside the CUDA decode of its tensor, to calibrate
#           the model against what the GPU does
#
# Vulkan needs its loader: carried Debian packages in .gl/*.deb are unpacked
# first. NVRTC comes from the CUDA toolkit (/usr/local/cuda).
#
# The Python package's GPU tests and model benchmark run too where the
# machine's Python has torch and transformers and a wheel built elsewhere
# (`maturin build --release -m python/Cargo.toml`) is in DATA_DIR; the
# report says why they did not run otherwise.
#
# burn on the GPU's Vulkan driver runs too where DATA_DIR has the binaries
# built elsewhere (`cargo build --release --features burn --example
# burn_bert`, and `cargo bench --features burn --bench burn_load --no-run`,
# whose binary target/release/deps/burn_load-* is copied as `burn_load`)
# and all-MiniLM-L6-v2.bf16.safetensors.
set -uo pipefail

ECF=${1:-./ecf}
DATA=${2:-.gpu}
REPORT=${3:-${OUT:-.}/gpu-report.txt}
COST=${4:-$DATA/kernel-cost.txt}

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

# The model's line for the largest float tensor of safetensors file $1 (the
# tensor `bench --largest` decodes), if COST has one.
estimate() {
    [ -f "$COST" ] || return 0
    python3 - "$1" "$COST" <<'PYTHON'
import json, struct, sys
with open(sys.argv[1], "rb") as file:
    header = json.loads(file.read(struct.unpack("<Q", file.read(8))[0]))
header.pop("__metadata__", None)
floats = {"BF16", "F16", "F32", "F8_E4M3", "F8_E5M2"}
# A compressed file keeps its source header in __metadata__; the test data
# are plain files.
name, info = max(((n, i) for n, i in header.items() if i["dtype"] in floats),
                 key=lambda item: item[1]["data_offsets"][1] - item[1]["data_offsets"][0], default=(None, None))
for line in open(sys.argv[2]):
    if name and line.startswith(f"kernel cost: {name} {info['dtype']} "):
        print("model estimate:", line.split("kernel cost: ", 1)[1].rstrip())
PYTHON
}

# The Python package on the GPU: its tests (every CUDA case; skips are
# listed) and models kept coded against transformers' own loading.
python_on_gpu() {
    local wheel
    wheel=$(ls "$DATA"/ecfloat-*.whl 2>/dev/null | head -n 1)
    if [ -z "$wheel" ]; then
        printf '\n## Python on the GPU: not run (no ecfloat wheel in %s)\n' "$DATA"
        return 0
    fi
    if ! python3 -c 'import torch, transformers, safetensors, pytest' 2>/dev/null; then
        printf '\n## Python on the GPU: not run (this Python lacks torch, transformers, safetensors or pytest)\n'
        return 0
    fi
    local venv
    venv=$(mktemp -d)/venv
    python3 -m venv --system-site-packages "$venv" && "$venv/bin/pip" install -q --no-deps "$wheel"
    step "Python tests, CUDA included" "$venv/bin/python" -m pytest -q -rs python/tests
    step "models kept coded, cuda" "$venv/bin/python" python/benchmarks/models.py --device cuda
}

# burn on the shared wgpu device: MiniLM loaded decoded and kept coded
# against burn-store's loading, and the load and forward benchmark.
burn_on_gpu() {
    local model="$DATA/all-MiniLM-L6-v2.bf16.safetensors"
    if [ ! -x "$DATA/burn_bert" ] || [ ! -f "$model" ]; then
        printf '\n## burn on the GPU: not run (no burn_bert binary or MiniLM in %s)\n' "$DATA"
        return 0
    fi
    step "burn, MiniLM loaded decoded and kept coded" "$DATA/burn_bert" "$model"
    [ -x "$DATA/burn_load" ] && step "burn, loading and forward" "$DATA/burn_load" "$model" --bench
}

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
            [ "$backend" = cuda ] && estimate "$file"
        done
    done
    python_on_gpu
    burn_on_gpu
} 2>&1 | grep -v 'XDG_RUNTIME_DIR' | tee "$REPORT"
