"""Type stubs of the extension module the ``ecfloat`` package builds on."""

from typing import Dict, List, Optional, Tuple

class DeviceError(RuntimeError):
    """A decode device (a GPU backend) is unavailable or failed."""

class Checkpoint:
    """A safetensors checkpoint, compressed or not: a file, or a directory
    of shards. Raises ``ValueError`` (invalid) or ``OSError`` (unreadable)."""

    def __init__(self, path: str) -> None: ...
    def keys(self) -> List[str]:
        """Tensor names, sorted, as safetensors lists them."""
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

def compress(source: str, output: Optional[str] = None, force: bool = False) -> str: ...
def decompress(source: str, output: Optional[str] = None, force: bool = False) -> str: ...
def verify(path: str, backend: str = "cpu") -> str: ...
