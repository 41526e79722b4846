"""Compressed checkpoints as torch tensors: ``load_file`` is
``safetensors.torch.load_file`` for compressed files and directories."""

from __future__ import annotations

import os
import sys
from typing import Dict, Union

import torch

from ._ecfloat import Checkpoint as _Checkpoint

__all__ = ["load_file"]

_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": getattr(torch, "uint16", None),
    "I32": torch.int32,
    "U32": getattr(torch, "uint32", None),
    "I64": torch.int64,
    "U64": getattr(torch, "uint64", None),
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


def _read(checkpoint: _Checkpoint, name: str, device: Union[str, int, torch.device] = "cpu") -> torch.Tensor:
    dtype_name, shape, nbytes = checkpoint.info(name)
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise ValueError(f"tensor {name}: this torch ({torch.__version__}) has no dtype for {dtype_name}")
    device = torch.device(device)
    if device.type == "cuda" and nbytes > 0:
        return _read_on_gpu(checkpoint, name, dtype, shape, nbytes, device)
    tensor = torch.empty(shape, dtype=dtype)
    # The decoder writes the tensor's bytes straight into its storage.
    checkpoint.read_into(name, tensor.data_ptr(), nbytes)
    return tensor if device.type == "cpu" else tensor.to(device)


def _read_on_gpu(checkpoint: _Checkpoint, name: str, dtype: torch.dtype, shape, nbytes: int, device: torch.device) -> torch.Tensor:
    """Decodes on the GPU, on torch's current stream, into memory torch
    allocated: the decoded bytes never pass through the host."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    # The decoder writes whole 32-bit words.
    buffer = torch.empty((nbytes + 3) // 4 * 4, dtype=torch.uint8, device=torch.device("cuda", index))
    checkpoint.read_into_cuda(name, index, stream.cuda_stream, buffer.data_ptr(), buffer.numel())
    return buffer[:nbytes].view(dtype).reshape(shape)


def _progress(names, description: str):
    """``names`` under a tqdm bar when tqdm is installed and stderr is a
    terminal, as huggingface_hub shows one."""
    if not sys.stderr.isatty():
        return names
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return names
    return tqdm(names, desc=description, unit="tensor")


def load_file(filename: Union[str, "os.PathLike[str]"], device: Union[str, int, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, by name, as torch tensors on ``device``.

    ``filename`` is a compressed file (``.ecf.safetensors``), a compressed
    checkpoint directory, or plain safetensors (a file, or a directory of
    shards). On ``"cpu"`` each tensor is decoded into memory torch
    allocated and checked against the checksum taken at compression; on
    ``"cuda"`` (``"cuda:1"``, …) it is decoded on that GPU, on torch's
    current stream, into memory torch allocated there, and checked by the
    decoder's validation of every block: the decoded bytes never pass
    through the host. Either way the result equals
    ``safetensors.torch.load_file`` of the original in every bit. The GIL
    is released while a tensor decodes.

    Raises ``ValueError`` for a corrupt or invalid file, ``OSError`` when it
    cannot be read, and ``ecfloat.DeviceError`` when the GPU cannot decode;
    no input crashes the interpreter.
    """
    checkpoint = _Checkpoint(os.fspath(filename))
    names = checkpoint.keys()
    return {name: _read(checkpoint, name, device) for name in _progress(names, "decoding")}
