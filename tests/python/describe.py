#!/usr/bin/env python3
"""Describe what `torch.load` returns, in the description schema of shared/fixtures/README.md.

This reproduces, byte for byte after compare_description.py, the ground-truth JSON files in
tests/fixtures, which were written by PyTorch itself. It is the oracle of the interop tests:
tests/python/gen_random.py writes random checkpoints with torch.save and describes them with
this module; `ptfile inspect --json` must then print the same description.

usage:
    describe.py FILE [--name NAME] [--note NOTE] [--out OUT.json]
    describe.py --check DIR      # describe every zip/legacy/torchscript fixture in DIR and
                                 # compare with its NAME.json (compare_description.py)

As a module:
    load(path) -> (obj, locations)      torch.load with every storage kept on the CPU and its
                                        saved location tag recorded
    describe(obj, locations) -> {"root": NODE, "storages": [...]}
    describe_file(path, name=None, note=None) -> the full description with info keys

Conventions (reverse-engineered from the fixtures written by torch 2.15):
  * tensor/parameter: dtype is torch's name without "torch."; device is the location tag saved
    in the file (not where the storage lives now); storage is an id numbered 0, 1, ... in the
    order storages are first met walking the tree (dict items in order, key before value, an
    OrderedDict's items before its metadata); sha256 is over the elements in row-major order,
    little-endian; "values" is present only when numel <= 64 (flattened, row-major), and is
    null for uint64; floats are JSON numbers except "nan", "inf", "-inf", "-0.0"; float16,
    bfloat16 and float8 are widened to float; complex elements are [re, im].
  * meta tensors have no storage, sha256 or values; sparse and quantized tensors have no
    storage id (their storages are not listed).
  * int nodes: a JSON number, or a decimal string when |value| >= 2**53. Tensor values are
    never stringified (int64 extremes are JSON numbers).
  * STORAGE: {"id", "device" (saved tag), "nbytes", "sha256" over the whole storage, LE}.
  * nn.Module objects: {"type": "object", "class": "module.QualName", "state_dict": ...};
    TorchScript archives: {"type": "script_module", "state_dict": ...}.
"""
import collections
import hashlib
import json
import math
import os
import pickle
import sys
import types
import warnings
import zipfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
VALUES_LIMIT = 64
BIG_INT = 2 ** 53

# ------------------------------------------------------------------------------------------------
# Loading: keep every storage on the CPU, record the tag it was saved with.
# ------------------------------------------------------------------------------------------------


class _Stub:
    """Stand-in for a class that cannot be imported (e.g. __main__.MyModule of another script)."""


def _stub_class(module, name):
    # A pickled nn.Module is rebuilt with NEWOBJ/REDUCE then BUILD(state dict); an nn.Module
    # subclass gets nn.Module.__setstate__, which is all it needs. Anything else gets a plain
    # object whose __dict__ takes the state.
    qual = name.split(".")[-1]

    def __setstate__(self, state):
        if isinstance(state, dict) and "_parameters" in state:
            torch.nn.Module.__setstate__(self, state)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    cls = type(qual, (torch.nn.Module,), {"__setstate__": __setstate__, "forward": lambda self, *a: None})
    cls.__module__ = module
    cls.__qualname__ = name
    return cls


class _StubUnpickler(pickle.Unpickler):
    _stubs = {}

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (AttributeError, ImportError):
            key = (module, name)
            if key not in self._stubs:
                self._stubs[key] = _stub_class(module, name)
            return self._stubs[key]


_pickle_module = types.ModuleType("describe_pickle")
_pickle_module.__dict__.update({k: v for k, v in pickle.__dict__.items() if not k.startswith("__")})
_pickle_module.Unpickler = _StubUnpickler


