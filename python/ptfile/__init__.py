"""ptfile: a safe and fast ``torch.load`` for weights, built on the ptfile Rust library.

``ptfile.load(f)`` returns what ``torch.load(f, weights_only=True)`` returns (dicts,
OrderedDicts with their ``_metadata``, lists, tuples, scalars, ``torch.Size``, dtypes, devices,
tensors and parameters, quantized, sparse and meta tensors, numpy values), with every tensor a
view of one torch storage per checkpoint storage, as torch.load builds them. Nothing in the file
is imported or run: a file that names a class torch's safe loader would refuse raises
:class:`UnsafeError`; a damaged one raises :class:`InvalidCheckpoint`.

Storage bytes are read by Rust with the GIL released, straight into the buffers torch then uses
(DLPack, no copy); ``mmap=True`` maps the file copy-on-write as ``torch.load(mmap=True)`` does.
"""

import os
import tempfile
import warnings

import torch

from . import _build, _native
from ._errors import (
    Error,
    InvalidCheckpoint,
    PlacementError,
    ReadError,
    UnsafeError,
    UnsupportedError,
    UsageError,
    WriteError,
)

__version__ = _native.__version__

__all__ = [
    "load",
    "load_state_dict",
    "inspect",
    "save",
    "convert",
    "live_tensors",
    "Error",
    "UnsafeError",
    "InvalidCheckpoint",
    "UnsupportedError",
    "PlacementError",
    "ReadError",
    "WriteError",
    "UsageError",
    "FallbackWarning",
]

for _cls in (Error, UnsafeError, InvalidCheckpoint, UnsupportedError, PlacementError, ReadError, WriteError, UsageError):
    _cls.__module__ = "ptfile"


class FallbackWarning(UserWarning):
    """Storages whose device is missing were loaded onto the CPU instead (``strict=True``
    raises :class:`PlacementError` instead)."""


def live_tensors():
    """DLPack tensors ptfile exported that are still alive (their memory is still held); 0
    once every tensor ptfile.load returned has been freed."""
    return _native.live_tensors()


# --- arguments -----------------------------------------------------------------------------


def _path(f, what="load"):
    if isinstance(f, (str, bytes, os.PathLike)):
        return os.fsdecode(os.fspath(f))
    raise TypeError(f"ptfile.{what} takes a path (str, bytes or os.PathLike) or a file object, not {type(f).__name__}")


class _Spooled:
    """A file object's bytes in a temporary file (ptfile reads paths)."""

    def __init__(self, f):
        data = f.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"ptfile.load: {type(f).__name__}.read() gave {type(data).__name__}, not bytes (open the file in binary mode)")
        fd, self.path = tempfile.mkstemp(prefix="ptfile-", suffix=".pt")
        with os.fdopen(fd, "wb") as out:
            out.write(data)

    def close(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _location(loc, what):
    """A location as a string torch knows (torch.device parses it: `cuda:x` is an error)."""
    if isinstance(loc, torch.device):
        return str(loc)
    if isinstance(loc, bytes):
        loc = loc.decode("ascii", "replace")
    if not isinstance(loc, str):
        raise TypeError(f"{what}: a location is a str or torch.device, not {type(loc).__name__}")
    try:
        torch.device(loc)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"{what}: {loc!r} is not a device: {e}") from None
    return loc


def _map_spec(map_location):
    """(what the native loader is told, the callable to apply afterwards or None)."""
    if map_location is None:
        return None, None
    if isinstance(map_location, (str, bytes, torch.device)):
        return _location(map_location, "map_location"), None
    if isinstance(map_location, dict):
        return [(_location(k, "map_location key"), _location(v, "map_location value")) for k, v in map_location.items()], None
    if callable(map_location):
        return "cpu", map_location
    raise TypeError(f"map_location must be None, a str, a torch.device, a dict or a callable, not {type(map_location).__name__}")


# --- devices -------------------------------------------------------------------------------

_placeable = {}


def _torch_places(loc):
    """Whether torch itself can hold storages at `loc` (what ptfile could not place goes
    there through torch before it falls back to the CPU)."""
    r = _placeable.get(loc)
    if r is None:
        try:
            d = torch.device(loc)
            if d.type == "cuda":
                r = torch.cuda.is_available() and (d.index or 0) < torch.cuda.device_count()
            else:
                torch.empty(0, device=d)
                r = True
        except Exception:  # noqa: BLE001 - any failure means "not here"
            r = False
        _placeable[loc] = r
    return r


