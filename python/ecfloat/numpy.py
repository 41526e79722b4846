"""Compressed checkpoints as NumPy arrays: ``load_file`` is
``safetensors.numpy.load_file`` for compressed files and directories, with
``ml_dtypes`` for BF16 and FP8."""

from __future__ import annotations

import os
from typing import Dict, Union

import numpy as np

from ._ecfloat import Checkpoint as _Checkpoint

__all__ = ["load_file"]

_DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "U16": np.uint16,
    "I32": np.int32,
    "U32": np.uint32,
    "I64": np.int64,
    "U64": np.uint64,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
}
# NumPy has no BF16 or FP8; ml_dtypes adds them.
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _dtype(name: str) -> np.dtype:
    if name in _DTYPES:
        return np.dtype(_DTYPES[name])
    if name in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError as error:
            raise ValueError(f"{name} tensors need ml_dtypes (pip install ml_dtypes)") from error
        return np.dtype(getattr(ml_dtypes, _ML_DTYPES[name]))
    raise ValueError(f"NumPy has no dtype for {name}")


def _read(checkpoint: _Checkpoint, name: str) -> np.ndarray:
    dtype_name, shape, nbytes = checkpoint.info(name)
    array = np.empty(shape, dtype=_dtype(dtype_name))
    checkpoint.read_into(name, array.ctypes.data, nbytes)
    return array


def load_file(filename: Union[str, "os.PathLike[str]"]) -> Dict[str, np.ndarray]:
    """Every tensor of a checkpoint, by name, as NumPy arrays: a compressed
    file or directory, or plain safetensors. BF16 and FP8 tensors use
    ``ml_dtypes``' dtypes. Each equals ``safetensors.numpy.load_file`` of
    the original in every bit."""
    checkpoint = _Checkpoint(os.fspath(filename))
    return {name: _read(checkpoint, name) for name in checkpoint.keys()}
