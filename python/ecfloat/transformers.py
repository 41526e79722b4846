"""Hugging Face transformers models from compressed checkpoint directories.

    import ecfloat.transformers
    model = ecfloat.transformers.from_pretrained("Llama-3.1-8B.ecf", device="cuda")
    tokens = model.generate(input_ids, max_new_tokens=32)

``from_pretrained`` builds the model a directory's ``config.json`` names
without allocating its weights, then loads it with
``ecfloat.torch.load_model``: by default its linear and embedding weights
stay coded in memory and each block is decoded just before it runs.
``install()`` makes transformers' own ``from_pretrained`` read compressed
files too (decoded at load, as plain ones are).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Optional, Union

import torch

from . import safe_open as _ecfloat_safe_open
from ._ecfloat import is_compressed as _is_compressed
from .torch import _DTYPES, load_model

__all__ = ["from_pretrained", "install", "uninstall"]


def _model_class(config):
    """The class transformers would build for ``config``: the one its
    ``architectures`` names, else what ``AutoModelForCausalLM`` maps the
    config to, else ``AutoModel``'s."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        with contextlib.suppress(KeyError, ValueError):
            return auto._model_mapping[type(config)]
    raise ValueError(f"transformers has no model class for a {type(config).__name__}")


def _checkpoint_dtype(path: str) -> Optional[torch.dtype]:
    """The first floating dtype among the checkpoint's tensors."""
    with _ecfloat_safe_open(path) as opened:
        for name in opened.offset_keys():
            dtype = _DTYPES.get(opened.get_slice(name).get_dtype())
            if dtype is not None and dtype.is_floating_point:
                return dtype
    return None


