"""Weights kept coded in a ``torch.nn.Module``: each block's weights are
decoded into a reused buffer by a forward pre-hook on the block's module,
and released by its forward hook (``ecfloat.torch.load_model(...,
keep_coded=True)``).

On a GPU two buffers take turns: while one block runs, the next one's
decode is queued on a stream of its own, and a decode into a buffer waits,
on the GPU, for the event recorded when the block that last used it ended.
On the CPU one buffer does, decoded by the CPU decoder without the GIL.
Which block comes next is learnt from the order the hooks run in.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from ._ecfloat import CodedWeights


class KeptTensor:
    """One parameter kept coded: where it lands in its block's buffer."""

    __slots__ = ("name", "parameter", "offset", "nbytes", "stored_dtype", "shape", "placeholder")

    def __init__(self, name: str, parameter: torch.nn.Parameter, offset: int, nbytes: int, stored_dtype: torch.dtype, shape: Tuple[int, ...], placeholder: torch.Tensor) -> None:
        self.name = name
        self.parameter = parameter
        self.offset = offset
        self.nbytes = nbytes
        self.stored_dtype = stored_dtype
        self.shape = shape
        self.placeholder = placeholder


class Block:
    """Tensors decoded together, and the module whose forward uses them."""

    __slots__ = ("index", "name", "module_path", "nbytes", "tensors")

    def __init__(self, index: int, name: str, module_path: str, nbytes: int, tensors: List[KeptTensor]) -> None:
        self.index = index
        self.name = name
        self.module_path = module_path
        self.nbytes = nbytes
        self.tensors = tensors


def placeholder(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """What a kept parameter holds between its block's runs: its shape and
    dtype, one element of storage, NaN where the dtype has one, so that a
    use outside the block's forward shows instead of computing silently
    with stale weights."""
    fill = float("nan") if dtype.is_floating_point else 0
    return torch.full((1,), fill, dtype=dtype, device=device).expand(shape)


class KeptWeights:
    """The coded weights of one module and the hooks that decode them."""

    def __init__(self, weights: CodedWeights, blocks: List[Block], device: torch.device, decode_stream=None) -> None:
        self.weights = weights
        self.blocks = blocks
        self.device = device
        self.decode_stream = decode_stream
        self.largest_block_bytes = max((b.nbytes for b in blocks), default=0)
        # Buffers ("slots"): two on a GPU (one decoding while the other is
        # used), one on the CPU, where the decode runs in the caller's
        # thread; one more whenever every buffer is bound to a block that
        # is still running (a module called inside another's).
        self.buffers: List[torch.Tensor] = []
        self.holds: List[Optional[int]] = []
        self.freed: List[Optional[torch.cuda.Event]] = []
        for _ in range(2 if decode_stream is not None else 1):
            self._add_slot()
        self.in_use: Dict[int, int] = {}
        self.pending: Dict[int, Tuple[int, object]] = {}
        self.next_block = {b.index: (b.index + 1) % len(blocks) for b in blocks}
        self.last_block: Optional[int] = None
        self.handles = []
        # Parameters of a block held in another dtype than the file's are
        # converted copies while bound: their bytes now, and at most.
        self.converted_bytes = 0
        self.peak_converted_bytes = 0

    def _add_slot(self) -> int:
        # Whole 4-byte words: the GPU decoder stores words.
        nbytes = max(4, (self.largest_block_bytes + 3) // 4 * 4)
        buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        if self.decode_stream is not None:
            # Freed with the model, it is not reused while a decode queued
            # on the decode stream may still write it.
            buffer.record_stream(self.decode_stream)
        self.buffers.append(buffer)
        self.holds.append(None)
        self.freed.append(None)
        return len(self.buffers) - 1

    def install(self, model: torch.nn.Module) -> None:
        for block in self.blocks:
            module = model.get_submodule(block.module_path)
            self.handles.append(module.register_forward_pre_hook(self._pre_hook(block.index)))
            self.handles.append(module.register_forward_hook(self._post_hook(block.index), always_call=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _pre_hook(self, index: int):
        def hook(module, args):
            self.acquire(index)

        return hook

    def _post_hook(self, index: int):
        def hook(module, args, output):
            self.release(index)

        return hook

    def _free_slot(self) -> Optional[int]:
        busy = set(self.in_use.values()) | {slot for slot, _ in self.pending.values()}
        return next((slot for slot in range(len(self.buffers)) if slot not in busy), None)

    def _queue(self, index: int, slot: int) -> None:
        """Starts decoding block ``index`` into buffer ``slot``; on a GPU
        the decode waits for the last block that used the buffer."""
        self.holds[slot] = None
        buffer = self.buffers[slot]
        if self.decode_stream is not None and self.freed[slot] is not None:
            self.decode_stream.wait_event(self.freed[slot])
        self.pending[index] = (slot, self.weights.start_decode(index, buffer.data_ptr(), buffer.numel()))

    def acquire(self, index: int) -> None:
        """Binds block ``index``'s parameters to its decoded weights,
        decoding them unless a buffer holds them already."""
        if index in self.in_use:
            return
        if self.last_block is not None and self.last_block != index:
            self.next_block[self.last_block] = index
        self.last_block = index
        slot = next((s for s, held in enumerate(self.holds) if held == index), None)
        if slot is None:
            if index not in self.pending:
                free = self._free_slot()
                self._queue(index, self._add_slot() if free is None else free)
            slot, decode = self.pending.pop(index)
            # A failed decode leaves the buffer holding nothing and every
            # parameter as it was: the next forward tries again.
            decode.wait()
            self.holds[slot] = index
        self._bind(index, self.buffers[slot])
        self.in_use[index] = slot
        if self.decode_stream is not None:
            self._prefetch(self.next_block[index])

    def _prefetch(self, index: int) -> None:
        if index in self.in_use or index in self.pending or index in self.holds:
            return
        slot = self._free_slot()
        if slot is not None:
            self._queue(index, slot)

    def _bind(self, index: int, buffer: torch.Tensor) -> None:
        for tensor in self.blocks[index].tensors:
            view = buffer[tensor.offset : tensor.offset + tensor.nbytes].view(tensor.stored_dtype).view(tensor.shape)
            if tensor.placeholder.dtype != tensor.stored_dtype:
                # The module holds another dtype: converted as a decoded
                # load would have converted it, at each run.
                view = view.to(tensor.placeholder.dtype)
                self.converted_bytes += view.numel() * view.element_size()
            tensor.parameter.data = view
        self.peak_converted_bytes = max(self.peak_converted_bytes, self.converted_bytes)

    def release(self, index: int) -> None:
        """Unbinds block ``index`` once its module's forward has ended."""
        slot = self.in_use.pop(index, None)
        if slot is None:
            return
        for tensor in self.blocks[index].tensors:
            if tensor.placeholder.dtype != tensor.stored_dtype:
                self.converted_bytes -= tensor.parameter.numel() * tensor.parameter.element_size()
            tensor.parameter.data = tensor.placeholder
        if self.decode_stream is not None:
            # The next decode into this buffer waits, on the GPU, for the
            # work queued on it so far.
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.freed[slot] = event

    def decode_buffer_bytes(self) -> int:
        return sum(b.numel() for b in self.buffers)

    def buffer_storages(self) -> set:
        return {b.untyped_storage().data_ptr() for b in self.buffers}
