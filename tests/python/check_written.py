#!/usr/bin/env python3
"""Check files that ptfile wrote against what torch (and safetensors) read from them.

usage: check_written.py JOBS.json

JOBS.json is a list of jobs, each an object with a "kind":

  {"kind": "torch", "name": N, "file": F, "expected": E.json, "weights_only": true}
      F (a ptfile-written zip or legacy file) must load in torch.load(weights_only=...) and
      its description (describe.py, location tags recorded through a map_location callable)
      must equal E.json (compare_description.py). For a zip file also with mmap=True.
      With "compact": true (a `--compact` output) storage offsets and whole-storage entries
      are not compared, and no storage may be larger than the original's.
  {"kind": "safetensors", "name": N, "file": F, "original": O}
      F must load with safetensors.torch.load_file, and hold exactly the tensors of
      torch.load(O) flattened with "." keys: same names, dtypes, shapes and bytes.
  {"kind": "pair", "name": N, "file": F, "torch_file": T}
      F (written by ptfile) and T (written by torch.save) of the same object must load to
      equal descriptions, and hold the same records, 64-byte aligned.
  {"kind": "torch_save", "name": N, "file": T, "spec": S}
      Writes the object S describes with torch.save to T (used to build "pair" jobs); S is
      {"tensors": [[name, dtype, shape, hex-bytes, requires_grad, is_parameter], ...]}.

Prints "ok   NAME KIND" or "FAIL NAME KIND: why" per job and a closing "N passed, N failed";
exits 1 if any job failed.
"""
import collections
import json
import os
import sys
import warnings
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tools"))

import torch  # noqa: E402

import describe  # noqa: E402
import compare_description  # noqa: E402


def compare(expected, actual):
    c = compare_description.Cmp({}, False)
    c.node("", expected["root"], actual.get("root"))
    c.storages(expected.get("storages", []), actual.get("storages", []))
    return c.diffs


def load(path, weights_only, mmap=False):
    locs = describe.Locations()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if weights_only:
            obj = torch.load(path, map_location=locs, weights_only=True, mmap=mmap)
        else:
            obj = torch.load(path, map_location=locs, weights_only=False, mmap=mmap,
                             pickle_module=describe._pickle_module)
    return obj, locs


def check_torch(job):
    expected = json.load(open(job["expected"]))
    wo = job.get("weights_only", True)
    errors = []
    modes = [False]
    if zipfile.is_zipfile(job["file"]):
        modes.append(True)
        errors += check_layout(job["file"])
    largest = max((s["nbytes"] for s in expected.get("storages", [])), default=0)
    if job.get("compact"):
        expected = strip(expected)
    for mmap in modes:
        obj, locs = load(job["file"], wo, mmap=mmap)
        actual = describe.describe(obj, locs)
        if job.get("compact"):
            for s in actual["storages"]:
                if s["nbytes"] > largest:
                    errors.append(f"storage {s['id']} grew to {s['nbytes']} bytes")
            actual = strip(actual)
        diffs = compare(expected, actual)
        if diffs:
            errors.append(("mmap: " if mmap else "") + "; ".join(diffs[:5]))
    return errors


def strip(desc):
    """A description without storage offsets and the storages list (for compacted files)."""
    def walk(n):
        if isinstance(n, dict):
            return {k: walk(v) for k, v in n.items() if k != "storage_offset"}
        if isinstance(n, list):
            return [walk(x) for x in n]
        return n
    return {"root": walk(desc["root"]), "storages": []}


def check_layout(path):
    """Every record stored and its data 64-byte aligned; version and byteorder as torch writes."""
    errors = []
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
        if bad:
            errors.append(f"bad CRC in {bad}")
        names = z.namelist()
        prefix = names[0].split("/", 1)[0]
        if z.read(prefix + "/version") != b"3\n":
            errors.append("version record is not '3\\n'")
        if z.read(prefix + "/byteorder") != b"little":
            errors.append("byteorder record is not 'little'")
        with open(path, "rb") as f:
            for info in z.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    errors.append(f"{info.filename} is compressed")
                f.seek(info.header_offset + 26)
                n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
                start = info.header_offset + 30 + n + m
                if start % 64:
                    errors.append(f"{info.filename} data at {start}, not 64-aligned")
    return errors


def flatten(obj, prefix=""):
    out = {}
    items = None
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    if items is None:
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        return out
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    return out


def raw(t):
    t = t.detach().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def check_safetensors(job):
    from safetensors.torch import load_file

    got = load_file(job["file"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orig = torch.load(job["original"], map_location="cpu", weights_only=False,
                          pickle_module=describe._pickle_module)
    want = flatten(orig)
    errors = []
    if set(got) != set(want):
        errors.append(f"keys differ: missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}")
    for k in sorted(set(got) & set(want)):
        a, b = got[k], want[k]
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            errors.append(f"{k}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}")
        elif raw(a) != raw(b):
            errors.append(f"{k}: bytes differ")
    # Keys are independent: no two share memory.
    ptrs = [t.untyped_storage().data_ptr() for t in got.values() if t.numel()]
    if len(ptrs) != len(set(ptrs)):
        errors.append("two keys share memory")
    return errors


def check_pair(job):
    errors = check_layout(job["file"])
    a_obj, a_locs = load(job["torch_file"], True)
    b_obj, b_locs = load(job["file"], True)
    diffs = compare(describe.describe(a_obj, a_locs), describe.describe(b_obj, b_locs))
    if diffs:
        errors.append("; ".join(diffs[:5]))
    with zipfile.ZipFile(job["torch_file"]) as za, zipfile.ZipFile(job["file"]) as zb:
        ra = [n.split("/", 1)[1] for n in za.namelist()]
        rb = [n.split("/", 1)[1] for n in zb.namelist()]
        if ra != rb:
            errors.append(f"records differ: torch {ra}, ptfile {rb}")
        pa = za.read(za.namelist()[0])
        pb = zb.read(zb.namelist()[0])
        if pa != pb:
            errors.append("data.pkl differs from torch's")
    return errors


def torch_save(job):
    sd = collections.OrderedDict()
    for name, dtype, shape, hexbytes, rg, param in job["spec"]["tensors"]:
        dt = getattr(torch, dtype)
        b = bytearray(bytes.fromhex(hexbytes))
        t = torch.frombuffer(b, dtype=dt).reshape(shape) if b else torch.empty(shape, dtype=dt)
        t = t.clone()
        if param:
            t = torch.nn.Parameter(t, requires_grad=rg)
        else:
            t.requires_grad_(rg)
        sd[name] = t
    torch.save(sd, job["file"])
    return []


KINDS = {"torch": check_torch, "safetensors": check_safetensors, "pair": check_pair,
         "torch_save": torch_save}


def main(argv):
    if len(argv) != 1:
        print(__doc__)
        return 2
    jobs = json.load(open(argv[0]))
    passed = failed = 0
    for job in jobs:
        try:
            errors = KINDS[job["kind"]](job)
        except Exception as e:  # noqa: BLE001
            errors = [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]]
        if errors:
            failed += 1
            print(f"FAIL {job['name']} {job['kind']}: " + " | ".join(errors)[:800])
        else:
            passed += 1
            print(f"ok   {job['name']} {job['kind']}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