def _move(storage, loc):
    d = torch.device(loc)
    if d.type == "meta":
        return torch.UntypedStorage(storage.nbytes(), device="meta")
    t = torch.empty((0,), dtype=torch.uint8, device=storage.device).set_(storage)
    return t.to(d).untyped_storage()


def _from_capsule(cap):
    return torch.from_dlpack(cap).untyped_storage()


def _placement_error(path, key, saved, loc, reason):
    return PlacementError(
        f"cannot deserialize storage {key!r} (saved on {saved}) on {loc}: {reason}. Use map_location "
        f"(e.g. map_location='cpu' or map_location={{{saved!r}: 'cpu'}}) to map storages to an existing "
        f"device, or strict=False to fall back to the CPU (in {path})"
    )


def _reason(reason, loc):
    """ptfile's reason for a fallback, in the package's terms."""
    reason = reason.replace("build with --features cuda", "install ptfile with MATURIN_PEP517_ARGS='--features cuda'")
    if loc.startswith("cuda") and not torch.cuda.is_available():
        reason += "; torch.cuda.is_available() is False"
    return reason


def _warn_fallbacks(path, fallbacks):
    groups = {}
    for key, saved, loc, reason in fallbacks:
        groups.setdefault((loc, reason), []).append(key)
    parts = [f"{len(keys)} storages mapped to {loc}: {reason}" for (loc, reason), keys in groups.items()]
    warnings.warn(
        f"ptfile.load({path!r}): {len(fallbacks)} storages fell back to the CPU: " + "; ".join(parts) + " (strict=True raises instead)",
        FallbackWarning,
        stacklevel=3,
    )


# --- load ----------------------------------------------------------------------------------


def _storages(h, path, mmap, strict, fn):
    rows = h.storages()
    out = []
    fallbacks = []
    whole = None
    for i, (key, _dtype, _typed, saved, loc, device, nbytes, reason, offset) in enumerate(rows):
        if mmap and offset is not None and device == "cpu":
            if whole is None:
                whole = torch.UntypedStorage.from_file(path, shared=False, nbytes=os.path.getsize(path))
            s = whole[offset : offset + nbytes]
        elif device == "cpu" or _torch_places(device):
            s = _from_capsule(h.capsule(i))
        else:
            # ptfile reached a device torch cannot use (a GPU, and a CPU-only torch): the CPU.
            buf = h.read_to_host(i)
            s = torch.frombuffer(buf, dtype=torch.uint8).untyped_storage() if nbytes else torch.UntypedStorage(0)
            if reason is None and fn is None:
                reason = f"torch cannot use {device} here"
                loc = device
        if fn is not None:
            r = fn(s, saved)
            if r is None:
                target = saved
            elif isinstance(r, (str, bytes, torch.device)):
                target = _location(r, "map_location's result")
            elif isinstance(r, torch.storage.TypedStorage):
                s, target = r._untyped_storage, None
            elif isinstance(r, torch.UntypedStorage):
                s, target = r, None
            else:
                raise TypeError(f"map_location returned {type(r).__name__}; expected a storage, a location or None")
            if target is not None and torch.device(target).type != "cpu":
                if _torch_places(target):
                    s = _move(s, target)
                else:
                    reason = f"torch has no device {target} here"
                    if strict:
                        raise _placement_error(path, key, saved, target, reason)
                    fallbacks.append((key, saved, target, reason))
        elif reason is not None:
            # ptfile could not place it; torch may (a device ptfile has no backend for).
            if _torch_places(loc):
                s = _move(s, loc)
            elif strict:
                raise _placement_error(path, key, saved, loc, _reason(reason, loc))
            else:
                fallbacks.append((key, saved, loc, _reason(reason, loc)))
        out.append(s)
    if fallbacks:
        _warn_fallbacks(path, fallbacks)
    return out


def _load(f, map_location, strict, mmap, script_state_dict, what):
    spooled = None
    if hasattr(f, "read") and not isinstance(f, (str, bytes, os.PathLike)):
        spooled = _Spooled(f)
        path, mmap = spooled.path, False
    else:
        path = _path(f, what)
    try:
        spec, fn = _map_spec(map_location)
        h = _native.load(path, spec, False, bool(mmap))
        storages = _storages(h, path, bool(mmap), bool(strict), fn)
        obj, sparse = h.build(storages, _build, script_state_dict)
        del h
        if sparse:
            _build.validate_sparse()
        return obj
    finally:
        if spooled is not None:
            spooled.close()


