#!/usr/bin/env python3
"""Write random checkpoints with torch.save, each with its ground-truth description beside it.

usage: gen_random.py OUTDIR --seed N --count K [--exclude-dtypes a,b] [--exotic] [--formats zip,legacy,big]

For i in 0..K-1 writes OUTDIR/rSEED_III.pt and OUTDIR/rSEED_III.json (the description schema of
shared/fixtures/README.md, made by describe.py from what torch.load returns), plus
OUTDIR/MANIFEST.json. The output is a deterministic function of (seed, i, options): rerun with the
same seed to reproduce a failure, or use --only I to write a single file.

What the files hold, at random:
  * tensors of every storage dtype torch has (float32/64, float16, bfloat16, the five float8
    types, int8/16/32/64, uint8/16/32/64, bool, complex32/64/128); contents either plain
    numbers with nan/inf/-inf/-0.0 sprinkled in, or raw random bits (subnormals, NaN payloads);
  * shapes of 0 to 4 dims, 0-d and empty tensors, some over 64 elements (no "values");
  * views sharing one storage: transposes, permutes, slices with steps, narrow, select,
    diagonal, expand (stride 0), flat offsets (storage_offset), overlapping as_strided, empty
    and 0-d views with an offset, and the same tensor object twice;
  * nn.Parameter with and without requires_grad, plain tensors with requires_grad;
  * nested dicts (str, int and tuple keys), OrderedDicts (some with a state_dict-like
    _metadata), lists and tuples; Python ints (also >= 2**53 and beyond 64 bits), floats
    (nan, inf, -0.0), str, bytes, bool, None, complex, set, frozenset, torch.Size, dtype, device;
  * pickle protocols 2, 4 and 5;
  * formats: "zip" (torch.save default), "legacy" (_use_new_zipfile_serialization=False) and
    "big": a zip file rewritten like the fixture byteorder_big.pt (Python zipfile, records
    copied in order, storages byte-swapped per element, byteorder record "big").

Restrictions that come from torch itself:
  * legacy files hold only the dtypes with a typed storage class (torch 2.15 cannot save the
    newer dtypes, float8/uint16-64/complex32, in the legacy format);
  * big-endian files hold only those dtypes too: torch 2.15 does not byte-swap storages saved
    as UntypedStorage (the newer dtypes) when it loads a big-endian file, so for those the
    "truth" would be torch's mistake.

--exotic adds conj/neg views and the dtypes that have no element values in torch
(bits8, bits16, bits1x8, bits2x4, bits4x2, float4_e2m1fn_x2, bcomplex32); their "values" are
null by describe.py's own convention.
"""
import argparse
import collections
import io
import json
import math
import os
import pickle
import random
import sys
import warnings
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import describe  # noqa: E402

warnings.filterwarnings("ignore")

# dtypes with a legacy typed storage class (FloatStorage, ...): allowed in every format
LEGACY_DTYPES = [
    "float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16", "int32", "int64",
    "bool", "complex64", "complex128",
]
# dtypes saved as UntypedStorage + _rebuild_tensor_v3 (zip format only)
NEW_DTYPES = [
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    "uint16", "uint32", "uint64", "complex32",
]
EXOTIC_DTYPES = ["bits8", "bits16", "bits1x8", "bits2x4", "bits4x2", "float4_e2m1fn_x2", "bcomplex32"]

FORMATS = {"zip": 66, "legacy": 19, "big": 15}
PROTOCOLS = {2: 60, 4: 20, 5: 20}


def _can_grad(dtype):
    # torch 2.15 cannot load a tensor of a newer dtype (float8, complex32, ...) that requires
    # grad: _rebuild_tensor_v3 calls set_() on a leaf that requires grad and fails.
    return (dtype.is_floating_point or dtype.is_complex) and str(dtype)[6:] in LEGACY_DTYPES


def pick(rng, weights):
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


