"""Type stubs of the extension module the ``ecfloat`` package builds on."""

from typing import Dict, List, Optional, Tuple

__version__: str

class DeviceError(RuntimeError):
    """A decode device (a GPU backend) is unavailable or failed."""

class Checkpoint:
    """A safetensors checkpoint, compressed or not: a file, or a directory
    of shards. Raises ``ValueError`` (invalid) or ``OSError`` (unreadable)."""

    def __init__(self, path: str) -> None: ...
    def keys(self) -> List[str]:
        """Tensor names, sorted, as safetensors lists them."""
    def keys_in_data_order(self) -> List[str]:
        """Tensor names in the order of their data in the original files."""
    def metadata(self) -> Optional[Dict[str, str]]:
        """The first file's ``__metadata__``, as the original file had it."""
    def info(self, name: str) -> Tuple[str, List[int], int]:
        """(dtype as safetensors names it, shape, bytes) of tensor ``name``."""
    def read_into(self, name: str, address: int, length: int) -> None:
        """Writes tensor ``name``'s bytes to ``length`` bytes of host memory
        at ``address``, which the caller allocated and keeps alive."""
    def read_into_cuda(self, name: str, device: int, stream: int, address: int, length: int) -> None:
        """Decodes tensor ``name`` on GPU ``device``, on ``stream`` (a
        ``CUstream`` address), into ``length`` bytes of device memory at
        ``address``: the tensor's bytes rounded up to whole words."""

    def keep_coded(self, groups: List[Tuple[str, List[str]]], cuda: Optional[Tuple[int, int]] = None) -> "CodedWeights":
        """The tensors of ``groups`` (block name, tensor names) kept coded
        in host memory, or with ``cuda=(device, stream)`` on that GPU,
        decoding on that ``CUstream``; each checked once here."""

class CodedWeights:
    """A checkpoint's coded tensors kept on a device, grouped by block."""

    def layout(self) -> List[Tuple[str, int, List[Tuple[str, int, int]]]]:
        """Each block as (name, bytes, [(tensor, offset, bytes)])."""
    def coded_bytes(self) -> int: ...
    def decoded_bytes(self) -> int: ...
    def start_decode(self, group: int, address: int, length: int) -> "BlockDecode":
        """Starts decoding block ``group`` into ``length`` bytes at
        ``address`` on the weights' device (queued on a GPU, done now on
        the host)."""

class BlockDecode:
    def wait(self) -> None:
        """Waits and checks; a corrupt block raises naming the file, the
        tensor and the block."""

def layer_block(name: str) -> Optional[str]:
    """The Rust runtime's layer block of a tensor name, if it has one."""

def is_compressed(path: str) -> bool:
    """Whether ``path`` is a file ``ecf compress`` wrote."""

def inspect(path: str) -> str: ...
def save_file(path: str, tensors: List[Tuple[str, str, List[int], int, int]], metadata: Optional[Dict[str, str]] = None) -> None: ...
def use_threads(threads: int) -> None: ...
def compress(source: str, output: Optional[str] = None, force: bool = False) -> str: ...
def decompress(source: str, output: Optional[str] = None, force: bool = False) -> str: ...
def verify(path: str, backend: str = "cpu") -> str: ...
