"""Modules and transformers models loaded from compressed checkpoints, their
weights decoded at load or kept coded and decoded a block at a time,
against the same models loaded from the originals: every output bit equal.
On a GPU (skipped, with the reason, without one) the same on ``cuda``."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

import ecfloat
import ecfloat.torch
import ecfloat.transformers

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
MINILM = REPO / ".." / "shared" / "testdata" / "all-MiniLM-L6-v2.bf16.safetensors"
TOKEN_IDS = torch.tensor([[101, 1996, 4248, 2829, 4419, 14523, 102, 0], [101, 23435, 2003, 19875, 1012, 102, 0, 0]])
PROMPT = torch.tensor([[1, 15, 300, 42, 7, 1999]])


def same_bits(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    return (
        ours.dtype == theirs.dtype
        and ours.shape == theirs.shape
        and ours.reshape(-1).view(torch.uint8).equal(theirs.reshape(-1).view(torch.uint8))
    )


def devices():
    """The CPU, and CUDA where there is a GPU (a visible skip otherwise)."""
    return [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
    ]


def within_the_bound(memory) -> bool:
    """What the weights hold after a forward: the coded weights, what was
    loaded decoded, and at most two blocks' buffers."""
    bound = memory["coded_bytes"] + memory["decoded_bytes"] + 2 * memory["largest_block_bytes"]
    return memory["resident_bytes"] <= bound and memory["peak_bytes"] <= bound


# -- any module --------------------------------------------------------------


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(300, 64),
        torch.nn.Linear(64, 128),
        torch.nn.LayerNorm(128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 16),
    ).to(torch.bfloat16)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """(the module, its plain file, its compressed file)."""
    model = small_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    directory = tmp_path_factory.mktemp("small")
    plain = directory / "small.safetensors"
    safetensors.torch.save_file(model.state_dict(), plain)
    return model, plain, Path(ecfloat.compress_file(plain)["output"])


def snapshot(model: torch.nn.Module):
    return {name: (tensor, tensor.detach().clone()) for name, tensor in model.state_dict(keep_vars=True).items()}


def unchanged(model: torch.nn.Module, before) -> bool:
    after = model.state_dict(keep_vars=True)
    return after.keys() == before.keys() and all(after[k] is t and same_bits(after[k].detach(), copy) for k, (t, copy) in before.items())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("keep_coded", [False, True])
def test_a_module_runs_as_from_its_original(small_checkpoint, device, keep_coded):
    original, plain, compressed = small_checkpoint
    ids = torch.randint(0, 300, (4, 9), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        want = original.to(device)(ids)
    model = small_model()
    assert ecfloat.torch.load_model(model, compressed, device=device, keep_coded=keep_coded) == ([], [])
    for _ in range(2):
        with torch.no_grad():
            assert same_bits(model(ids), want)
    memory = ecfloat.torch.memory(model)
    if keep_coded:
        kept = model._ecfloat_kept
        assert [block.module_path for block in kept.blocks] == ["0", "1", "4"]
        # Between runs a kept weight holds one element, NaN.
        assert model[1].weight.shape == (128, 64) and model[1].weight.untyped_storage().nbytes() == 2
        assert torch.isnan(model[1].weight).all()
        assert memory["coded_bytes"] > 0 and within_the_bound(memory)
    else:
        assert memory["coded_bytes"] == 0 and memory["decoded_bytes"] == memory["uncompressed_bytes"]
    # The plain file loads the same, as safetensors' load_model would.
    reference = small_model()
    safetensors.torch.load_model(reference, plain)
    with torch.no_grad():
        assert same_bits(reference.to(device)(ids), want)


def test_a_missing_key_raises_and_changes_nothing(small_checkpoint, tmp_path):
    _, plain, _ = small_checkpoint
    tensors = safetensors.torch.load_file(plain)
    del tensors["1.bias"]
    safetensors.torch.save_file(tensors, tmp_path / "missing.safetensors")
    compressed = ecfloat.compress_file(tmp_path / "missing.safetensors")["output"]
    for keep_coded in (False, True):
        model = small_model()
        before = snapshot(model)
        with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "1.bias"'):
            ecfloat.torch.load_model(model, compressed, keep_coded=keep_coded)
        assert unchanged(model, before) and not hasattr(model, "_ecfloat_kept")
    # Not strict: loaded, and reported.
    model = small_model()
    assert ecfloat.torch.load_model(model, compressed, strict=False, keep_coded=True) == (["1.bias"], [])


def test_an_unexpected_key_raises_and_changes_nothing(small_checkpoint, tmp_path):
    _, plain, _ = small_checkpoint
    tensors = safetensors.torch.load_file(plain)
    tensors["extra.weight"] = torch.ones(3, dtype=torch.bfloat16)
    safetensors.torch.save_file(tensors, tmp_path / "extra.safetensors")
    compressed = ecfloat.compress_file(tmp_path / "extra.safetensors")["output"]
    model = small_model()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "extra.weight"'):
        ecfloat.torch.load_model(model, compressed, keep_coded=True)
    assert unchanged(model, before)
    assert ecfloat.torch.load_model(model, compressed, strict=False) == ([], ["extra.weight"])


def test_a_shape_mismatch_raises_even_when_not_strict(small_checkpoint, tmp_path):
    _, plain, _ = small_checkpoint
    tensors = safetensors.torch.load_file(plain)
    tensors["4.weight"] = tensors["4.weight"][:8].contiguous()
    safetensors.torch.save_file(tensors, tmp_path / "shape.safetensors")
    compressed = ecfloat.compress_file(tmp_path / "shape.safetensors")["output"]
    model = small_model()
    before = snapshot(model)
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"size mismatch for 4.weight: copying a param with shape torch.Size\(\[8, 128\]\)"):
            ecfloat.torch.load_model(model, compressed, strict=strict, keep_coded=True)
        assert unchanged(model, before)


