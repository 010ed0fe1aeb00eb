"""The torch side of ptfile.load and ptfile.save: what the native module calls to build torch
values (torch's own constructors, as torch.load's rebuild functions use them) and to describe
tensors it saves. Nothing here imports or calls anything a file names: classes are matched by
name against the few this module builds from their data."""

import collections

import torch

from ._errors import InvalidCheckpoint, UnsafeError, UnsupportedError, UsageError

_OrderedDict = collections.OrderedDict
_empty = torch.empty
_Parameter = torch.nn.Parameter


# --- load ----------------------------------------------------------------------------------


_protos = {}


def tensor(storage, dtype, offset, size, stride, requires_grad, metadata):
    """_rebuild_tensor_v2: a view of `storage` (a torch.UntypedStorage)."""
    device = storage.device
    proto = _protos.get((dtype, device))
    if proto is None:
        proto = _protos[(dtype, device)] = _empty((0,), dtype=dtype, device=device)
    t = proto.new_empty((0,))
    t.set_(storage, offset, size, stride)
    if requires_grad:
        t.requires_grad = True
    if metadata:
        if not isinstance(metadata, dict):
            raise InvalidCheckpoint(f"a tensor's metadata is a {type(metadata).__name__}, not a dict; the file is damaged or was not written by torch.save")
        try:
            torch._utils.set_tensor_metadata(t, metadata)
        except (RuntimeError, TypeError, ValueError, AssertionError) as e:
            raise InvalidCheckpoint(f"torch refuses a tensor's metadata {metadata!r}: {e}") from None
    # As _rebuild_tensor_v2 (for backward compatibility, torch's note says).
    t._backward_hooks = _OrderedDict()
    return t


def big_int(s):
    """An int from its decimal digits, however many (Python's int(str) stops at 4300)."""
    neg = s.startswith("-")
    digits = s[1:] if neg or s.startswith("+") else s
    if not digits.isdigit() or not digits.isascii():
        raise InvalidCheckpoint(f"{s[:40]!r} is not an integer")
    v = 0
    for i in range(0, len(digits), 4000):
        chunk = digits[i : i + 4000]
        v = v * 10 ** len(chunk) + int(chunk)
    return -v if neg else v


def parameter(t, requires_grad):
    """_rebuild_parameter."""
    p = _Parameter(t, requires_grad)
    p._backward_hooks = _OrderedDict()
    return p


def meta_tensor(dtype, size, stride, requires_grad, device):
    """_rebuild_meta_tensor_no_storage (and a tensor of another device without data)."""
    return torch.empty_strided(size, stride, dtype=dtype, device=device, requires_grad=requires_grad)


def typed_storage(storage, dtype):
    """A bare storage (`torch.save(storage)`), as torch.load gives it: a TypedStorage."""
    return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


_NAMED_TYPES = (torch.layout, torch.memory_format, torch.qscheme)


def named(name):
    """A torch constant that is data (`torch.sparse_coo`, `torch.per_tensor_affine`)."""
    short = name[6:] if name.startswith("torch.") else name
    value = getattr(torch, short, None) if short.isidentifier() else None
    if not isinstance(value, _NAMED_TYPES):
        raise UnsupportedError(f"unsupported: the torch constant {name} (this torch has no such layout, memory format or qscheme)")
    return value


def device(s):
    try:
        return torch.device(s)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InvalidCheckpoint(f"{s!r} is not a device torch knows ({e}); the file is damaged or was not written by torch.save") from None


def ordered_dict(pairs, metadata):
    d = _OrderedDict(pairs)
    if metadata is not None:
        d._metadata = metadata
    return d


def qtensor(storage, dtype, offset, size, stride, qscheme, scale, zero_point, scales, zero_points, axis, requires_grad):
    """_rebuild_qtensor, torch's own, over a typed view of the storage."""
    qs = named(qscheme)
    if qs in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        params = (qs, scale, zero_point)
    else:
        params = (qs, scales, zero_points, axis)
    typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)
    try:
        return torch._utils._rebuild_qtensor(typed, offset, size, stride, params, requires_grad, _OrderedDict())
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise InvalidCheckpoint(f"torch cannot rebuild a quantized tensor ({qscheme}) from this file: {e}") from None


