"""Writing compressed files from torch tensors: ``save_file`` is
``safetensors.torch.save_file`` with the file compressed as it is written.

torch is imported when a file is saved, so that this module, and the
package, import without it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple, Union

from . import _ecfloat

if TYPE_CHECKING:
    import torch

__all__ = ["save_file"]

# torch dtype names (``str(dtype)`` less ``torch.``) to safetensors' names.
# Those a torch build lacks are never met.
_SAFETENSORS_DTYPES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
}


def save_file(
    tensors: Dict[str, "torch.Tensor"],
    filename: Union[str, "os.PathLike[str]"],
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Saves a dictionary of tensors into ``filename`` as a compressed
    safetensors file, as ``safetensors.torch.save_file`` saves a plain one.

    The same checks apply: ``tensors`` is a dict of dense, contiguous
    tensors, none sharing memory with another; ``metadata`` is text only.
    Decompressing the file (``ecf decompress``) gives the file
    ``safetensors.torch.save_file`` writes for the same tensors (with the
    metadata keys sorted), and ``ecfloat.torch.load_file`` loads every
    tensor back bit for bit. A tensor on a GPU is copied to the host first.

    The file appears under its name only once it is complete, replacing an
    existing file; its directory needs room for the uncompressed tensors
    while it is written. The GIL is released meanwhile; as with safetensors,
    nothing stops another thread from changing the tensors while they are
    read.

    Raises ``ValueError`` for what safetensors refuses (and for a dtype it
    has no name for), ``RuntimeError`` for tensors that share memory,
    ``TypeError`` for metadata that is not a dict of strings, and
    ``OSError`` when the file cannot be written.
    """
    import torch

    _check_tensors(torch, tensors)
    specs: List[Tuple[str, str, List[int], int, int]] = []
    # The host tensors whose memory the extension reads: alive until it
    # returns.
    held: List["torch.Tensor"] = []
    for name, tensor in tensors.items():
        if not tensor.is_contiguous():
            raise ValueError(
                f"You are trying to save a non contiguous tensor: `{name}` which is not allowed. It either means you"
                " are trying to save tensors which are reference of each other in which case it's recommended to save"
                " only the full tensors, and reslice at load time, or simply call `.contiguous()` on your tensor to"
                " pack it before saving."
            )
        dtype_name = _SAFETENSORS_DTYPES.get(str(tensor.dtype).replace("torch.", ""))
        if dtype_name is None:
            raise ValueError(f"Key `{name}`: safetensors has no dtype for {tensor.dtype}")
        host = tensor.detach()
        if host.device.type != "cpu":
            host = host.to("cpu")
        # A conjugated or negated view keeps its data unchanged and the
        # operation as a flag, which raw memory would not carry.
        if host.is_conj():
            host = host.resolve_conj()
        if host.is_neg():
            host = host.resolve_neg()
        held.append(host)
        length = host.numel() * host.element_size()
        specs.append((name, dtype_name, list(host.shape), host.data_ptr() if length else 0, length))
    _ecfloat.save_file(os.fspath(filename), specs, metadata)


def _check_tensors(torch, tensors) -> None:
    """safetensors' checks before saving, with its messages: a dict of
    dense tensors, none sharing memory with another."""
    if not isinstance(tensors, dict):
        raise ValueError(f"Expected a dict of [str, torch.Tensor] but received {type(tensors)}")
    sparse = []
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"Key `{name}` is invalid, expected torch.Tensor but received {type(tensor)}")
        if tensor.layout != torch.strided:
            sparse.append(name)
    if sparse:
        raise ValueError(
            f"You are trying to save a sparse tensors: `{sparse}` which this library does not support."
            " You can make it a dense tensor before saving with `.to_dense()` but be aware this might"
            " make a much larger file than needed."
        )
    shared = [names for names in _shared_tensors(torch, tensors) if len(names) > 1]
    if shared:
        raise RuntimeError(
            "Some tensors share memory, this will lead to duplicate memory on disk and potential differences"
            f" when loading them again: {shared}. Save one tensor of each group, or clone the others."
            " More information at https://huggingface.co/docs/safetensors/torch_shared_tensors"
        )


def _shared_tensors(torch, tensors) -> List[Set[str]]:
    """Names of tensors whose memory overlaps, grouped, as safetensors
    groups them: by storage, then by overlapping byte ranges within it
    (slices of one storage that do not overlap are separate)."""
    by_storage: Dict[tuple, Set[str]] = defaultdict(set)
    for name, tensor in tensors.items():
        if tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() != 0 and storage.nbytes() != 0:
            by_storage[(tensor.device, storage.data_ptr(), storage.nbytes())].add(name)
    groups: List[Set[str]] = []
    for names in by_storage.values():
        if len(names) < 2:
            groups.append(names)
            continue
        areas = sorted((tensors[name].data_ptr(), _end(tensors[name]), name) for name in names)
        _, last_end, first = areas[0]
        groups.append({first})
        for start, end, name in areas[1:]:
            if start >= last_end:
                groups.append({name})
            else:
                groups[-1].add(name)
            last_end = max(last_end, end)
    return groups


def _end(tensor) -> int:
    """The address just past the last byte a (strided) tensor spans."""
    if tensor.numel() == 0:
        return tensor.data_ptr()
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()) if stride > 0)
    return tensor.data_ptr() + (last + 1) * tensor.element_size()
