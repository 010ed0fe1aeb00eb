#!/usr/bin/env python3
"""Write the crafted checkpoints of tests/formats.rs, by the format spec, without torch.

usage:
    make_formats_data.py                 # write the files below into this folder
    make_formats_data.py --describe PY   # also write NAME.json beside each file torch can load,
                                         # describing what `torch.load` / `torch.jit.load` of
                                         # the PY interpreter (one with torch) returns for it

Files (PYTORCH_FORMAT.md sections in brackets):
  tar_v01.pt              torch 0.1 tar format [3.2]: members storages, tensors, pickle, sys_info
                          (written with Python's tarfile in PAX format, one member with a PAX
                          header); a storage view, a strided tensor, a cuda:0 storage.
  legacy_view_metadata.pt legacy stream [3.1] whose storage ids carry view_metadata
                          (view_key, offset, size): a tensor over a slice of a root storage.
  legacy_big_endian_host.pt legacy stream whose sys_info says little_endian=False (storage
                          bytes are little endian all the same, as torch writes and reads them).
  legacy_untyped.pt       legacy stream with a torch.storage.UntypedStorage persistent id
                          (numel counts bytes) and _rebuild_tensor_v3 with a dtype.
  full_div_v3.ptc         tests/fixtures/seed_full_div_scripted.ptc with its `version` record
                          rewritten from 5 to 3 (operators whose meaning changed since).

Nothing here imports torch: torch's globals are pickled through stand-in modules named
`torch`, `torch._utils` and `torch.storage` that exist only in this process.
"""
import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import types
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# ------------------------------------------------------------------------------------------------
# Stand-ins for torch's globals: pickle writes them as `GLOBAL module name`.
# ------------------------------------------------------------------------------------------------


def _module(name):
    m = types.ModuleType(name)
    sys.modules[name] = m
    return m


def _global(module, name, obj):
    obj.__module__ = module.__name__
    obj.__qualname__ = name
    obj.__name__ = name
    setattr(module, name, obj)
    return obj


_torch = _module("torch")
_utils = _module("torch._utils")
_storage = _module("torch.storage")
_torch._utils = _utils
_torch.storage = _storage

ELEM = {"FloatStorage": ("<f", 4), "LongStorage": ("<q", 8), "DoubleStorage": ("<d", 8)}
STORAGE_CLASSES = {n: _global(_torch, n, type(n, (), {})) for n in ELEM}
FloatTensor = _global(_torch, "FloatTensor", type("FloatTensor", (), {}))
LongTensor = _global(_torch, "LongTensor", type("LongTensor", (), {}))
UntypedStorage = _global(_storage, "UntypedStorage", type("UntypedStorage", (), {}))
float32 = _global(_torch, "float32", type("float32", (), {}))


def _fn(module, name):
    def f(*args):  # never called: only its name is pickled
        raise RuntimeError("stand-in")

    return _global(module, name, f)


rebuild_v2 = _fn(_utils, "_rebuild_tensor_v2")
rebuild_v3 = _fn(_utils, "_rebuild_tensor_v3")


class Pid:
    """An object the pickler replaces with a persistent id."""

    def __init__(self, pid):
        self.pid = pid


class Tensor:
    """Pickles as torch's _rebuild_tensor_v2 (or v3 with a dtype) reduction."""

    def __init__(self, storage_pid, offset, size, stride, dtype=None):
        self.args = (storage_pid, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
        self.dtype = dtype

    def __reduce__(self):
        if self.dtype is None:
            return (rebuild_v2, self.args)
        return (rebuild_v3, self.args + (self.dtype,))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Pid) else None


def dumps(obj):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Legacy stream [3.1]
# ------------------------------------------------------------------------------------------------

MAGIC = 0x1950A86A20F9469CFC6C