def _coalesced(indices, size):
    """Whether COO indices are sorted without duplicates: what `is_coalesced()` said when the
    tensor was saved (ptfile's model does not keep the saved flag)."""
    if indices.dim() != 2 or indices.shape[1] < 2:
        return True
    if indices.device.type == "meta" or indices.shape[0] > len(size):
        return False
    try:
        idx = indices.to(torch.int64)
        # Row-major linear index over the sparse dims, compared pairwise.
        lin = torch.zeros(idx.shape[1], dtype=torch.int64, device=idx.device)
        for d in range(idx.shape[0]):
            lin = lin * int(size[d]) + idx[d]
        return bool((lin[1:] > lin[:-1]).all())
    except RuntimeError:
        return False


def sparse(layout, size, parts):
    """_rebuild_sparse_tensor, torch's own (torch validates them after the load)."""
    lay = named(layout)
    size = torch.Size(size)
    try:
        if lay == torch.sparse_coo:
            indices, values = parts[0], parts[1]
            data = (indices, values, size, _coalesced(indices, size))
        else:
            data = (parts[0], parts[1], parts[2], size)
        return torch._utils._rebuild_sparse_tensor(lay, data)
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError) as e:
        raise InvalidCheckpoint(f"torch cannot rebuild a sparse tensor ({layout}) from this file: {e}") from None


def validate_sparse():
    """What torch.load does once every sparse tensor is built."""
    try:
        torch._utils._validate_loaded_sparse_tensors()
    except (RuntimeError, ValueError, IndexError) as e:
        raise InvalidCheckpoint(f"a sparse tensor of this file is invalid: {e}") from None


def _numpy():
    try:
        import numpy
    except ImportError:
        raise UnsupportedError("unsupported: the file holds numpy values and numpy is not installed (pip install numpy)") from None
    return numpy


def _np_dtype(np, d, where):
    if isinstance(d, np.dtype):
        return d
    raise InvalidCheckpoint(f"a numpy value at {where} has no valid dtype")


