"""``ecfloat.torch.save_file`` against ``safetensors.torch.save_file``, and
``python -m ecfloat`` against what ``ecf`` prints and exits with."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

import ecfloat
import ecfloat.torch
from ecfloat import _ecfloat
from ecfloat._writing import save_file

REPO = Path(__file__).resolve().parents[2]


def same_bits(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    return (
        ours.dtype == theirs.dtype
        and ours.shape == theirs.shape
        and ours.reshape(-1).view(torch.uint8).equal(theirs.reshape(-1).view(torch.uint8))
    )


def sample_tensors() -> dict:
    """Every case a checkpoint has: weights large enough to be coded, small
    and odd-length float tensors, empty and scalar ones, integers."""
    generator = torch.Generator().manual_seed(11)
    return {
        "layers.0.mlp.weight": (torch.randn(256, 192, generator=generator) * 0.02).to(torch.bfloat16),
        "layers.0.attn.weight": (torch.randn(160, 128, generator=generator) * 0.05).to(torch.float16),
        "layers.0.norm.weight": torch.randn(4097, generator=generator),
        "odd.bf16": torch.randn(7, generator=generator).to(torch.bfloat16),
        "odd.f16": torch.randn(3, 5, generator=generator).to(torch.float16),
        "empty": torch.zeros(0, 3, dtype=torch.bfloat16),
        "scalar": torch.tensor(1.5, dtype=torch.float32),
        "positions": torch.arange(13, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(5, dtype=torch.uint8),
    }


def header(path: Path) -> dict:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length])


def test_save_file_writes_a_compressed_file_that_loads_as_safetensors_saves(tmp_path):
    tensors = sample_tensors()
    metadata = {"format": "pt", "source": "test"}
    plain, ours = tmp_path / "plain.safetensors", tmp_path / "model.ecf.safetensors"
    safetensors.torch.save_file(tensors, plain, metadata=metadata)
    save_file(tensors, ours, metadata=metadata)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.ecf.safetensors", "plain.safetensors"]

    theirs = safetensors.torch.load_file(plain)
    loaded = ecfloat.torch.load_file(ours)
    assert sorted(loaded) == sorted(theirs) == sorted(tensors)
    for name, tensor in theirs.items():
        assert same_bits(loaded[name], tensor), name
        assert same_bits(loaded[name], tensors[name]), name
    with ecfloat.safe_open(ours) as f, safetensors.safe_open(plain, "pt") as g:
        assert f.metadata() == g.metadata() == metadata
        assert f.keys() == sorted(g.keys())

    inspection = json.loads(_ecfloat.inspect(str(ours)))
    assert inspection["compressed"] and inspection["ratio"] < 0.9
    coded = {t["name"] for t in inspection["tensors"] if t["coded"]}
    assert {"layers.0.mlp.weight", "layers.0.attn.weight"} <= coded
    assert ecfloat.verify(ours)["ok"]

    # It decompresses to the file safetensors writes, but for the order of
    # the metadata keys, which safetensors leaves to its hash map.
    back = Path(ecfloat.decompress_file(ours, tmp_path / "back.safetensors")["output"])
    assert header(back) == header(plain)
    assert list(header(back)) == list(header(plain))
    assert back.read_bytes()[-4096:] == plain.read_bytes()[-4096:]


def test_with_one_metadata_key_or_none_the_decompressed_file_is_safetensors_own(tmp_path):
    tensors = sample_tensors()
    for metadata in (None, {"format": "pt"}):
        plain, ours = tmp_path / "plain.safetensors", tmp_path / "ours.ecf.safetensors"
        safetensors.torch.save_file(tensors, plain, metadata=metadata)
        save_file(tensors, ours, metadata=metadata)
        back = Path(ecfloat.decompress_file(ours, tmp_path / "back.safetensors", force=True)["output"])
        assert back.read_bytes() == plain.read_bytes(), metadata


def test_save_file_takes_path_objects_and_replaces_an_existing_file(tmp_path):
    path = tmp_path / "w.ecf.safetensors"
    path.write_bytes(b"an older file")
    save_file({"w": torch.ones(4, dtype=torch.bfloat16)}, path)
    assert same_bits(ecfloat.torch.load_file(path)["w"], torch.ones(4, dtype=torch.bfloat16))
    save_file({}, str(path))
    assert ecfloat.torch.load_file(path) == {}


def test_tensors_on_the_gpu_are_copied_to_the_host(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    weights = (torch.randn(128, 128) * 0.02).to(torch.bfloat16)
    save_file({"w": weights.cuda()}, tmp_path / "w.ecf.safetensors")
    assert same_bits(ecfloat.torch.load_file(tmp_path / "w.ecf.safetensors")["w"], weights)


def test_views_are_saved_as_their_values(tmp_path):
    base = torch.randn(6, 4)
    tensors = {
        "first": base[:3],  # slices of one storage that do not overlap
        "second": base[3:],
        "conj": torch.randn(3, dtype=torch.complex64).conj(),
        "neg": torch.randn(5, dtype=torch.float64)._neg_view(),
    }
    save_file(tensors, tmp_path / "v.ecf.safetensors")
    # Read back by safetensors itself, which knows C64.
    loaded = safetensors.torch.load_file(ecfloat.decompress_file(tmp_path / "v.ecf.safetensors")["output"])
    for name, tensor in tensors.items():
        expected = tensor.resolve_conj().resolve_neg() if tensor.is_complex() or tensor.is_neg() else tensor
        assert same_bits(loaded[name], expected.clone()), name


def test_what_safetensors_refuses_is_refused(tmp_path):
    path = tmp_path / "x.ecf.safetensors"
    square = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="non contiguous tensor: `t`"):
        save_file({"t": square.t()}, path)
    with pytest.raises(RuntimeError, match="Some tensors share memory"):
        save_file({"a": square, "b": square}, path)
    with pytest.raises(RuntimeError, match="Some tensors share memory"):
        save_file({"a": square, "b": square[1:3]}, path)
    with pytest.raises(ValueError, match="Expected a dict"):
        save_file([square], path)
    with pytest.raises(ValueError, match="Key `a` is invalid"):
        save_file({"a": 1}, path)
    with pytest.raises(ValueError, match="sparse"):
        save_file({"a": square.to_sparse()}, path)
    with pytest.raises(ValueError, match="Key `c`: safetensors has no dtype for torch.complex128"):
        save_file({"c": torch.zeros(2, dtype=torch.complex128)}, path)
    with pytest.raises(TypeError):
        save_file({"a": square}, path, metadata={"k": 1})
    with pytest.raises(TypeError):
        save_file({"a": square}, path, metadata=["k"])
    with pytest.raises(TypeError):
        save_file({1: square}, path)
    with pytest.raises(TypeError):
        save_file({"a": square}, 12)
    assert list(tmp_path.iterdir()) == []


def test_nothing_is_left_behind_when_saving_fails(tmp_path):
    weights = {"w": torch.ones(64, dtype=torch.bfloat16)}
    with pytest.raises(ValueError, match="tensor ecf.source_header: this name is reserved"):
        save_file({"ecf.source_header": torch.ones(3, dtype=torch.uint8)}, tmp_path / "x")
    with pytest.raises(ValueError, match="marks a compressed file"):
        save_file(weights, tmp_path / "x", metadata={"ecf.format": "ecfloat"})
    with pytest.raises(ValueError, match="a directory"):
        save_file(weights, tmp_path)
    with pytest.raises(OSError):
        save_file(weights, tmp_path / "no" / "such" / "directory.ecf.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_the_extension_checks_each_tensor_by_name(tmp_path):
    path = str(tmp_path / "x.ecf.safetensors")
    data = torch.zeros(16, dtype=torch.uint8)
    address = data.data_ptr()
    with pytest.raises(ValueError, match="tensor a: the name is given twice"):
        _ecfloat.save_file(path, [("a", "U8", [4], address, 4), ("a", "U8", [4], address, 4)], None)
    with pytest.raises(ValueError, match='tensor a: dtype "FLOAT" is not a safetensors dtype'):
        _ecfloat.save_file(path, [("a", "FLOAT", [4], address, 4)], None)
    with pytest.raises(ValueError, match=re.escape("tensor a: BF16 [2, 3] takes 12 bytes, but 10 were given")):
        _ecfloat.save_file(path, [("a", "BF16", [2, 3], address, 10)], None)
    with pytest.raises(ValueError, match="tensor a: a null address"):
        _ecfloat.save_file(path, [("a", "U8", [4], 0, 4)], None)
    with pytest.raises(ValueError, match="tensor __metadata__: this name is reserved"):
        _ecfloat.save_file(path, [("__metadata__", "U8", [4], address, 4)], None)
    assert list(tmp_path.iterdir()) == []
    _ecfloat.save_file(path, [("a", "F16", [2, 4], address, 16), ("e", "F32", [0], 0, 0)], {"k": "v"})
    assert sorted(ecfloat.torch.load_file(path)) == ["a", "e"]


# python -m ecfloat


def ecf(*arguments, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecfloat", *map(str, arguments)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def no_traceback(result: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in result.stderr and "Traceback" not in result.stdout


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(sample_tensors(), path, metadata={"format": "pt"})
    return path


def test_compress_and_decompress(checkpoint, tmp_path):
    result = ecf("compress", checkpoint.name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        r"model\.safetensors -> model\.ecf\.safetensors: [\d.]+ kB -> [\d.]+ kB \([\d.]+% of the original\),"
        r" \d+ of 10 tensors coded, [\d.]+ s \(\d+ MB/s\)\n",
        result.stdout,
    ), result.stdout
    compressed = tmp_path / "model.ecf.safetensors"
    assert compressed.is_file()

    again = ecf("compress", checkpoint.name, cwd=tmp_path)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.startswith("ecf: error: model.ecf.safetensors: refusing to overwrite an existing file")
    assert again.stderr.count("\n") == 1 and no_traceback(again)

    forced = ecf("compress", checkpoint, "-o", tmp_path / "out.ecf.safetensors", "--force", "--json", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    report = json.loads(forced.stdout)
    assert report["output"] == str(tmp_path / "out.ecf.safetensors")
    assert report["coded_tensors"] + report["raw_tensors"] == 10 and report["ratio"] < 0.9
    assert forced.stdout.startswith('{\n  "input": ')

    back = tmp_path / "back.safetensors"
    result = ecf("decompress", compressed.name, "--output", back.name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("model.ecf.safetensors -> back.safetensors: ")
    assert "rebuilt and checked in" in result.stdout
    assert back.read_bytes() == checkpoint.read_bytes()
    result = ecf("decompress", compressed, "-o", back, "--force", "--json", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bytes"] == checkpoint.stat().st_size


def test_inspect(checkpoint, tmp_path):
    compressed = ecfloat.compress_file(checkpoint)["output"]
    result = ecf("inspect", compressed, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{compressed}: ecfloat-compressed (format version 2)"
    assert lines[1].split() == ["tensor", "dtype", "shape", "elements", "coded", "H(exp)", "bits/el", "bound"]
    assert any(line.split()[:2] == ["layers.0.mlp.weight", "BF16"] and "yes" in line.split() for line in lines)
    assert lines[-1].startswith("total: 10 tensors, ")

    result = ecf("inspect", "--json", compressed, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads(_ecfloat.inspect(compressed))
    assert report["compressed"] and len(report["tensors"]) == 10

    plain = ecf("inspect", checkpoint, cwd=tmp_path)
    assert plain.returncode == 0 and "plain safetensors (not compressed)" in plain.stdout


def test_verify_passes_and_fails_with_the_exit_status(checkpoint, tmp_path):
    compressed = Path(ecfloat.compress_file(checkpoint)["output"])
    result = ecf("verify", compressed, "--backend", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"{re.escape(str(compressed))}: OK \(10 tensors, \d+ coded, decoded on cpu; 0 failed; file checksum"
        r" matches\) in [\d.]+ s\n",
        result.stdout,
    ), result.stdout

    # The last bytes are the last coded tensor's mantissas: flipping one
    # breaks its checksum, not its decoding.
    corrupted = tmp_path / "corrupted.ecf.safetensors"
    data = bytearray(compressed.read_bytes())
    data[-1] ^= 0x5A
    corrupted.write_bytes(bytes(data))
    result = ecf("verify", corrupted, cwd=tmp_path)
    assert result.returncode == 1 and no_traceback(result)
    assert "decoded bytes do not match the checksum" in result.stdout
    assert result.stdout.splitlines()[0].startswith("FAIL ")
    assert "FAILED (10 tensors" in result.stdout
    assert "file checksum not compared: 1 tensor failed" in result.stdout
    result = ecf("verify", "--json", corrupted, cwd=tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [t["name"] for t in report["files"][0]["tensors"] if not t["ok"]]


def test_errors_are_one_line_and_usage_errors_exit_2(checkpoint, tmp_path):
    for command in ("inspect", "verify", "compress", "decompress"):
        result = ecf(command, "missing.safetensors", cwd=tmp_path)
        assert result.returncode == 1, command
        assert result.stderr == "ecf: error: missing.safetensors: No such file or directory (os error 2)\n", command
        assert result.stdout == ""

    plain = ecf("verify", checkpoint, cwd=tmp_path)
    assert plain.returncode == 1 and plain.stderr.startswith("ecf: error: ")
    assert "not an ecfloat-compressed file" in plain.stderr and no_traceback(plain)

    for arguments in (["verify", checkpoint, "--backend", "tpu"], ["compress"], ["frobnicate"], [], ["--threads", "x", "inspect", checkpoint]):
        result = ecf(*arguments, cwd=tmp_path)
        assert result.returncode == 2, arguments
        assert "usage: ecf" in result.stderr and no_traceback(result)

    result = ecf("--threads", "2", "inspect", checkpoint, "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = ecf("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("ecf ")


def test_a_backend_this_package_lacks_is_an_error_not_a_crash(checkpoint, tmp_path):
    compressed = ecfloat.compress_file(checkpoint)["output"]
    result = ecf("verify", compressed, "--backend", "wgpu", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("ecf: error: wgpu: ")
    assert no_traceback(result)


def ecf_binary():
    built = REPO / "target" / "release" / "ecf"
    return str(built) if built.is_file() else shutil.which("ecf")


def test_reports_read_as_the_binary_prints_them(checkpoint, tmp_path):
    binary = ecf_binary()
    if binary is None:
        pytest.skip("no ecf binary (cargo build --release)")
    compressed = ecfloat.compress_file(checkpoint)["output"]
    corrupted = tmp_path / "corrupted.ecf.safetensors"
    data = bytearray(Path(compressed).read_bytes())
    data[-1] ^= 0x5A
    corrupted.write_bytes(bytes(data))
    timings = re.compile(r'\d+\.\d+ s\b|"seconds": [^,\n]+')
    for arguments in (
        ["inspect", compressed],
        ["inspect", "--json", compressed],
        ["inspect", checkpoint],
        ["verify", compressed],
        ["verify", corrupted],
        ["verify", "--json", corrupted],
        ["inspect", "missing"],
        ["docs", "json"],
        ["docs", "format"],
    ):
        ours = ecf(*arguments, cwd=tmp_path)
        theirs = subprocess.run([binary, *map(str, arguments)], cwd=tmp_path, capture_output=True, text=True)
        assert ours.returncode == theirs.returncode, arguments
        assert timings.sub("T", ours.stdout) == timings.sub("T", theirs.stdout), arguments
        assert ours.stderr == theirs.stderr, arguments


def test_ecfloat_torch_saves_as_it_loads():
    assert ecfloat.torch.save_file is save_file


def test_a_flipped_mantissa_bit_and_a_wrong_sized_buffer_are_errors_naming_the_tensor(tmp_path):
    import numpy

    tensors = sample_tensors()
    plain, ours = tmp_path / "plain.safetensors", tmp_path / "model.ecf.safetensors"
    safetensors.torch.save_file(tensors, plain)
    save_file(tensors, ours)

    # A buffer of the wrong size, for a coded tensor and a plain file's: a
    # ValueError naming the tensor, the buffer left as it was.
    for path, name in ((ours, "layers.0.mlp.weight"), (plain, "layers.0.norm.weight")):
        checkpoint = _ecfloat.Checkpoint(str(path))
        size = tensors[name].numel() * tensors[name].element_size()
        for wrong in (size - 8, size + 8):
            buffer = numpy.full(wrong, 0xA5, dtype=numpy.uint8)
            with pytest.raises(ValueError, match=re.escape(name)):
                checkpoint.read_into(name, buffer.ctypes.data, wrong)
            assert (buffer == 0xA5).all(), (path.name, name, wrong)

    # The last bytes are the last coded tensor's raw mantissas: a flipped
    # bit there is seen only by that tensor's checksum, which every read
    # checks.
    entries = {name: info for name, info in header(ours).items() if name != "__metadata__"}
    last = max(entries, key=lambda name: entries[name]["data_offsets"][1])
    corrupted = tmp_path / "corrupted.ecf.safetensors"
    data = bytearray(ours.read_bytes())
    data[-1] ^= 0x10
    corrupted.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(last) + ".*checksum"):
        ecfloat.torch.load_file(corrupted)
    with ecfloat.safe_open(corrupted) as f:
        with pytest.raises(ValueError, match=re.escape(last)):
            f.get_tensor(last)
        others = [name for name in f.keys() if name != last]
        for name in others:
            assert same_bits(f.get_tensor(name), tensors[name]), name