class Gen:
    def __init__(self, rng, dtypes, exotic):
        self.rng = rng
        self.g = torch.Generator().manual_seed(rng.getrandbits(62))
        self.dtypes = [getattr(torch, d) for d in dtypes]
        self.exotic = exotic
        self.bases = []  # tensors whose storage later views may share
        self.tensors = []  # every tensor put in the object (for reuse of the same object)
        self.used = collections.Counter()
        self.n_tensors = 0

    # ---- tensors ------------------------------------------------------------------------
    def shape(self, big=False):
        r = self.rng
        ndim = pick(r, {0: 10, 1: 35, 2: 30, 3: 15, 4: 10})
        dims = [pick(r, {0: 4, 1: 14, 2: 22, 3: 22, 4: 16, 5: 12, 7: 10}) for _ in range(ndim)]
        if big and ndim:
            dims[r.randrange(ndim)] = r.randint(40, 300)
        return dims

    def contents(self, dtype, shape):
        r, g = self.rng, self.g
        numel = math.prod(shape)
        if dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=g, dtype=torch.uint8).bool()
        esize = torch.empty(0, dtype=dtype).element_size()
        if (dtype.is_floating_point or dtype.is_complex) and r.random() < 0.5:
            try:
                real = dtype.is_complex
                x = torch.randn(shape + ([2] if real else []), generator=g, dtype=torch.float64)
                x = x * (10.0 ** r.randint(-3, 3))
                flat = x.view(-1)
                for _ in range(r.randint(0, 3) if flat.numel() else 0):
                    flat[r.randrange(flat.numel())] = r.choice([math.nan, math.inf, -math.inf, -0.0, 0.0])
                if real:
                    x = torch.view_as_complex(x.to(torch.float64).contiguous()).to(torch.complex128)
                return x.to(dtype)
            except (RuntimeError, TypeError):
                pass  # no conversion into this dtype: fall back to random bits
        raw = torch.randint(0, 256, (numel * esize,), generator=g, dtype=torch.uint8)
        return raw.view(dtype).reshape(shape)

    def new_tensor(self, big=False):
        dtype = self.rng.choice(self.dtypes)
        self.used[str(dtype).replace("torch.", "")] += 1
        return self.contents(dtype, self.shape(big))

    def new_base(self):
        """A contiguous tensor with at least one element, for views."""
        dtype = self.rng.choice(self.dtypes)
        self.used[str(dtype).replace("torch.", "")] += 1
        shape = [self.rng.randint(1, 6) for _ in range(self.rng.randint(1, 3))]
        if self.rng.random() < 0.2:
            shape[0] = self.rng.randint(20, 80)
        t = self.contents(dtype, shape)
        self.bases.append(t)
        return t

    def view(self, base):
        r = self.rng
        kinds = ["transpose", "slice", "narrow", "expand", "offset", "as_strided", "select",
                 "diagonal", "empty", "scalar", "reshape"]
        if self.exotic and (base.dtype.is_complex or base.dtype.is_floating_point):
            kinds += ["conj", "neg"]
        kind = r.choice(kinds)
        nd = base.dim()
        flat = base.reshape(-1)
        n = flat.numel()
        if kind == "transpose" and nd >= 2:
            perm = list(range(nd))
            r.shuffle(perm)
            return base.permute(perm)
        if kind == "slice":
            idx = []
            for s in base.shape:
                a = r.randint(0, max(s - 1, 0))
                b = r.randint(a, s)
                idx.append(slice(a, b, r.randint(1, 3)))
            return base[tuple(idx)]
        if kind == "narrow":
            d = r.randrange(nd)
            a = r.randint(0, base.shape[d] - 1)
            return base.narrow(d, a, r.randint(0, base.shape[d] - a))
        if kind == "expand":
            a = r.randrange(n)
            k = r.randint(1, min(4, n - a))
            v = flat[a:a + k]
            if r.random() < 0.5:
                return v.unsqueeze(0).expand(r.randint(0, 4), k)
            return v.unsqueeze(1).expand(k, r.randint(0, 4))
        if kind == "offset":
            a = r.randint(0, n - 1)
            return flat[a:]
        if kind == "as_strided":
            # possibly overlapping windows; stay inside the storage
            for _ in range(10):
                size = [r.randint(1, 4) for _ in range(r.randint(1, 3))]
                stride = [r.randint(0, 3) for _ in size]
                off = r.randint(0, n - 1)
                if off + sum((s - 1) * st for s, st in zip(size, stride)) < n:
                    return base.as_strided(size, stride, off)
            return flat[:1]
        if kind == "select" and nd >= 1:
            d = r.randrange(nd)
            return base.select(d, r.randrange(base.shape[d]))
        if kind == "diagonal" and nd >= 2:
            return base.diagonal(r.randint(-1, 1) if min(base.shape[:2]) > 1 else 0, 0, 1)
        if kind == "empty":
            a = r.randint(0, n)
            return flat[a:a]
        if kind == "scalar":
            return flat[r.randrange(n)]
        if kind == "conj" and base.dtype.is_complex:
            try:
                v = base.conj()
                v.resolve_conj()  # some dtypes cannot conjugate (bcomplex32)
                return v
            except (RuntimeError, NotImplementedError):
                return base
        if kind == "neg":
            try:
                v = base._neg_view()
                v.resolve_neg()  # some dtypes cannot negate (float8_e8m0fnu, ...)
                return v
            except (AttributeError, RuntimeError, NotImplementedError):
                return base
        # reshape of a contiguous base is a view too
        return base.reshape(-1) if nd > 1 else base.unsqueeze(0)

    def tensor_leaf(self):
        r = self.rng
        self.n_tensors += 1
        choice = pick(r, {"new": 38, "view": 34, "param": 12, "same": 6, "grad": 5, "big": 5})
        if choice == "same" and self.tensors:
            return r.choice(self.tensors)  # the same object again (memo)
        if choice == "view" or (choice == "same" and not self.tensors):
            base = r.choice(self.bases) if self.bases and r.random() < 0.6 else self.new_base()
            t = self.view(base)
            if r.random() < 0.3:
                t = self.view(t.contiguous()) if t.numel() and t.dim() and r.random() < 0.2 else t
            if r.random() < 0.25 and base is not t:
                self.tensors.append(base)
        elif choice == "param":
            src = self.view(self.new_base()) if r.random() < 0.3 else self.new_tensor()
            grad = _can_grad(src.dtype) and r.random() < 0.6
            try:
                t = torch.nn.Parameter(src, requires_grad=grad)
            except RuntimeError:
                t = torch.nn.Parameter(src, requires_grad=False)
        elif choice == "grad":
            t = self.new_tensor()
            if _can_grad(t.dtype):
                t.requires_grad_(True)
        else:
            t = self.new_tensor(big=choice == "big")
        self.tensors.append(t)
        return t

    # ---- python values --------------------------------------------------------------------
    def scalar(self):
        r = self.rng
        k = r.choice(["int", "neg", "big", "huge", "float", "special", "str", "bool", "none", "bytes",
                      "complex", "size", "dtype", "device", "set", "frozenset"])
        if k == "int":
            return r.randint(0, 70000)
        if k == "neg":
            return -r.randint(1, 2 ** 31)
        if k == "big":
            return r.choice([1, -1]) * r.randint(2 ** 31, 2 ** 53 - 1)
        if k == "huge":
            return r.choice([2 ** 53, -(2 ** 53), 2 ** 63 - 1, -(2 ** 63), 2 ** 64, r.randint(2 ** 64, 2 ** 100)])
        if k == "float":
            return r.uniform(-1e6, 1e6) * 10.0 ** r.randint(-20, 20)
        if k == "special":
            return r.choice([math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308])
        if k == "str":
            return r.choice(["", "a", "weight", "h\u00e9llo \u2713", "\U0001f600 emoji", "line\nbreak", "x" * 300])
        if k == "bool":
            return r.random() < 0.5
        if k == "none":
            return None
        if k == "bytes":
            return bytes(r.randrange(256) for _ in range(r.randint(0, 12)))
        if k == "complex":
            return complex(r.uniform(-5, 5), r.choice([r.uniform(-5, 5), -0.0, math.inf]))
        if k == "size":
            return torch.Size([r.randint(0, 9) for _ in range(r.randint(0, 4))])
        if k == "dtype":
            return getattr(torch, r.choice(LEGACY_DTYPES + NEW_DTYPES))
        if k == "device":
            return torch.device(r.choice(["cpu", "cuda:0", "cuda:1", "meta", "cuda"]))
        # Sets hold at most 4 ints in 0..7: then Python iterates them in ascending order however
        # they were built, so the order torch.load gives back is the order in the file.
        items = r.sample(range(8), r.randint(0, 4))
        return set(items) if k == "set" else frozenset(items)

    def key(self, i):
        r = self.rng
        k = pick(r, {"str": 80, "int": 12, "tuple": 8})
        if k == "int":
            return r.randint(-3, 1000) * 1000 + i
        if k == "tuple":
            return (i, r.randint(0, 9))
        return r.choice(["w", "b", "layer", "state", "x", "k", "\u00e9"]) + f"{i}"

    def value(self, depth=0):
        r = self.rng
        if depth >= 4 or r.random() < 0.45 + 0.1 * depth:
            return self.tensor_leaf() if r.random() < 0.6 else self.scalar()
        kind = pick(r, {"dict": 35, "odict": 15, "list": 30, "tuple": 20})
        n = r.randint(0, 6)
        if kind == "list":
            return [self.value(depth + 1) for _ in range(n)]
        if kind == "tuple":
            return tuple(self.value(depth + 1) for _ in range(n))
        items = [(self.key(i), self.value(depth + 1)) for i in range(n)]
        if kind == "dict":
            return dict(items)
        od = collections.OrderedDict(items)
        if r.random() < 0.5:
            od._metadata = collections.OrderedDict([("", {"version": 1})] + [
                (f"m{i}", {"version": r.randint(1, 3)}) for i in range(r.randint(0, 2))])
        return od

    def root(self):
        r = self.rng
        k = pick(r, {"dict": 50, "state_dict": 20, "tensor": 8, "list": 12, "value": 10})
        if k == "tensor":
            return self.tensor_leaf()
        if k == "state_dict":
            od = collections.OrderedDict((f"layer{i}.{n}", self.tensor_leaf())
                                         for i in range(r.randint(0, 5)) for n in ("weight", "bias"))
            od._metadata = collections.OrderedDict([("", {"version": 1})] + [
                (f"layer{i}", {"version": 1}) for i in range(r.randint(0, 3))])
            return od
        if k == "list":
            return [self.value(1) for _ in range(r.randint(0, 5))]
        if k == "value":
            return self.value(0)
        return {f"k{i}": self.value(1) for i in range(r.randint(1, 7))}


