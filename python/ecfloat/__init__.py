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
from typing import Any, Callable, Dict, List, Optional, Union

from ._ecfloat import Checkpoint as _Checkpoint
from ._ecfloat import DeviceError
from ._ecfloat import __version__
from ._ecfloat import compress as _compress
from ._ecfloat import decompress as _decompress
from ._ecfloat import verify as _verify

__all__ = ["DeviceError", "__version__", "compress_file", "decompress_file", "safe_open", "verify"]

PathLike = Union[str, "os.PathLike[str]"]


# The command line's hint for an existing output; from Python it is an argument.
_FORCE_OPTION_HINT = "(pass --force to replace it)"


def _run_command(command: Callable[[], str]) -> Dict[str, Any]:
    """A command's JSON report, its errors naming ``force=True`` where the
    command line names ``--force``."""
    try:
        return json.loads(command())
    except ValueError as error:
        message = str(error)
        if message.endswith(_FORCE_OPTION_HINT):
            raise ValueError(message[: -len(_FORCE_OPTION_HINT)] + "(pass force=True to replace it)") from None
        raise


def compress_file(source: PathLike, output: Optional[PathLike] = None, *, force: bool = False) -> Dict[str, Any]:
    """Compresses a safetensors file, or a checkpoint directory, as ``ecf
    compress`` does.

    ``output`` defaults to ``NAME.ecf.safetensors`` beside a file and
    ``DIR.ecf`` beside a directory; an existing output is an error unless
    ``force``. Returns the command's JSON report as a dict (sizes, ratio,
    seconds). Raises ``ValueError`` for a file that is not valid
    safetensors and ``OSError`` for I/O; nothing is left half-written.
    """
    return _run_command(lambda: _compress(os.fspath(source), None if output is None else os.fspath(output), force))


def decompress_file(source: PathLike, output: Optional[PathLike] = None, *, force: bool = False) -> Dict[str, Any]:
    """Rebuilds the original file, or directory, byte for byte, as ``ecf
    decompress`` does, checking every checksum before anything is kept.

    Returns the command's JSON report as a dict.
    """
    return _run_command(lambda: _decompress(os.fspath(source), None if output is None else os.fspath(output), force))


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
    there, on torch's current stream. ``backend`` is accepted as
    safetensors accepts it (``"mmap"``, ``"pread"``) and changes nothing:
    the file is mapped and each tensor's pages leave memory once decoded.
    Usable with or without ``with``.
    """

    def __init__(self, path: PathLike, framework: str = "pt", device: Union[str, int] = "cpu", backend: Optional[str] = None) -> None:
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

    def offset_keys(self) -> List[str]:
        """Tensor names in the order of their data in the original file."""
        return self._checkpoint.keys_in_data_order()

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

    def get_slice(self, name: str) -> "TensorSlice":
        """Tensor ``name`` as safetensors' ``get_slice`` gives it: its dtype
        and shape now, its values (or a part of them, ``slice[0:128]``)
        when indexed. Raises ``KeyError`` for a name the checkpoint lacks."""
        self._checkpoint.info(name)
        return TensorSlice(self, name)


class TensorSlice:
    """A tensor of a ``safe_open`` checkpoint, decoded when indexed: the
    whole tensor is decoded, then the part asked for is copied out, so a
    loader that reads a tensor in parts decodes it once per part."""

    def __init__(self, opened: safe_open, name: str) -> None:
        self._opened = opened
        self._name = name

    def get_dtype(self) -> str:
        """The dtype as safetensors names it (``"BF16"``)."""
        return self._opened._checkpoint.info(self._name)[0]

    def get_shape(self) -> List[int]:
        return list(self._opened._checkpoint.info(self._name)[1])

    def __getitem__(self, index: Any) -> Any:
        tensor = self._opened.get_tensor(self._name)
        if index is Ellipsis or index == slice(None):
            return tensor
        part = tensor[index]
        # A part of its own, as safetensors returns: not a view that keeps
        # the whole tensor alive.
        return part.clone() if hasattr(part, "clone") else part.copy()