def file_format(path):
    """'zip', 'torchscript', 'legacy' or 'tar' (as torch.load dispatches, PYTORCH_FORMAT §0)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        prefix = names[0].split("/", 1)[0] if names else ""
        if prefix + "/constants.pkl" in names:
            return "torchscript"
        return "zip"
    import tarfile

    try:
        with tarfile.open(path, "r:"):
            return "tar"
    except tarfile.TarError:
        return "legacy"


def pickle_protocol(path, fmt=None):
    fmt = fmt or file_format(path)
    if fmt in ("zip", "torchscript"):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            prefix = names[0].split("/", 1)[0]
            data = z.read(prefix + "/data.pkl")[:2]
    else:
        with open(path, "rb") as f:
            data = f.read(2)
    if len(data) == 2 and data[0] == 0x80:
        return data[1]
    return 0


class Locations:
    """map_location callable: leaves every storage on the CPU and records its saved tag."""

    def __init__(self):
        self.tags = {}  # StorageImpl address (_cdata) -> saved location tag
        self._keep = []  # keep the storages alive so that addresses are not reused

    def __call__(self, storage, location):
        self.tags[storage._cdata] = location
        self._keep.append(storage)
        return storage

    def tag(self, t):
        if t.device.type == "meta":
            return "meta"
        try:
            return self.tags.get(t.untyped_storage()._cdata, str(t.device))
        except Exception:
            return str(t.device)


def load(path, weights_only=False):
    """Load like torch.load, but on the CPU and recording the saved location tags."""
    fmt = file_format(path)
    if fmt == "torchscript":
        return torch.jit.load(path, map_location="cpu"), Locations()
    locs = Locations()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if weights_only:
            obj = torch.load(path, map_location=locs, weights_only=True)
        else:
            obj = torch.load(path, map_location=locs, weights_only=False, pickle_module=_pickle_module)
    return obj, locs


def loads_with_weights_only(path):
    if file_format(path) == "torchscript":
        return None
    try:
        load(path, weights_only=True)
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------------------------------
# Describing
# ------------------------------------------------------------------------------------------------


def fnum(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0.0 and math.copysign(1.0, x) < 0:
        return "-0.0"
    return x


def inum(x):
    x = int(x)
    return str(x) if abs(x) >= BIG_INT else x


def dtype_name(dt):
    return str(dt).replace("torch.", "")


def element_bytes(t):
    """The tensor's elements in row-major order as little-endian bytes.

    Gathered from the storage's bytes with the tensor's strides (numpy), so that it works for
    every dtype, including those torch cannot copy (float8, uint64, complex32, bits*).
    """
    t = _resolved(t)
    n = t.numel()
    if n == 0:
        return b""
    es = t.element_size()
    raw = np.frombuffer(storage_bytes(t.untyped_storage()), dtype=np.uint8)
    arr = np.lib.stride_tricks.as_strided(
        raw[t.storage_offset() * es:],
        shape=tuple(t.shape) + (es,),
        strides=tuple(st * es for st in t.stride()) + (1,),
        writeable=False,
    )
    b = arr.tobytes()
    if sys.byteorder == "big" and es > 1:
        b = _swap(b, t.dtype, es)
    return b


def _resolved(t):
    """A plain CPU tensor with the elements of t (conjugate and negative views applied)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t


def _swap(b, dtype, size):
    if dtype.is_complex:
        size //= 2
    out = bytearray(b)
    for i in range(0, len(b), size):
        out[i:i + size] = b[i:i + size][::-1]
    return bytes(out)