# ---- big-endian rewrite (as the fixture byteorder_big.pt was made) -----------------------------


class _KeyScan(pickle.Unpickler):
    """Reads data.pkl and records the dtype of every storage key, without building tensors."""

    def __init__(self, f):
        super().__init__(f)
        self.dtypes = {}

    def find_class(self, module, name):
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        if module in ("torch._utils", "torch._tensor"):
            return lambda *a, **k: None
        return super().find_class(module, name)

    def persistent_load(self, pid):
        typ, key = pid[1], pid[2]
        if typ is torch.UntypedStorage or not hasattr(typ, "dtype"):
            raise ValueError(f"storage {key} is an UntypedStorage: not swappable the way torch reads it")
        self.dtypes[key] = typ.dtype
        return None


def _swap(data, dtype):
    size = torch.empty(0, dtype=dtype).element_size()
    if dtype.is_complex:
        size //= 2
    if size == 1:
        return data
    import numpy as np

    return np.frombuffer(data, dtype=f"<u{size}").byteswap().tobytes()


def rewrite_big_endian(path):
    with zipfile.ZipFile(path) as z:
        records = [(i.filename, z.read(i)) for i in z.infolist()]
    prefix = records[0][0].split("/", 1)[0]
    scan = _KeyScan(io.BytesIO(dict(records)[prefix + "/data.pkl"]))
    scan.load()
    out, has_order = [], False
    for name, data in records:
        rel = name[len(prefix) + 1:]
        if rel == "byteorder":
            data, has_order = b"big", True
        elif rel.startswith("data/"):
            data = _swap(data, scan.dtypes[rel[5:]])
        out.append((name, data))
    if not has_order:
        out.insert(1, (prefix + "/byteorder", b"big"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in out:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


# ---- driver ------------------------------------------------------------------------------------


def generate_one(outdir, seed, i, exclude, exotic, formats):
    rng = random.Random(f"ptfile-gen-random/{seed}/{i}")
    fmt = pick(rng, {f: w for f, w in FORMATS.items() if f in formats})
    proto = pick(rng, PROTOCOLS)
    names = LEGACY_DTYPES if fmt in ("legacy", "big") else LEGACY_DTYPES + NEW_DTYPES
    if exotic and fmt == "zip":
        names = names + EXOTIC_DTYPES
    names = [d for d in names if d not in exclude and hasattr(torch, d)]
    gen = Gen(rng, names, exotic and fmt == "zip")
    obj = gen.root()
    name = f"r{seed}_{i:03d}"
    path = os.path.join(outdir, name + ".pt")
    torch.save(obj, path, pickle_protocol=proto, _use_new_zipfile_serialization=fmt != "legacy")
    note = (f"gen_random seed {seed} index {i}: {fmt}, pickle protocol {proto}, "
            f"{gen.n_tensors} tensors, dtypes {','.join(sorted(gen.used))}")
    if fmt == "big":
        little = describe.describe(*describe.load(path))
        rewrite_big_endian(path)
        desc = describe.describe_file(path, name=name, note=note, extra={"seed": seed, "index": i})
        if (desc["root"], desc["storages"]) != (little["root"], little["storages"]):
            raise AssertionError(f"{path}: the big-endian rewrite does not load to the same values")
    else:
        desc = describe.describe_file(path, name=name, note=note, extra={"seed": seed, "index": i})
    # torch must read back exactly what was saved: describe the live object too.
    live = describe.describe(obj)
    if (live["root"], live["storages"]) != (desc["root"], desc["storages"]):
        raise AssertionError(f"{path}: torch.load does not return what was saved")
    with open(os.path.join(outdir, name + ".json"), "w") as f:
        f.write(describe.dumps(desc))
    return {"name": name, "file": name + ".pt", "format": desc["format"], "variant": fmt, "note": note,
            "loads_with_weights_only": desc["loads_with_weights_only"],
            "bytes": os.path.getsize(path)}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--only", type=int, help="write only file number ONLY of the sequence")
    p.add_argument("--exclude-dtypes", default="", help="comma-separated dtype names never to use")
    p.add_argument("--exotic", action="store_true", help="also bits*/float4/bcomplex32 and conj/neg views")
    p.add_argument("--formats", default="zip,legacy,big", help="subset of zip,legacy,big")
    a = p.parse_args(argv)
    os.makedirs(a.outdir, exist_ok=True)
    exclude = {d for d in a.exclude_dtypes.split(",") if d}
    formats = {f for f in a.formats.split(",") if f}
    if not formats or formats - set(FORMATS):
        p.error(f"--formats: choose from {','.join(FORMATS)}")
    indices = [a.only] if a.only is not None else range(a.count)
    manifest = []
    for i in indices:
        manifest.append(generate_one(a.outdir, a.seed, i, exclude, a.exotic, formats))
    with open(os.path.join(a.outdir, "MANIFEST.json"), "w") as f:
        json.dump({"torch_version": torch.__version__, "seed": a.seed, "fixtures": manifest}, f, indent=1)
    counts = collections.Counter(m["variant"] for m in manifest)
    print(f"gen_random: wrote {len(manifest)} checkpoints to {a.outdir} (seed {a.seed}; "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