def test_a_corrupt_file_raises_naming_file_and_tensor_and_changes_nothing(small_checkpoint, tmp_path):
    _, _, compressed = small_checkpoint
    data = bytearray(compressed.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    # The middle of the data: inside the embedding's coded planes.
    middle = 8 + header + (len(data) - 8 - header) // 3
    for offset in range(16):
        data[middle + offset] ^= 0x5A
    corrupt = tmp_path / "corrupt.ecf.safetensors"
    corrupt.write_bytes(bytes(data))
    for keep_coded in (False, True):
        model = small_model()
        before = snapshot(model)
        with pytest.raises(ValueError, match=r"corrupt.ecf.safetensors: tensor \S+"):
            ecfloat.torch.load_model(model, corrupt, keep_coded=keep_coded)
        assert unchanged(model, before)


def test_a_failed_block_decode_raises_and_the_next_run_decodes_again(small_checkpoint):
    original, _, compressed = small_checkpoint
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        want = original.to("cpu")(ids)
    model = small_model()
    ecfloat.torch.load_model(model, compressed, keep_coded=True)
    kept = model._ecfloat_kept
    weights = kept.weights

    class FailsOnce:
        """The coded weights, whose next decode of block 1 fails as a
        device error would."""

        def __init__(self):
            self.failed = False

        def start_decode(self, block, address, length):
            if block == 1 and not self.failed:
                self.failed = True
                raise ecfloat.DeviceError("decoding block 1: out of device memory")
            return weights.start_decode(block, address, length)

    kept.weights = FailsOnce()
    with pytest.raises(ecfloat.DeviceError, match="decoding block 1"), torch.no_grad():
        model(ids)
    # Nothing stays bound, and the next run decodes every block again.
    assert not kept.in_use and torch.isnan(model[1].weight).all()
    with torch.no_grad():
        assert same_bits(model(ids), want)
    kept.weights = weights


def test_a_block_asked_for_while_every_buffer_is_in_use_gets_one_more(small_checkpoint):
    original, _, compressed = small_checkpoint
    ids = torch.arange(10).reshape(2, 5)
    with torch.no_grad():
        want = original(ids)
    model = small_model()
    ecfloat.torch.load_model(model, compressed, keep_coded=True)
    kept = model._ecfloat_kept
    # Block 0 still bound (a module called inside another's) when block 2
    # is asked for: the one CPU buffer is taken, so block 2 gets another.
    kept.acquire(0)
    kept.acquire(2)
    assert len(kept.buffers) == 2 and kept.in_use == {0: 0, 2: 1}
    assert not torch.isnan(model[0].weight).any() and not torch.isnan(model[4].weight).any()
    kept.release(2)
    kept.release(0)
    with torch.no_grad():
        assert same_bits(model(ids), want)


# -- transformers -----------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """(original directory, compressed directory) of all-MiniLM-L6-v2 as a
    Hugging Face checkpoint."""
    if not MINILM.exists():
        pytest.skip(f"{MINILM} is absent")
    directory = tmp_path_factory.mktemp("minilm")
    original = directory / "all-MiniLM-L6-v2"
    original.mkdir()
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
        hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
        architectures=["BertModel"], dtype="bfloat16",
    )
    config.save_pretrained(original)
    shutil.copyfile(MINILM, original / "model.safetensors")
    return original, Path(ecfloat.compress_file(original)["output"])


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(original directory, compressed directory) of a small Llama drawn
    with a fixed seed, saved as a BF16 checkpoint in two shards."""
    directory = tmp_path_factory.mktemp("llama")
    original = directory / "llama"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=2000, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    )
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(original, max_shard_size="4MB")
    assert sorted(p.name for p in original.glob("*.safetensors")) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    return original, Path(ecfloat.compress_file(original)["output"])


def embed(model, device):
    with torch.no_grad():
        return model(input_ids=TOKEN_IDS.to(device), attention_mask=(TOKEN_IDS != 0).long().to(device)).last_hidden_state


def generate(model, device):
    with torch.no_grad():
        return model.generate(PROMPT.to(device), do_sample=False, max_new_tokens=32, output_logits=True, return_dict_in_generate=True)