def storage_bytes(s):
    """A whole UntypedStorage's bytes (little-endian elements)."""
    n = s.nbytes()
    if n == 0:
        return b""
    return torch.empty(0, dtype=torch.uint8).set_(s, 0, (n,), (1,)).numpy().tobytes()


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def tensor_values(t):
    """Flattened row-major values per the fixture conventions.

    None (JSON null) for uint64, as in the fixtures (torch can list them; the fixture writer
    chose not to), and for the dtypes torch cannot convert (bits*, float4_e2m1fn_x2).
    An empty tensor has [] whatever its dtype. Those two rules are this module's (and
    src/describe.rs's): the fixtures have only a 3-element uint64 tensor and no bits/float4.
    """
    t = _resolved(t)
    dt = t.dtype
    if t.numel() == 0:
        return []
    if dt == torch.uint64:
        return None
    flat = t.reshape(-1)
    try:
        if dt.is_complex:
            r = torch.view_as_real(flat.to(torch.complex128)).tolist()
            return [[fnum(a), fnum(b)] for a, b in r]
        if dt.is_floating_point:
            return [fnum(x) for x in flat.to(torch.float64).tolist()]
        if dt == torch.bool:
            return [bool(x) for x in flat.tolist()]
        return [int(x) for x in flat.tolist()]
    except (RuntimeError, TypeError, NotImplementedError):
        return None


class Describer:
    def __init__(self, locations=None):
        self.locs = locations or Locations()
        self.ids = {}  # _cdata -> id
        self.storages = []
        self._keep = []

    def storage_id(self, t):
        s = t.untyped_storage()
        key = s._cdata
        if key not in self.ids:
            self.ids[key] = len(self.storages)
            self._keep.append(s)
            self.storages.append({
                "id": self.ids[key],
                "device": self.locs.tag(t),
                "nbytes": s.nbytes(),
                "sha256": sha256(storage_bytes(s)),
            })
        return self.ids[key]

    def tensor(self, t):
        if t.is_quantized:
            n = {"type": "qtensor", "dtype": dtype_name(t.dtype), "shape": list(t.shape),
                 "qscheme": str(t.qscheme()), "int_repr_sha256": sha256(element_bytes(t.int_repr()))}
            if t.numel() <= VALUES_LIMIT:
                n["dequant_values"] = [fnum(x) for x in t.dequantize().reshape(-1).tolist()]
            return n
        if t.layout != torch.strided:
            return {"type": "sparse_tensor", "layout": str(t.layout), "dtype": dtype_name(t.dtype),
                    "shape": list(t.shape), "dense_sha256": sha256(element_bytes(t.to_dense()))}
        n = {
            "type": "parameter" if isinstance(t, torch.nn.Parameter) else "tensor",
            "dtype": dtype_name(t.dtype),
            "shape": list(t.shape),
            "stride": list(t.stride()),
            "storage_offset": t.storage_offset(),
            "device": self.locs.tag(t),
            "requires_grad": t.requires_grad,
        }
        if t.device.type == "meta":
            return n
        n["sha256"] = sha256(element_bytes(t))
        n["storage"] = self.storage_id(t)
        if t.numel() <= VALUES_LIMIT:
            n["values"] = tensor_values(t)
        return n

    def node(self, o):
        if o is None:
            return {"type": "none"}
        if isinstance(o, torch.Tensor):
            return self.tensor(o)
        if isinstance(o, bool):
            return {"type": "bool", "value": o}
        if isinstance(o, int):
            return {"type": "int", "value": inum(o)}
        if isinstance(o, float):
            return {"type": "float", "value": fnum(o)}
        if isinstance(o, complex):
            return {"type": "complex", "value": [fnum(o.real), fnum(o.imag)]}
        if isinstance(o, str):
            return {"type": "str", "value": o}
        if isinstance(o, (bytes, bytearray)):
            return {"type": "bytes", "hex": bytes(o).hex()}
        if isinstance(o, torch.Size):
            return {"type": "size", "value": list(o)}
        if isinstance(o, torch.dtype):
            return {"type": "dtype", "value": dtype_name(o)}
        if isinstance(o, torch.device):
            return {"type": "device", "value": str(o)}
        if isinstance(o, collections.OrderedDict):
            n = {"type": "ordered_dict", "items": [[self.node(k), self.node(v)] for k, v in o.items()]}
            md = getattr(o, "_metadata", None)
            if md is not None:
                n["metadata"] = self.node(md)
            return n
        if isinstance(o, dict):
            return {"type": "dict", "items": [[self.node(k), self.node(v)] for k, v in o.items()]}
        if isinstance(o, list):
            return {"type": "list", "items": [self.node(x) for x in o]}
        if isinstance(o, tuple):
            return {"type": "tuple", "items": [self.node(x) for x in o]}
        if isinstance(o, frozenset):
            return {"type": "frozenset", "items": [self.node(x) for x in o]}
        if isinstance(o, set):
            return {"type": "set", "items": [self.node(x) for x in o]}
        if isinstance(o, torch.jit.ScriptModule):
            return {"type": "script_module", "state_dict": self.node(o.state_dict())}
        cls = type(o)
        n = {"type": "object", "class": f"{cls.__module__}.{cls.__qualname__}"}
        if isinstance(o, torch.nn.Module) and "_parameters" in o.__dict__:
            n["state_dict"] = self.node(o.state_dict())
        return n


