"""Lossless compression of model weights: compressed checkpoints load into
PyTorch and NumPy as safetensors ones do.

    import ecfloat.torch
    state_dict = ecfloat.torch.load_file("model.ecf.safetensors")

    with ecfloat.safe_open("model.ecf", framework="pt") as f:
        weight = f.get_tensor("model.layers.0.mlp.up_proj.weight")

A path is a compressed file, a compressed checkpoint directory (what
``ecf compress DIR`` writes), or plain safetensors; every decoded bit equals
the original's, checked against the checksum taken at compression.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Union

from ._ecfloat import Checkpoint as _Checkpoint
from ._ecfloat import DeviceError
from ._ecfloat import compress as _compress
from ._ecfloat import decompress as _decompress
from ._ecfloat import verify as _verify

__all__ = ["DeviceError", "compress_file", "decompress_file", "safe_open", "verify"]

PathLike = Union[str, "os.PathLike[str]"]


def compress_file(source: PathLike, output: Optional[PathLike] = None, *, force: bool = False) -> Dict[str, Any]:
    """Compresses a safetensors file, or a checkpoint directory, as ``ecf
    compress`` does.

    ``output`` defaults to ``NAME.ecf.safetensors`` beside a file and
    ``DIR.ecf`` beside a directory; an existing output is an error unless
    ``force``. Returns the command's JSON report as a dict (sizes, ratio,
    seconds). Raises ``ValueError`` for a file that is not valid
    safetensors and ``OSError`` for I/O; nothing is left half-written.
    """
    return json.loads(_compress(os.fspath(source), None if output is None else os.fspath(output), force))


def decompress_file(source: PathLike, output: Optional[PathLike] = None, *, force: bool = False) -> Dict[str, Any]:
    """Rebuilds the original file, or directory, byte for byte, as ``ecf
    decompress`` does, checking every checksum before anything is kept.

    Returns the command's JSON report as a dict.
    """
    return json.loads(_decompress(os.fspath(source), None if output is None else os.fspath(output), force))


def verify(path: PathLike, *, backend: str = "cpu") -> Dict[str, Any]:
    """Decodes everything in a compressed file or directory and checks every
    checksum, as ``ecf verify`` does. A failed check is reported in the
    returned dict (``"ok": False``), not raised.

    ``backend`` is ``"cpu"`` or ``"cuda"`` (``"wgpu"`` is not in this
    package); a backend that cannot run here raises ``DeviceError`` with
    the reason.
    """
    return json.loads(_verify(os.fspath(path), backend))


class safe_open:
    """A checkpoint opened lazily, as ``safetensors.safe_open`` opens one:
    each ``get_tensor`` decodes that tensor alone, so memory stays bounded by
    the largest tensor.

    ``framework`` is ``"pt"`` (torch tensors) or ``"np"`` (NumPy arrays,
    with ``ml_dtypes`` for BF16 and FP8); ``device`` is where torch tensors
    go (``"cpu"``, ``"cuda"``, ``"cuda:1"``, …): on a GPU they are decoded
    there, on torch's current stream.
    """

    def __init__(self, path: PathLike, framework: str = "pt", device: Union[str, int] = "cpu") -> None:
        if framework not in ("pt", "torch", "np", "numpy"):
            raise ValueError(f"framework {framework!r}: ecfloat reads into 'pt' (torch) or 'np' (numpy)")
        self._framework = "pt" if framework in ("pt", "torch") else "np"
        self._device = device
        self._checkpoint = _Checkpoint(os.fspath(path))

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def keys(self) -> List[str]:
        """Tensor names, sorted, as safetensors lists them."""
        return self._checkpoint.keys()

    def metadata(self) -> Optional[Dict[str, str]]:
        """The original file's ``__metadata__`` (the first shard's)."""
        return self._checkpoint.metadata()

    def get_tensor(self, name: str) -> Any:
        """Tensor ``name``, decoded now. Raises ``KeyError`` for a name the
        checkpoint lacks."""
        if self._framework == "pt":
            from .torch import _read

            return _read(self._checkpoint, name, self._device)
        from .numpy import _read

        return _read(self._checkpoint, name)