@pytest.mark.parametrize("device", devices())
def test_minilm_from_the_compressed_directory_is_bit_identical(minilm, device):
    original, compressed = minilm
    want = embed(transformers.BertModel.from_pretrained(original).to(device).eval(), device)
    for keep_coded in (False, True):
        model = ecfloat.transformers.from_pretrained(compressed, device=device, keep_coded=keep_coded)
        assert type(model) is transformers.BertModel and model.dtype == torch.bfloat16 and not model.training
        assert same_bits(embed(model, device), want)
        memory = ecfloat.torch.memory(model)
        if keep_coded:
            # Every linear and embedding weight coded: 45.4 MB of BF16
            # held in about 30 MB, plus one buffer for the largest block
            # (the word embeddings, 23.4 MB) on the CPU, two on a GPU.
            assert memory["uncompressed_bytes"] == 45_434_624
            assert memory["coded_bytes"] < 0.7 * memory["uncompressed_bytes"]
            assert memory["decoded_bytes"] < 100_000
            assert memory["largest_block_bytes"] == 30522 * 384 * 2
            assert within_the_bound(memory)
        else:
            assert memory["coded_bytes"] == 0


@pytest.mark.parametrize("device", devices())
def test_llama_generates_the_same_tokens_and_logits(llama, device):
    original, compressed = llama
    want = generate(transformers.LlamaForCausalLM.from_pretrained(original).to(device).eval(), device)
    assert len(want.logits) == 32
    for keep_coded in (False, True):
        model = ecfloat.transformers.from_pretrained(compressed, device=device, keep_coded=keep_coded)
        assert type(model) is transformers.LlamaForCausalLM
        got = generate(model, device)
        assert torch.equal(got.sequences, want.sequences)
        assert all(same_bits(ours, theirs) for ours, theirs in zip(got.logits, want.logits, strict=True))
        memory = ecfloat.torch.memory(model)
        if keep_coded:
            blocks = [block.name for block in model._ecfloat_kept.blocks]
            assert blocks == ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2", "model.layers.3", "lm_head"]
            assert memory["coded_bytes"] < 0.75 * memory["uncompressed_bytes"]
            assert within_the_bound(memory)


def test_torch_dtype_is_taken_as_the_alias_of_dtype(llama):
    _, compressed = llama
    model = ecfloat.transformers.from_pretrained(compressed, torch_dtype=torch.float32, keep_coded=True)
    assert model.dtype == torch.float32
    reference = ecfloat.transformers.from_pretrained(compressed, dtype="float32", keep_coded=False)
    assert torch.equal(generate(model, "cpu").sequences, generate(reference, "cpu").sequences)


def test_transformers_own_loaders_read_compressed_directories_once_installed(minilm, llama):
    for (original, compressed), auto in ((minilm, transformers.AutoModel), (llama, transformers.AutoModelForCausalLM)):
        want = auto.from_pretrained(original).eval()
        # Without ecfloat, transformers cannot read them.
        with pytest.raises((OSError, ValueError, RuntimeError)):
            auto.from_pretrained(compressed)
        ecfloat.transformers.install()
        try:
            ecfloat.transformers.install()
            model = auto.from_pretrained(compressed).eval()
        finally:
            ecfloat.transformers.uninstall()
        theirs, ours = want.state_dict(), model.state_dict()
        assert theirs.keys() == ours.keys()
        assert all(same_bits(ours[name], tensor) for name, tensor in theirs.items())
    # Plain checkpoints load as before with it installed.
    ecfloat.transformers.install()
    try:
        assert isinstance(transformers.AutoModel.from_pretrained(minilm[0]), transformers.BertModel)
    finally:
        ecfloat.transformers.uninstall()


# -- reading parts, writing -------------------------------------------------


def test_get_slice_reads_as_safetensors_does(small_checkpoint):
    _, plain, compressed = small_checkpoint
    with ecfloat.safe_open(compressed) as ours, safetensors.safe_open(plain, "pt") as theirs:
        for name in theirs.keys():
            mine, yours = ours.get_slice(name), theirs.get_slice(name)
            assert mine.get_dtype() == yours.get_dtype() and mine.get_shape() == yours.get_shape()
            assert same_bits(mine[...], yours[...])
            assert same_bits(mine[1:3], yours[1:3])
        assert ours.offset_keys() == theirs.offset_keys()
        with pytest.raises(KeyError):
            ours.get_slice("no.such.tensor")


def test_the_package_has_a_version():
    import tomllib

    project = tomllib.loads((REPO / "python" / "pyproject.toml").read_text())["project"]
    assert ecfloat.__version__ == project["version"]


def test_save_file_writes_a_compressed_file_that_loads_back(tmp_path):
    generator = torch.Generator().manual_seed(3)
    tensors = {"w": (torch.randn(64, 64, generator=generator) * 0.02).to(torch.bfloat16), "b": torch.zeros(5)}
    path = tmp_path / "saved.ecf.safetensors"
    ecfloat.torch.save_file(tensors, path, metadata={"format": "pt"})
    assert ecfloat.verify(path)["ok"]
    loaded = ecfloat.torch.load_file(path)
    assert all(same_bits(loaded[name], tensor) for name, tensor in tensors.items())
    assert os.path.getsize(path) > 0