def describe(obj, locations=None):
    d = Describer(locations)
    root = d.node(obj)
    return {"root": root, "storages": d.storages}


def describe_file(path, name=None, note=None, extra=None):
    fmt = file_format(path)
    obj, locs = load(path)
    desc = describe(obj, locs)
    base = os.path.basename(path)
    out = {
        "name": name or os.path.splitext(base)[0],
        "file": base,
        "note": note or "",
        "torch_version": torch.__version__,
        "format": fmt,
        "pickle_protocol": pickle_protocol(path, fmt),
        "loads_with_weights_only": loads_with_weights_only(path),
    }
    out.update(extra or {})
    out.update(desc)
    return out


def dumps(desc):
    return json.dumps(desc, indent=1, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def compare(expected_path, actual_desc, extra_args=()):
    """Run compare_description.py; returns (ok, output)."""
    import subprocess
    import tempfile

    tool = os.path.join(HERE, "..", "tools", "compare_description.py")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as tf:
        tf.write(dumps(actual_desc))
    try:
        r = subprocess.run([sys.executable, tool, expected_path, tf.name, *extra_args],
                           capture_output=True, text=True)
    finally:
        os.unlink(tf.name)
    return r.returncode == 0, r.stdout.strip()


def check_dir(d, only=None):
    passed = failed = 0
    for j in sorted(os.listdir(d)):
        if not j.endswith(".json") or j == "MANIFEST.json":
            continue
        exp = json.load(open(os.path.join(d, j)))
        name = exp.get("name", j[:-5])
        if only and name not in only:
            continue
        f = os.path.join(d, exp.get("file", name + ".pt"))
        if not os.path.exists(f):
            continue
        try:
            desc = describe_file(f, name=name)
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {name}: {type(e).__name__}: {e}"[:300])
            failed += 1
            continue
        ok, out = compare(os.path.join(d, j), desc)
        # The info keys are checked here too (compare_description.py ignores them).
        for k in ("format", "pickle_protocol", "loads_with_weights_only"):
            if k in exp and exp[k] != desc.get(k):
                ok = False
                out += f"\n{k}: expected {exp[k]!r}, got {desc.get(k)!r}"
        if ok:
            passed += 1
            print(f"ok   {name}")
        else:
            failed += 1
            print(f"FAIL {name}: " + "; ".join(out.splitlines()[:6])[:600])
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", nargs="?")
    p.add_argument("--name")
    p.add_argument("--note")
    p.add_argument("--out")
    p.add_argument("--check", metavar="DIR", help="check describe.py against the fixtures in DIR")
    p.add_argument("--only", help="with --check: comma-separated fixture names")
    a = p.parse_args(argv)
    if a.check:
        return check_dir(a.check, set(a.only.split(",")) if a.only else None)
    if not a.file:
        p.print_usage()
        return 2
    text = dumps(describe_file(a.file, name=a.name, note=a.note))
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
