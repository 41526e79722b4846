"""The ecfloat package against safetensors' own loading, on the real weights
of ../shared/testdata (skipped, with the reason, where it is absent), on
synthetic checkpoints, and on bad input."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import ecfloat
import ecfloat.numpy
import ecfloat.torch

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO / ".." / "shared" / "testdata"
MINILM = TESTDATA / "all-MiniLM-L6-v2.bf16.safetensors"


def real_weight_files():
    if not TESTDATA.is_dir():
        pytest.skip(f"{TESTDATA} is absent")
    return sorted(TESTDATA.glob("*.safetensors"))


def same_bits(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    return (
        ours.dtype == theirs.dtype
        and ours.shape == theirs.shape
        and ours.reshape(-1).view(torch.uint8).equal(theirs.reshape(-1).view(torch.uint8))
    )


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """Every test file, compressed: {original: compressed}."""
    directory = tmp_path_factory.mktemp("compressed")
    return {
        original: Path(ecfloat.compress_file(original, directory / original.name.replace(".safetensors", ".ecf.safetensors"))["output"])
        for original in real_weight_files()
    }


def test_every_tensor_of_every_file_loads_as_safetensors_loads_the_original(compressed):
    for original, path in compressed.items():
        theirs = safetensors.torch.load_file(original)
        ours = ecfloat.torch.load_file(path)
        assert list(ours) == list(safetensors.safe_open(original, "pt").keys())
        for name, tensor in theirs.items():
            assert same_bits(ours[name], tensor), f"{original.name}: {name}"
        # Plain safetensors loads too, the same.
        plain = ecfloat.torch.load_file(original)
        assert all(same_bits(plain[name], tensor) for name, tensor in theirs.items())


def test_numpy_arrays_hold_the_same_bits(compressed):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for original, path in compressed.items():
        theirs = safetensors.torch.load_file(original)
        for name, array in ecfloat.numpy.load_file(path).items():
            want = theirs[name]
            if want.dtype == torch.bfloat16:
                assert array.dtype == ml_dtypes.bfloat16
            assert list(array.shape) == list(want.shape)
            assert array.tobytes() == want.reshape(-1).view(torch.uint8).numpy().tobytes(), name


def test_safe_open_decodes_one_tensor_at_a_time(compressed):
    original, path = next(iter(compressed.items()))
    with ecfloat.safe_open(path, framework="pt") as f, safetensors.safe_open(original, "pt") as g:
        assert f.keys() == list(g.keys())
        assert f.metadata() == g.metadata()
        name = f.keys()[-1]
        assert same_bits(f.get_tensor(name), g.get_tensor(name))
        with pytest.raises(KeyError):
            f.get_tensor("no.such.tensor")
    with pytest.raises(ValueError, match="framework"):
        ecfloat.safe_open(path, framework="tf")


def test_a_compressed_directory_loads_like_its_shards(tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    generator = torch.Generator().manual_seed(7)
    shards = [
        {"layers.0.weight": torch.randn(64, 48, generator=generator).to(torch.bfloat16), "layers.0.bias": torch.zeros(3, dtype=torch.float16)},
        {"layers.1.weight": torch.randn(5, 7, generator=generator), "empty": torch.zeros(0, 4), "odd": torch.randn(3, generator=generator).to(torch.bfloat16)},
    ]
    for number, tensors in enumerate(shards):
        safetensors.torch.save_file(tensors, source / f"model-0000{number + 1}-of-00002.safetensors", metadata={"format": "pt"})
    report = ecfloat.compress_file(source)
    loaded = ecfloat.torch.load_file(report["output"])
    for tensors in shards:
        for name, tensor in tensors.items():
            assert same_bits(loaded[name], tensor), name
    back = ecfloat.decompress_file(report["output"], tmp_path / "back")
    for file in source.iterdir():
        assert (Path(back["output"]) / file.name).read_bytes() == file.read_bytes()


def test_compress_decompress_and_verify_report_as_the_cli_does(tmp_path):
    source = tmp_path / "small.safetensors"
    weights = {"w": (torch.randn(256, 256) * 0.02).to(torch.bfloat16)}
    safetensors.torch.save_file(weights, source)
    report = ecfloat.compress_file(source)
    assert report["output"].endswith("small.ecf.safetensors") and report["ratio"] < 0.9
    with pytest.raises(ValueError, match=r"refusing to overwrite an existing file \(pass force=True to replace it\)$"):
        ecfloat.compress_file(source)
    with pytest.raises(ValueError, match=r"\(pass force=True to replace it\)$"):
        ecfloat.decompress_file(report["output"], source)
    assert ecfloat.compress_file(source, force=True)["ratio"] == report["ratio"]
    checked = ecfloat.verify(report["output"])
    assert checked["ok"] and checked["files"][0]["tensors"][0]["name"] == "w"
    back = ecfloat.decompress_file(report["output"], tmp_path / "back.safetensors")
    assert Path(back["output"]).read_bytes() == source.read_bytes()
    with pytest.raises(ecfloat.DeviceError):
        ecfloat.verify(report["output"], backend="cuda")


def test_bad_input_raises_the_clis_message_and_never_crashes(tmp_path):
    with pytest.raises(OSError, match="No such file"):
        ecfloat.torch.load_file(tmp_path / "missing.ecf.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors"):
        ecfloat.torch.load_file(junk)
    # A compressed file whose coded bytes were changed: the checksum or the
    # decoder refuses it, naming the file and the tensor.
    source = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"w": (torch.randn(512, 512) * 0.02).to(torch.bfloat16)}, source)
    path = Path(ecfloat.compress_file(source)["output"])
    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    middle = 8 + header + (len(data) - 8 - header) // 2
    data[middle] ^= 0x5A
    data[middle + 1] ^= 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="tensor w"):
        ecfloat.torch.load_file(path)
    # Truncated.
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ValueError):
        ecfloat.torch.load_file(path)


def test_bert_from_the_compressed_checkpoint_is_bit_identical(tmp_path):
    transformers = pytest.importorskip("transformers")
    if not MINILM.exists():
        pytest.skip(f"{MINILM} is absent")
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
        layer_norm_eps=1e-12,
    )
    compressed = ecfloat.compress_file(MINILM, tmp_path / "minilm.ecf.safetensors")["output"]
    ids = torch.tensor([[101, 1996, 4248, 2829, 4419, 14523, 102, 0], [101, 23435, 2003, 19875, 1012, 102, 0, 0]])
    mask = (ids != 0).long()

    def embed(state_dict):
        torch.manual_seed(0)
        model = transformers.BertModel(config).eval()
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        assert not missing, missing
        assert set(unexpected) <= {"embeddings.position_ids"}, unexpected
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

    ours = embed(ecfloat.torch.load_file(compressed))
    theirs = embed(safetensors.torch.load_file(MINILM))
    assert ours.shape == (2, 8, 384)
    assert same_bits(ours, theirs)


def test_tensors_decoded_on_the_gpu_are_bit_identical(compressed):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for original, path in compressed.items():
        theirs = safetensors.torch.load_file(original, device="cuda")
        ours = ecfloat.torch.load_file(path, device="cuda")
        torch.cuda.synchronize()
        for name, tensor in theirs.items():
            assert ours[name].device == tensor.device
            assert same_bits(ours[name], tensor), f"{original.name}: {name}"


def test_a_gpu_asked_for_without_a_driver_raises_device_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    source = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(8, dtype=torch.bfloat16)}, source)
    path = ecfloat.compress_file(source)["output"]
    with ecfloat.safe_open(path) as f:
        checkpoint = f._checkpoint
        with pytest.raises(ecfloat.DeviceError, match="cuda"):
            checkpoint.read_into_cuda("w", 0, 0, 4096, 16)