def _resolve_dtype(dtype: Any, config, path: str) -> torch.dtype:
    if dtype is None or dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or _checkpoint_dtype(path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{path}: dtype {dtype!r} is not a floating-point torch dtype")
    return dtype


@contextlib.contextmanager
def _parameters_on_meta(dtype: torch.dtype):
    """Modules built inside get their parameters on the meta device (no
    memory) in ``dtype``, and their buffers (rotary frequencies, position
    ids: not in the checkpoint) as usual."""
    register = torch.nn.Module.register_parameter
    default = torch.get_default_dtype()

    def register_on_meta(module, name, parameter):
        register(module, name, parameter)
        if parameter is not None:
            meta = parameter.to("meta")
            module._parameters[name] = torch.nn.Parameter(meta, requires_grad=parameter.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register
        torch.set_default_dtype(default)


def from_pretrained(
    path: Union[str, "os.PathLike[str]"],
    device: Union[str, int, torch.device] = "cpu",
    dtype: Any = None,
    *,
    keep_coded: bool = True,
    torch_dtype: Any = None,
    **config_overrides: Any,
):
    """A transformers model from a directory ``ecf compress DIR`` wrote
    from a Hugging Face checkpoint (``config.json`` and the shards; a plain
    checkpoint directory loads too), in eval mode, on ``device``.

    The class is the one ``config.json``'s ``architectures`` names (else
    what ``AutoModelForCausalLM``, then ``AutoModel``, maps the config to);
    it is built with its parameters on the meta device, so nothing is
    allocated twice, then loaded by ``ecfloat.torch.load_model`` with
    ``keep_coded``. ``dtype`` (``torch_dtype`` is taken as its alias, as
    transformers still takes it) defaults to the config's, else the
    checkpoint's. A generation config beside it is loaded, so
    ``generate()`` behaves as with transformers' own loading.
    ``config_overrides`` go to ``AutoConfig.from_pretrained``
    (``attn_implementation="eager"``, say).

    Raises ``RuntimeError`` naming the parameters the checkpoint lacks
    (transformers would initialise them randomly; this refuses), and what
    ``load_model`` raises.
    """
    import transformers

    path = os.fspath(path)
    if dtype is None:
        dtype = torch_dtype
    attn_implementation = config_overrides.pop("attn_implementation", None)
    config = transformers.AutoConfig.from_pretrained(path, **config_overrides)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    dtype = _resolve_dtype(dtype, config, path)
    cls = _model_class(config)
    with _parameters_on_meta(dtype):
        model = cls(config)
    missing, _ = load_model(model, path, strict=False, device=device, keep_coded=keep_coded)
    still_meta = [name for name in missing if name in dict(model.named_parameters()) and model.get_parameter(name).is_meta]
    if still_meta:
        raise RuntimeError(f"{path}: the checkpoint lacks parameter(s) of {cls.__name__}: " + ", ".join(still_meta))
    # Buffers the checkpoint does not hold were made on the host.
    model.to(torch.device(device))
    model.eval()
    if os.path.exists(os.path.join(path, "generation_config.json")) and model.can_generate():
        model.generation_config = transformers.GenerationConfig.from_pretrained(path)
    return model


# -- transformers' own loaders -------------------------------------------

_PATCHED_SAFE_OPEN = (
    "transformers.modeling_utils",
    "transformers.modeling_layers",
    "transformers.integrations.accelerate",
    "transformers.quantizers.quantizer_torchao",
)
_RESOLVE = "transformers.modeling_utils._get_resolved_checkpoint_files"
_originals: dict = {}


def _dispatching_safe_open(original):
    def safe_open(filename, framework="pt", device="cpu", **options):
        if _is_compressed(os.fspath(filename)):
            return _ecfloat_safe_open(filename, framework=framework, device=device, backend=options.get("backend"))
        return original(filename, framework=framework, device=device, **options)

    safe_open.__wrapped__ = original
    return safe_open


def _compressed_weights_name(directory: str) -> Optional[str]:
    """The compressed file that stands for ``model.safetensors`` in a
    directory ``ecf compress`` wrote (its ``ecfloat.json`` maps each
    original shard to its compressed file), if there is one."""
    manifest = os.path.join(directory, "ecfloat.json")
    if not os.path.isfile(manifest):
        return None
    with open(manifest, encoding="utf-8") as file:
        shards = json.load(file).get("shards", {})
    return shards.get("model.safetensors")


def _finding_compressed_files(original):
    """transformers' search for a directory's weights, which finds a
    sharded compressed checkpoint by its rewritten index but looks for
    ``model.safetensors`` by name: for a compressed directory without it,
    the compressed file is named explicitly."""

    def resolve(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except OSError:
            directory = kwargs.get("pretrained_model_name_or_path", args[0] if args else None)
            subfolder = (kwargs.get("download_kwargs") or {}).get("subfolder", "") or ""
            if directory is None or not os.path.isdir(os.path.join(os.fspath(directory), subfolder)):
                raise
            name = _compressed_weights_name(os.path.join(os.fspath(directory), subfolder))
            if name is None or kwargs.get("transformers_explicit_filename") is not None:
                raise
            return original(*args, **{**kwargs, "transformers_explicit_filename": name})

    resolve.__wrapped__ = original
    return resolve


def install() -> None:
    """Makes transformers' loaders read compressed files: after it,
    ``AutoModel.from_pretrained(compressed_dir)`` (and every other
    ``from_pretrained``) loads a directory ``ecf compress`` wrote, decoded
    as a plain checkpoint loads, each tensor checked against its checksum.
    Plain files load as before. Idempotent; ``uninstall()`` undoes it.

    transformers opens safetensors files through ``safe_open``, which this
    replaces, where transformers imported it, by one that hands compressed
    files to ``ecfloat.safe_open``; and it finds a compressed directory's
    single file, which transformers would look for as
    ``model.safetensors``. A load that reads a file's bytes itself
    (``disable_mmap=True``) still sees the compressed bytes."""
    import importlib

    for module_name in _PATCHED_SAFE_OPEN:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        current = getattr(module, "safe_open", None)
        if current is None or module_name in _originals:
            continue
        _originals[module_name] = current
        module.safe_open = _dispatching_safe_open(current)
    modeling_utils = importlib.import_module("transformers.modeling_utils")
    resolve = getattr(modeling_utils, "_get_resolved_checkpoint_files", None)
    if resolve is not None and _RESOLVE not in _originals:
        _originals[_RESOLVE] = resolve
        modeling_utils._get_resolved_checkpoint_files = _finding_compressed_files(resolve)


def uninstall() -> None:
    """Undoes ``install()``."""
    import importlib

    for name, original in list(_originals.items()):
        if name == _RESOLVE:
            importlib.import_module("transformers.modeling_utils")._get_resolved_checkpoint_files = original
        else:
            importlib.import_module(name).safe_open = original
        del _originals[name]
