import os
from typing import IO, Any, Callable, Dict, Literal, Mapping, Optional, Union

import torch

from ._errors import (
    Error as Error,
    InvalidCheckpoint as InvalidCheckpoint,
    PlacementError as PlacementError,
    ReadError as ReadError,
    UnsafeError as UnsafeError,
    UnsupportedError as UnsupportedError,
    UsageError as UsageError,
    WriteError as WriteError,
)

__version__: str

_Path = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
_Location = Union[str, bytes, torch.device]
MapLocation = Union[
    None,
    _Location,
    Mapping[_Location, _Location],
    Callable[[torch.UntypedStorage, str], Union[None, torch.UntypedStorage, torch.storage.TypedStorage, _Location]],
]

class FallbackWarning(UserWarning): ...

def load(
    f: Union[_Path, IO[bytes]], map_location: MapLocation = None, *, strict: bool = False, mmap: bool = False, weights_only: Optional[bool] = None
) -> Any: ...
def load_state_dict(
    f: Union[_Path, IO[bytes]], map_location: MapLocation = None, *, strict: bool = False, mmap: bool = False, weights_only: Optional[bool] = None
) -> Any: ...
def inspect(f: _Path) -> Dict[str, Any]: ...
def save(obj: Any, f: Union[_Path, IO[bytes]], *, format: Literal["zip", "legacy", "safetensors"] = "zip", sync: bool = True) -> int: ...
def convert(
    src: _Path,
    dst: _Path,
    *,
    format: Optional[Literal["zip", "legacy", "safetensors"]] = None,
    map_location: Union[None, _Location, Mapping[_Location, _Location]] = None,
    compact: bool = False,
    non_tensors: Literal["error", "metadata", "skip"] = "error",
    sync: bool = True,
) -> int: ...
def live_tensors() -> int: ...
