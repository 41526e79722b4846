#!/usr/bin/env bash
# Whole-checkpoint round trip, measured: generates a sharded BF16 checkpoint
# of 7B-shaped layers, compresses and decompresses the directory under
# /usr/bin/time -v (wall time, CPU use, peak RSS), checks every file byte for
# byte, and in the same run times ZipNN compressing the same tensors.
#
# Usage: scripts/checkpoint_round_trip.sh [WORKDIR] [GIB] [SHARDS]
# Needs: cargo, /usr/bin/time, python3 with zipnn and numpy (the ZipNN part
# is skipped with a message when it is missing).
set -euo pipefail
work=${1:-/tmp/ecf-checkpoint}
gib=${2:-4}
shards=${3:-4}
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin ecf --example synthetic_checkpoint
ecf=$PWD/target/release/ecf
python=${PYTHON:-python3}

rm -rf "$work"
mkdir -p "$work"
target/release/examples/synthetic_checkpoint "$work/model" --gib "$gib" --shards "$shards"
# Start from the page cache, as a second run would.
cat "$work"/model/*.safetensors > /dev/null

measure() {
    local name=$1
    shift
    /usr/bin/time -v "$@" 2> "$work/$name.time" > "$work/$name.json"
    awk -v name="$name" -F': ' '
        /Elapsed \(wall clock\)/ { wall = $2 }
        /Percent of CPU/ { cpu = $2 }
        /Maximum resident set size/ { rss = $2 / 1024 }
        END { printf "%-10s wall %s, CPU %s, peak RSS %.0f MiB\n", name, wall, cpu, rss }
    ' "$work/$name.time"
}

measure compress "$ecf" --quiet compress "$work/model" -o "$work/model.ecf" --json
measure decompress "$ecf" --quiet decompress "$work/model.ecf" -o "$work/model.back" --json
for file in "$work"/model/*; do
    cmp "$file" "$work/model.back/$(basename "$file")"
done
echo "every file of $work/model.back is identical to the original"
"$python" - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
c = json.load(open(f"{work}/compress.json"))
d = json.load(open(f"{work}/decompress.json"))
print(f"ecf compress   {c['source_bytes'] / 1e9:.2f} GB -> {c['compressed_bytes'] / 1e9:.2f} GB "
      f"(ratio {c['ratio']:.4f}) in {c['seconds']:.1f} s = {c['source_bytes'] / c['seconds'] / 1e6:.0f} MB/s file to file")
print(f"ecf decompress {d['bytes'] / 1e9:.2f} GB in {d['seconds']:.1f} s = {d['bytes'] / d['seconds'] / 1e6:.0f} MB/s file to file")
EOF

# In memory, as ZipNN is measured below: encode and decode of every shard.
for shard in "$work"/model/*.safetensors; do
    "$ecf" bench "$shard" --repeats 3 --json
done | "$python" -c '
import json, sys
decoder = json.JSONDecoder()
text, reports = sys.stdin.read(), []
while text.strip():
    report, end = decoder.raw_decode(text.strip())
    reports.append(report)
    text = text.strip()[end:]
total = sum(r["decoded_bytes"] for r in reports)
encode = sum(r["encode"]["median_seconds"] for r in reports)
decode = sum(r["decode"]["median_seconds"] for r in reports)
threads = reports[0]["threads"]
print(f"ecf encode     {total / 1e9:.2f} GB in {encode:.1f} s = {total / encode / 1e6:.0f} MB/s in memory, {threads} threads")
print(f"ecf decode     {total / 1e9:.2f} GB in {decode:.1f} s = {total / decode / 1e6:.0f} MB/s in memory, {threads} threads")
'

if ! "$python" -c "import zipnn" 2> /dev/null; then
    echo "ZipNN: skipped, $python cannot import zipnn"
    exit 0
fi
"$python" - "$work/model" "$(nproc)" <<'EOF'
import json, os, struct, sys, time
import zipnn
directory, threads = sys.argv[1], int(sys.argv[2])
total = compressed = 0
seconds = 0.0
for name in sorted(os.listdir(directory)):
    if not name.endswith(".safetensors"):
        continue
    data = open(os.path.join(directory, name), "rb").read()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    body = memoryview(data)[8 + header_len :]
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        start, end = info["data_offsets"]
        codec = zipnn.ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=threads)
        raw = bytearray(body[start:end])
        began = time.perf_counter()
        out = codec.compress(raw)
        seconds += time.perf_counter() - began
        total += end - start
        compressed += len(out)
print(f"ZipNN compress {total / 1e9:.2f} GB -> {compressed / 1e9:.2f} GB (ratio {compressed / total:.4f}) "
      f"in {seconds:.1f} s = {total / seconds / 1e6:.0f} MB/s in memory, {threads} threads")
EOF
