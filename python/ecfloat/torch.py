"""Compressed checkpoints as torch tensors: ``load_file``, ``load_model`` and
``save_file`` are ``safetensors.torch``'s for compressed files and
directories, and ``load_model(..., keep_coded=True)`` keeps a module's
weights coded in memory, decoding each block just before it runs."""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional, Tuple, Union

import torch

from . import _kept
from ._ecfloat import Checkpoint as _Checkpoint
from ._ecfloat import layer_block as _layer_block
from ._writing import save_file

__all__ = ["load_file", "load_model", "memory", "save_file", "KEEP_CODED_MIN_BYTES"]

#: Float parameters of at least this many bytes stay coded with
#: ``keep_coded=True`` whatever module holds them; the weights of
#: ``nn.Linear`` and ``nn.Embedding`` stay coded at any size. Smaller ones
#: (norms, biases) are loaded decoded: coding them saves little and each
#: would cost a decode per run.
KEEP_CODED_MIN_BYTES = 1 << 20

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


def _owner(name: str) -> Tuple[str, str]:
    """("encoder.layer.0.output.dense", "weight") for that tensor name."""
    module, _, attribute = name.rpartition(".")
    return module, attribute


def _stays_coded(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> bool:
    module_path, attribute = _owner(name)
    module = model.get_submodule(module_path)
    if not tensor.dtype.is_floating_point or attribute not in module._parameters:
        return False
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and attribute == "weight":
        return True
    return tensor.numel() * tensor.element_size() >= KEEP_CODED_MIN_BYTES


def _common_module(names: List[str]) -> str:
    paths = [_owner(name)[0].split(".") if _owner(name)[0] else [] for name in names]
    common = paths[0]
    for path in paths[1:]:
        length = 0
        while length < min(len(common), len(path)) and common[length] == path[length]:
            length += 1
        common = common[:length]
    return ".".join(common)


def _is_within(inner: str, outer: str) -> bool:
    return outer == "" or inner == outer or inner.startswith(outer + ".")


def _blocks(names: List[str], order: Dict[str, int]) -> List[Tuple[str, str, List[str]]]:
    """Kept tensors by block, as ``(block, module, names)`` in the order the
    modules were registered (the order most models run them in).

    A block is the Rust runtime's layer (``model.layers.3``), else the
    module that holds the tensor; its hooks go on the innermost module that
    holds all its tensors. A block whose module holds another block's would
    be decoded while the other one runs, in a buffer of its own: its
    tensors are left out here (loaded decoded) instead."""
    by_block: Dict[str, List[str]] = {}
    for name in names:
        by_block.setdefault(_layer_block(name) or _owner(name)[0], []).append(name)
    by_module: Dict[str, Tuple[str, List[str]]] = {}
    for block, members in by_block.items():
        module = _common_module(members)
        if module in by_module:
            by_module[module][1].extend(members)
        else:
            by_module[module] = (block, members)
    kept = [
        (block, module, members)
        for module, (block, members) in by_module.items()
        if not any(other != module and _is_within(other, module) for other in by_module)
    ]
    return sorted(kept, key=lambda b: order.get(b[1], len(order)))


def _aliases(model: torch.nn.Module) -> Dict[str, List[str]]:
    """Every name of each parameter and buffer, by its first name: tied
    weights (an ``lm_head`` sharing the embedding) have several."""
    first: Dict[int, str] = {}
    names: Dict[str, List[str]] = {}
    every = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in every:
        key = first.setdefault(id(tensor), name)
        names.setdefault(key, []).append(name)
    return names


def _state_names(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """What ``load_state_dict`` fills: parameters and persistent buffers,
    under every name they have."""
    state = model.state_dict(keep_vars=True)
    for key, names in _aliases(model).items():
        if key in state:
            for name in names:
                state.setdefault(name, state[key])
    return state


def _replace(model: torch.nn.Module, names: List[str], value: torch.Tensor, parameter: bool) -> torch.Tensor:
    """Puts ``value`` under each of ``names`` (one tensor, tied where there
    are several), as ``load_state_dict(assign=True)`` does."""
    if parameter:
        old = model.get_parameter(names[0])
        value = torch.nn.Parameter(value, requires_grad=old.requires_grad and value.dtype.is_floating_point)
    for name in names:
        module_path, attribute = _owner(name)
        module = model.get_submodule(module_path)
        if parameter:
            module._parameters[attribute] = value
        else:
            module._buffers[attribute] = value
    return value


def _load_error(model: torch.nn.Module, missing, unexpected) -> RuntimeError:
    error = f"Error(s) in loading state_dict for {model.__class__.__name__}:"
    if missing:
        error += "\n    Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in sorted(missing))
    if unexpected:
        error += "\n    Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in sorted(unexpected))
    return RuntimeError(error)


def load_model(
    model: torch.nn.Module,
    filename: Union[str, "os.PathLike[str]"],
    strict: bool = True,
    device: Union[str, int, torch.device] = "cpu",
    *,
    keep_coded: bool = False,
) -> Tuple[List[str], List[str]]:
    """Loads a checkpoint into ``model``, as ``safetensors.torch.load_model``
    does, and returns ``(missing, unexpected)`` key lists.

    ``filename`` is a compressed file, a compressed checkpoint directory,
    or plain safetensors. Every tensor goes to ``device``, replacing the
    module's (which may be on the ``meta`` device: nothing is allocated
    twice), in the module's dtype; tied parameters stay tied. With
    ``strict``, a key the module has and the checkpoint lacks, or the
    reverse, raises ``RuntimeError`` as ``load_state_dict`` does; a shape
    that differs always raises. Nothing in the module changes unless the
    whole load succeeds: keys and shapes are checked, and every tensor is
    decoded and checked, before the first is put in place.

    With ``keep_coded=True``, the weights of ``nn.Linear`` and
    ``nn.Embedding`` (and float parameters of ``KEEP_CODED_MIN_BYTES`` or
    more) stay coded on ``device``, grouped by block (``…layers.N``, as the
    Rust runtime groups them, else by module); a forward pre-hook decodes a
    block into a reused buffer just before its module runs and a forward
    hook releases it. Between runs such a parameter holds one NaN, expanded
    to its shape. Tied parameters (an ``lm_head`` sharing the embedding),
    used outside one module's forward, are loaded decoded. On a GPU the next block's decode is queued on a second
    stream while the current one runs. Each coded tensor is checked once
    here (on the CPU against its checksum, on a GPU by the decoder's
    validation of every block). The parameters are not trainable.
    ``ecfloat.torch.memory(model)`` reports what the model holds.

    Raises ``ValueError`` for a corrupt or invalid file (naming the file and
    the tensor), ``OSError`` when it cannot be read, ``ecfloat.DeviceError``
    when the GPU cannot decode, and ``RuntimeError`` for keys or shapes
    that do not match.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    path = os.fspath(filename)
    checkpoint = _Checkpoint(path)
    stored = set(checkpoint.keys())
    state = _state_names(model)
    aliases = _aliases(model)
    name_of = {name: key for key, names in aliases.items() for name in names}

    # Keys, as safetensors' load_model counts them: a tied tensor is
    # loaded once, under whichever of its names the checkpoint has.
    loaded: Dict[str, str] = {}
    missing = []
    for name in state:
        key = name_of.get(name, name)
        if name in stored:
            loaded.setdefault(key, name)
    for name in state:
        if name_of.get(name, name) not in loaded:
            missing.append(name)
    unexpected = sorted(stored - set(state))
    mismatched = []
    for key, name in loaded.items():
        _, shape, _ = checkpoint.info(name)
        if list(state[key].shape) != list(shape):
            mismatched.append(
                f"size mismatch for {name}: copying a param with shape {torch.Size(shape)} from checkpoint, "
                f"the shape in current model is {state[key].shape}."
            )
    if mismatched:
        raise RuntimeError(f"Error(s) in loading state_dict for {model.__class__.__name__}:\n    " + "\n    ".join(mismatched))
    if strict and (missing or unexpected):
        raise _load_error(model, missing, unexpected)

    parameters = {key for key, _ in model.named_parameters()}
    coded = []
    if keep_coded:
        coded = [
            name
            for key, name in loaded.items()
            if key in parameters and len(aliases.get(key, [key])) == 1 and _stays_coded(model, name, state[key])
        ]
    order = {path: number for number, (path, _) in enumerate(model.named_modules())}
    blocks = _blocks(coded, order) if coded else []
    coded = {name for _, _, members in blocks for name in members}

    # Everything decoded and checked before the module changes.
    decoded = {}
    for key, name in _progress(list(loaded.items()), "decoding"):
        if name in coded:
            continue
        tensor = _read(checkpoint, name, device)
        if tensor.dtype != state[key].dtype:
            tensor = tensor.to(state[key].dtype)
        decoded[key] = tensor
    kept = None
    if blocks:
        kept = _keep(checkpoint, blocks, device, state)

    for key, tensor in decoded.items():
        _replace(model, aliases.get(key, [key]), tensor, key in parameters)
    if kept is not None:
        for block in kept.blocks:
            for tensor in block.tensors:
                tensor.parameter = _replace(model, [tensor.name], tensor.placeholder, True)
                tensor.parameter.requires_grad_(False)
        previous = getattr(model, "_ecfloat_kept", None)
        if previous is not None:
            previous.remove()
        kept.install(model)
        model._ecfloat_kept = kept
    return missing, unexpected


def _keep(checkpoint: _Checkpoint, blocks, device: torch.device, state) -> _kept.KeptWeights:
    decode_stream = None
    cuda = None
    if device.type == "cuda":
        decode_stream = torch.cuda.Stream(device)
        cuda = (device.index, decode_stream.cuda_stream)
    elif device.type != "cpu":
        raise ValueError(f"keep_coded: weights stay coded on 'cpu' or 'cuda' devices, not {device.type!r}")
    weights = checkpoint.keep_coded([(block, members) for block, _, members in blocks], cuda)
    kept_blocks = []
    for index, ((block, module_path, _), (_, nbytes, tensors)) in enumerate(zip(blocks, weights.layout())):
        members = []
        for name, offset, size in tensors:
            dtype_name, shape, _ = checkpoint.info(name)
            target = state[name].dtype
            members.append(
                _kept.KeptTensor(
                    name=name,
                    parameter=None,
                    offset=offset,
                    nbytes=size,
                    stored_dtype=_DTYPES[dtype_name],
                    shape=tuple(shape),
                    placeholder=_kept.placeholder(tuple(shape), target, device),
                )
            )
        kept_blocks.append(_kept.Block(index, block, module_path, nbytes, members))
    return _kept.KeptWeights(weights, kept_blocks, device, decode_stream)


def memory(model: torch.nn.Module) -> Dict[str, int]:
    """What a model's weights occupy, in bytes, on their devices.

    - ``coded_bytes``: the weights kept coded (``keep_coded=True``);
    - ``decoded_bytes``: every other parameter and buffer, as loaded;
    - ``decode_buffer_bytes``: the buffers blocks decode into;
    - ``largest_block_bytes``: the largest block decoded, which sizes
      each buffer;
    - ``resident_bytes``: everything the weights hold now, counted from
      the storages the module's parameters and buffers use, plus the
      coded weights and the decode buffers;
    - ``peak_bytes``: the most the weights have held at once: resident,
      plus the largest set of converted copies a block bound at once
      (parameters held in another dtype than the file's);
    - ``uncompressed_bytes``: the same weights all decoded.
    """
    kept = getattr(model, "_ecfloat_kept", None)
    ours = kept.buffer_storages() if kept is not None else set()
    storages = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        storage = tensor.untyped_storage()
        if storage.device.type == "meta" or storage.data_ptr() in ours:
            continue
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    held = sum(storages.values())
    coded = kept.weights.coded_bytes() if kept is not None else 0
    buffers = kept.decode_buffer_bytes() if kept is not None else 0
    kept_decoded = kept.weights.decoded_bytes() if kept is not None else 0
    placeholders = 0
    if kept is not None:
        placeholders = sum(t.placeholder.untyped_storage().nbytes() for b in kept.blocks for t in b.tensors)
    decoded = held - placeholders
    return {
        "coded_bytes": coded,
        "decoded_bytes": decoded,
        "decode_buffer_bytes": buffers,
        "largest_block_bytes": kept.largest_block_bytes if kept is not None else 0,
        "resident_bytes": held + coded + buffers,
        "peak_bytes": held + coded + buffers + (kept.peak_converted_bytes if kept is not None else 0),
        "uncompressed_bytes": decoded + kept_decoded,
    }
