"""Forward latency and weight memory of transformers models with their
weights kept coded (``ecfloat.transformers.from_pretrained(...,
keep_coded=True)``) against the same models loaded decoded from the
original checkpoint by transformers, same run.

    python python/benchmarks/models.py [--device cpu|cuda] [--runs 5]

Models: all-MiniLM-L6-v2 (../shared/testdata, BF16; a batch of 8
sequences of 128 tokens) and a Llama of 4 layers, hidden 256, drawn with
a fixed seed (BF16; one sequence of 128 tokens). Each latency is the
median of the runs after a warm-up; weight bytes are
``ecfloat.torch.memory`` (resident after the runs, peak), and on CUDA
also torch's peak allocation over the runs, activations included.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

import ecfloat
import ecfloat.torch
import ecfloat.transformers

REPO = Path(__file__).resolve().parents[2]
MINILM = REPO / ".." / "shared" / "testdata" / "all-MiniLM-L6-v2.bf16.safetensors"


def minilm(directory: Path) -> Path:
    original = directory / "all-MiniLM-L6-v2"
    original.mkdir()
    transformers.BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
        hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
        architectures=["BertModel"], dtype="bfloat16",
    ).save_pretrained(original)
    shutil.copyfile(MINILM, original / "model.safetensors")
    return original


def llama(directory: Path) -> Path:
    original = directory / "llama"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=2000, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    )
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(original, max_shard_size="4MB")
    return original


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def forward_seconds(model, inputs, device: str, runs: int) -> float:
    with torch.no_grad():
        model(**inputs)
        synchronize(device)
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            model(**inputs)
            synchronize(device)
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    device = arguments.device
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, ecfloat {ecfloat.__version__}, "
          f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, {torch.get_num_threads()} threads")
    print()
    print("| model | weights | forward (median) | vs decoded | resident weight bytes | peak weight bytes | torch peak allocated |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        cases = []
        if MINILM.exists():
            ids = torch.randint(1000, 30000, (8, 128), generator=generator)
            cases.append(("all-MiniLM-L6-v2 BF16", minilm(scratch), transformers.BertModel, {"input_ids": ids}))
        ids = torch.randint(0, 2000, (1, 128), generator=generator)
        cases.append(("Llama 4×256 BF16", llama(scratch), transformers.LlamaForCausalLM, {"input_ids": ids}))
        for label, original, cls, inputs in cases:
            compressed = Path(ecfloat.compress_file(original)["output"])
            inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
            decoded_seconds = None
            for weights in ("decoded (transformers)", "kept coded (ecfloat)"):
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                if weights.startswith("decoded"):
                    model = cls.from_pretrained(original).to(device).eval()
                else:
                    model = ecfloat.transformers.from_pretrained(compressed, device=device, keep_coded=True)
                seconds = forward_seconds(model, inputs, device, arguments.runs)
                decoded_seconds = decoded_seconds or seconds
                memory = ecfloat.torch.memory(model)
                allocated = f"{torch.cuda.max_memory_allocated() / 1e6:.1f} MB" if device == "cuda" else "—"
                print(f"| {label} | {weights} | {seconds * 1e3:.2f} ms | {seconds / decoded_seconds:.2f}× | "
                      f"{memory['resident_bytes'] / 1e6:.2f} MB | {memory['peak_bytes'] / 1e6:.2f} MB | {allocated} |")
                del model


if __name__ == "__main__":
    main()