def opaque(cls, args, state, items, where):
    """The data classes ptfile keeps opaque that torch users get as values: numpy arrays,
    scalars and dtypes, collections.Counter. Rebuilt from their bytes, never by calling numpy's
    pickle functions."""
    if cls == "collections.Counter":
        c = collections.Counter()
        for a in args:
            if isinstance(a, dict):
                c.update(a)
        for k, v in items:
            c[k] = v
        return c
    np = _numpy()
    if cls.startswith("numpy.dtypes."):
        if not args or not isinstance(args[0], str):
            raise InvalidCheckpoint(f"a numpy dtype at {where} has no type code")
        code = args[0]
        if isinstance(state, tuple) and len(state) > 3 and state[3] is not None:
            raise UnsupportedError(f"unsupported: a structured numpy dtype at {where}")
        if code[:1] in ("M", "m", "O"):
            raise UnsupportedError(f"unsupported: a numpy {code} dtype at {where}")
        try:
            d = np.dtype(code)
            if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">") and d.byteorder != "|":
                d = d.newbyteorder(state[1])
            if d.kind in "USV" and d.itemsize == 0 and isinstance(state, tuple) and len(state) > 5:
                d = np.dtype((d.type, int(state[5]) // (4 if d.kind == "U" else 1)))
        except (TypeError, ValueError) as e:
            raise InvalidCheckpoint(f"the numpy dtype {code!r} at {where}: {e}") from None
        return d
    if cls == "numpy.ndarray":
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise InvalidCheckpoint(f"a numpy array at {where} has no valid state")
        shape, dt, fortran, raw = state[-4:]
        dt = _np_dtype(np, dt, where)
        if dt.hasobject or not isinstance(raw, (bytes, bytearray)):
            raise UnsupportedError(f"unsupported: a numpy array of Python objects at {where} (torch.load(weights_only=True) refuses it too)")
        try:
            shape = tuple(int(s) for s in shape)
            count = 1
            for s in shape:
                count *= s
            if count < 0 or count * dt.itemsize != len(raw):
                raise ValueError(f"shape {shape} of {dt} needs {count * dt.itemsize} bytes, the file has {len(raw)}")
            order = "F" if fortran else "C"
            # numpy's own unpickling gives a writable array in the host's byte order.
            native = dt if dt.isnative or dt.byteorder == "|" else dt.newbyteorder("=")
            out = np.empty(shape, dtype=native, order=order)
            if count:
                out.reshape(-1, order=order)[...] = np.frombuffer(raw, dtype=dt, count=count)
            elif out.ndim > 1:
                # Unpickled empty arrays keep the strides of their nonzero dims (numpy fills
                # them counting a 0 dim as 1), where np.empty gives zeros.
                strides, step = [0] * out.ndim, native.itemsize
                for d in range(out.ndim) if fortran else reversed(range(out.ndim)):
                    strides[d] = step
                    step *= shape[d] or 1
                out = np.lib.stride_tricks.as_strided(out, shape, tuple(strides), writeable=True)
        except (TypeError, ValueError) as e:
            raise InvalidCheckpoint(f"a numpy array at {where}: {e}") from None
        return out
    # numpy scalars: (dtype, raw bytes)
    if len(args) == 2 and isinstance(args[1], bytes):
        dt = _np_dtype(np, args[0], where)
        if dt.hasobject or len(args[1]) != dt.itemsize:
            raise InvalidCheckpoint(f"a numpy scalar at {where} has {len(args[1])} bytes for {dt}")
        return np.frombuffer(args[1], dtype=dt, count=1)[0]
    raise UnsafeError(f"{cls} at {where} is not a value ptfile rebuilds; nothing was imported or run")


# --- save ----------------------------------------------------------------------------------


class SaveContext:
    """Describes tensors for the native writer and holds one CPU buffer per distinct storage
    (torch storages are told apart as torch.save does: by their StorageImpl)."""

    def __init__(self):
        self._index = {}
        self._rows = []
        self._keep = []

    def _storage(self, us, dtype, where):
        key = (us.device, us._cdata)
        i = self._index.get(key)
        name = str(dtype)[len("torch."):]
        if i is None:
            dev = us.device
            if dev.type == "meta":
                raise UsageError(f"cannot save a meta tensor's data (at {where}): it has none")
            cpu = us if dev.type == "cpu" else us.cpu()
            i = len(self._rows)
            self._index[key] = i
            self._rows.append((cpu.data_ptr(), cpu.nbytes(), name, str(dev)))
            self._keep.append(cpu)
        elif self._rows[i][2] != name:
            raise UsageError(
                f"cannot save multiple tensors or storages that view the same data as different types ({self._rows[i][2]} and {name}, at {where}); torch.save refuses this too"
            )
        return i

    def tensor(self, t, where):
        if t.layout != torch.strided:
            raise UsageError(f"cannot save a {t.layout} tensor (at {where}): ptfile.save writes dense tensors; use torch.save")
        if t.is_quantized:
            raise UsageError(f"cannot save a quantized tensor (at {where}): use torch.save")
        if t.is_conj() or t.is_neg():
            t = t.resolve_conj().resolve_neg()
        if type(t) not in (torch.Tensor, _Parameter) and not isinstance(t, _Parameter):
            t = t.as_subclass(torch.Tensor)
        us = t.untyped_storage()
        i = self._storage(us, t.dtype, where)
        return (
            i,
            str(t.dtype)[len("torch."):],
            tuple(t.shape),
            tuple(t.stride()),
            t.storage_offset(),
            bool(t.requires_grad),
            isinstance(t, _Parameter),
        )

    def storage(self, s):
        if isinstance(s, torch.storage.TypedStorage):
            return self._storage(s._untyped_storage, s.dtype, "a storage")
        return self._storage(s, torch.uint8, "a storage")

    def spans(self):
        return self._rows