def legacy_stream(obj, storages, little_endian=True):
    """storages: {root_key: (storage class name or 'untyped', [values] or bytes)}."""
    out = io.BytesIO()
    out.write(dumps(MAGIC))
    out.write(dumps(1001))
    out.write(dumps({"protocol_version": 1001, "little_endian": little_endian,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    out.write(dumps(obj))
    keys = sorted(storages)
    out.write(dumps(keys))
    for k in keys:
        cls, values = storages[k]
        if cls == "untyped":
            out.write(struct.pack("<q", len(values)))
            out.write(values)
        else:
            fmt, _ = ELEM[cls]
            out.write(struct.pack("<q", len(values)))
            for v in values:
                out.write(struct.pack(fmt, v))
    return out.getvalue()


def storage_pid(cls, key, numel, location="cpu", view=None):
    c = UntypedStorage if cls == "untyped" else STORAGE_CLASSES[cls]
    return Pid(("storage", c, key, location, numel, view))


def make_legacy_view_metadata():
    root = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    whole = Tensor(storage_pid("FloatStorage", "140001", 6), 0, [6], [1])
    # view_metadata (view_key, offset, view_size): elements 2..5 of the root.
    part = Tensor(storage_pid("FloatStorage", "140001", 6, view=("140777", 2, 3)), 1, [2], [1])
    obj = {"whole": whole, "part": part}
    return legacy_stream(obj, {"140001": ("FloatStorage", root)})


def make_legacy_big_endian_host():
    vals = [1, -2, 3, 1 << 40]
    t = Tensor(storage_pid("LongStorage", "150001", 4), 0, [2, 2], [2, 1])
    return legacy_stream({"t": t, "note": "sys_info says big endian"},
                         {"150001": ("LongStorage", vals)}, little_endian=False)


def make_legacy_untyped():
    raw = struct.pack("<4f", 0.5, -1.5, 2.5, 1e-3)
    t = Tensor(storage_pid("untyped", "160001", len(raw)), 0, [4], [1], dtype=float32)
    return legacy_stream([t], {"160001": ("untyped", raw)})


# ------------------------------------------------------------------------------------------------
# torch 0.1 tar format [3.2]
# ------------------------------------------------------------------------------------------------


def make_tar():
    # storages: pickle(n); n x {pickle((key, location, storage_type)), u64 count, bytes};
    # pickle([(view_key, root_key, offset, numel), ...])
    floats = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    longs = [7, 8, 9]
    s = io.BytesIO()
    s.write(dumps(2))
    s.write(dumps((1001, "cpu", STORAGE_CLASSES["FloatStorage"])))
    s.write(struct.pack("<q", len(floats)) + struct.pack("<6f", *floats))
    s.write(dumps((1002, "cuda:0", STORAGE_CLASSES["LongStorage"])))
    s.write(struct.pack("<q", len(longs)) + struct.pack("<3q", *longs))
    s.write(dumps([(1003, 1001, 2, 3)]))  # storage 1003 = elements 2..5 of 1001

    # tensors: pickle(n); n x {pickle((key, storage_key, tensor_type)), i32 ndim, 4 bytes,
    # ndim x i64 size, ndim x i64 stride, i64 storage_offset}
    def meta(size, stride, offset):
        n = len(size)
        return (struct.pack("<i", n) + b"\0\0\0\0" + struct.pack(f"<{n}q", *size)
                + struct.pack(f"<{n}q", *stride) + struct.pack("<q", offset))

    t = io.BytesIO()
    t.write(dumps(4))
    t.write(dumps((2001, 1001, FloatTensor)) + meta([2, 3], [3, 1], 0))
    t.write(dumps((2002, 1002, LongTensor)) + meta([3], [1], 0))
    t.write(dumps((2003, 1001, FloatTensor)) + meta([2], [2], 1))  # strided view of 1001
    t.write(dumps((2004, 1003, FloatTensor)) + meta([3], [1], 0))  # over the storage view

    # pickle: the object; persistent ids are the keys as str
    obj = {"weight": Pid("2001"), "steps": Pid("2002"), "strided": Pid("2003"),
           "from_view": Pid("2004"), "epoch": 7, "name": "torch 0.1"}
    p = dumps(obj)
    info = dumps({"protocol_version": 1001, "little_endian": True,
                  "type_sizes": {"short": 2, "int": 4, "long": 8}})

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data, pax in (("storages", s.getvalue(), None), ("tensors", t.getvalue(), None),
                                ("sys_info", info, None),
                                ("pickle", p, {"comment": "ptfile test: a PAX header"})):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 0
            if pax:
                ti.pax_headers = pax
            tar.addfile(ti, io.BytesIO(data))
    return out.getvalue()


# ------------------------------------------------------------------------------------------------
# TorchScript archive with an older version record
# ------------------------------------------------------------------------------------------------


def make_full_div_v3():
    src = os.path.join(ROOT, "tests", "fixtures", "seed_full_div_scripted.ptc")
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/version"):
                data = b"3\n"
            zout.writestr(info, data)
    return out.getvalue()


FILES = {
    "tar_v01.pt": make_tar,
    "legacy_view_metadata.pt": make_legacy_view_metadata,
    "legacy_big_endian_host.pt": make_legacy_big_endian_host,
    "legacy_untyped.pt": make_legacy_untyped,
    "full_div_v3.ptc": make_full_div_v3,
}


def main(argv):
    for name, make in FILES.items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(make())
        print("wrote", name)
    if "--describe" in argv:
        py = argv[argv.index("--describe") + 1]
        tool = os.path.join(ROOT, "tests", "python", "describe.py")
        for name in FILES:
            path = os.path.join(HERE, name)
            out = os.path.join(HERE, os.path.splitext(name)[0] + ".json")
            r = subprocess.run([py, tool, path, "--out", out], capture_output=True, text=True)
            print(("described " if r.returncode == 0 else "torch cannot load ") + name,
                  (r.stderr.strip().splitlines() or [""])[-1] if r.returncode else "")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