def _weights_only(weights_only):
    if weights_only is not None and not weights_only:
        raise UsageError(
            "ptfile.load never runs anything from a file: weights_only=False is not available "
            "(torch.load(f, weights_only=False) does that, for files you trust)"
        )


def load(f, map_location=None, *, strict=False, mmap=False, weights_only=None):
    """Loads a checkpoint as ``torch.load(f, map_location, weights_only=True)`` does.

    ``f``: a path (str, bytes, os.PathLike) or a binary file object.
    ``map_location``: as torch's: None (as saved), a location (``"cpu"``, ``"cuda:0"``,
    ``torch.device``), a dict old -> new, or a callable ``(storage, location)`` returning a
    storage, a location, or None (as saved). A storage whose device is missing falls back to the
    CPU with one :class:`FallbackWarning` listing what fell back and why.
    ``strict``: raise :class:`PlacementError` instead of falling back (torch's behaviour).
    ``mmap``: CPU storages share the file's pages copy-on-write, as ``torch.load(mmap=True)``
    (zip files; other formats are read into memory).

    Also reads what torch's safe loader refuses but is only data: pickle protocols 4 and 5,
    legacy (< 1.6) and torch 0.1 tar files, big-endian files, ``.safetensors`` files.
    Raises :class:`UnsafeError` for classes torch's weights_only loader refuses,
    :class:`InvalidCheckpoint` for damaged files, :class:`UnsupportedError` for TorchScript
    archives (see :func:`load_state_dict`). ``weights_only`` is accepted for torch.load's
    signature: None or True (what ptfile always does); False is a :class:`UsageError`.
    """
    _weights_only(weights_only)
    return _load(f, map_location, strict, mmap, False, "load")


def load_state_dict(f, map_location=None, *, strict=False, mmap=False, weights_only=None):
    """:func:`load`, except that a TorchScript archive gives its state dict (the OrderedDict
    ``torch.jit.load(f).state_dict()`` returns) instead of an error; its code is never run."""
    _weights_only(weights_only)
    return _load(f, map_location, strict, mmap, True, "load_state_dict")


# --- inspect, save, convert ----------------------------------------------------------------


def inspect(f):
    """The description of a checkpoint (``ptfile inspect --json``): its object tree, tensors
    (dtype, shape, stride, storage, sha256), storages and format, as a dict."""
    import json

    return json.loads(_native.inspect(_path(f, "inspect")))


def save(obj, f, *, format="zip", sync=True):
    """Writes ``obj`` (a state dict, or nested dicts / OrderedDicts / lists / tuples / sets of
    tensors and plain values) as ``torch.save`` does, so that ``torch.load`` (weights_only=True,
    mmap=True) reads it back identically. Tensors that share a storage share it in the file.

    ``format``: ``"zip"`` (torch >= 1.6), ``"legacy"`` (``_use_new_zipfile_serialization=False``)
    or ``"safetensors"`` (a flat dict of tensors). ``f``: a path or a binary file object. The
    write is atomic (temporary file, fsync unless ``sync=False``, rename). Returns the bytes
    written.
    """
    ctx = _build.SaveContext()
    if hasattr(f, "write") and not isinstance(f, (str, bytes, os.PathLike)):
        fd, tmp = tempfile.mkstemp(prefix="ptfile-", suffix=".safetensors" if format == "safetensors" else ".pt")
        os.close(fd)
        try:
            n = _native.save(obj, tmp, ctx, format, False)
            with open(tmp, "rb") as src:
                f.write(src.read())
            return n
        finally:
            os.unlink(tmp)
    return _native.save(obj, _path(f, "save"), ctx, format, bool(sync))


def convert(src, dst, *, format=None, map_location=None, compact=False, non_tensors="error", sync=True):
    """``ptfile convert SRC DST``: rewrites a checkpoint (any format ptfile reads) as ``zip``,
    ``legacy`` or ``safetensors`` (None: from dst's extension). ``map_location`` (a location or
    a dict old -> new) retags storages; ``compact`` cuts each storage to the bytes its views use;
    ``non_tensors`` ("error", "metadata", "skip") says what a safetensors export does with values
    that are not tensors. Returns the bytes written."""
    spec, fn = _map_spec(map_location)
    if fn is not None:
        raise TypeError("ptfile.convert: map_location must be a location or a dict, not a callable")
    return _native.convert(_path(src, "convert"), _path(dst, "convert"), format, spec, bool(compact), non_tensors, bool(sync))
