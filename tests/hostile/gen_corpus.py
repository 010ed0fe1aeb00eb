#!/usr/bin/env python3
"""Deterministic generator of ptfile's hostile-input corpus.

Writes tests/hostile/corpus/* and tests/hostile/manifest.json. Every file is crafted by hand
(pickle opcodes, zip structures) or derived from the real torch files in tests/fixtures/; no
torch is needed. Run from anywhere:

    python3 tests/hostile/gen_corpus.py            # (re)generate corpus + manifest
    python3 tests/hostile/gen_corpus.py --check    # regenerate in memory, compare with disk
    python3 tests/hostile/gen_corpus.py --verify   # static checks: zips open, pickles parse,
                                                   # every payload reaches the global it names
    python3 tests/hostile/gen_corpus.py --run-markers
        # SANDBOXED: really unpickles (plain pickle, torch globals stubbed) the payloads whose
        # only effect is creating /tmp/ptfile_pwned_<name>, in a throwaway subprocess, and checks
        # that the marker appears (then deletes it). Never runs the other payloads.

Manifest entry fields (tests/hostile.rs reads them):
  file            name under corpus/
  class           corpus class (code_exec, dos, lying_tensor, zip_damage, not_a_checkpoint,
                  legacy, pickle_malformed, message, odd_valid)
  expect          "error" | "ok" | "ok_or_error"  -- for all three commands
  expect_inspect  optional override of `expect` for `inspect` and `inspect --json`
  must_mention    substrings the stderr line must contain (checked whenever the exit is 1)
  must_mention_any  optional list of alternative-groups: each group needs one member present
  marker          optional path a payload would create if executed (must stay absent)
  note            what the file is
"""

import bz2
import hashlib
import io
import json
import os
import pickle
import pickletools
import random
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
CORPUS = os.path.join(HERE, "corpus")
MANIFEST = os.path.join(HERE, "manifest.json")

MAX_FILE = 64 * 1024 - 1
MAX_TOTAL = 5 * 1000 * 1000
MARKER_DIR = "/tmp"
MARKER_PREFIX = "ptfile_pwned_"
BIG = 60_000_000  # bytes a deflated record inflates to (deflate caps at ~1032:1; < 64 KiB file)


def marker_for(name):
    return f"{MARKER_DIR}/{MARKER_PREFIX}{name}"


# --------------------------------------------------------------------------------------------
# pickle building blocks
# --------------------------------------------------------------------------------------------

class Raw(bytes):
    """A ready-made pickle fragment (pushes exactly one value unless noted)."""


def u8(n):
    return struct.pack("<B", n)


def u16(n):
    return struct.pack("<H", n)


def u32(n):
    return struct.pack("<I", n)


def i32(n):
    return struct.pack("<i", n)


def u64(n):
    return struct.pack("<Q", n)


def enc(v):
    """Encode a Python value as protocol-2 opcodes (no memo)."""
    if isinstance(v, Raw):
        return bytes(v)
    if v is None:
        return b"N"
    if v is True:
        return b"\x88"
    if v is False:
        return b"\x89"
    if isinstance(v, int):
        if 0 <= v < 256:
            return b"K" + u8(v)
        if 0 <= v < 65536:
            return b"M" + u16(v)
        if -(2 ** 31) <= v < 2 ** 31:
            return b"J" + i32(v)
        body = pickle.encode_long(v)
        if len(body) < 256:
            return b"\x8a" + u8(len(body)) + body
        return b"\x8b" + i32(len(body)) + body
    if isinstance(v, float):
        return b"G" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        return b"X" + u32(len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        b = bytes(v)
        if len(b) < 256:
            return b"C" + u8(len(b)) + b
        return b"B" + u32(len(b)) + b
    if isinstance(v, tuple):
        if len(v) == 0:
            return b")"
        if len(v) <= 3:
            return b"".join(enc(x) for x in v) + bytes([0x84 + len(v)])
        return b"(" + b"".join(enc(x) for x in v) + b"t"
    if isinstance(v, list):
        if not v:
            return b"]"
        return b"](" + b"".join(enc(x) for x in v) + b"e"
    if isinstance(v, dict):
        if not v:
            return b"}"
        return b"}(" + b"".join(enc(k) + enc(x) for k, x in v.items()) + b"u"
    raise TypeError(type(v))


def G(mod, name):
    return Raw(b"c" + mod.encode() + b"\n" + name.encode() + b"\n")


def SG(mod, name):
    """STACK_GLOBAL (protocol 4) with SHORT_BINUNICODE operands."""
    m, n = mod.encode(), name.encode()
    if len(m) < 256 and len(n) < 256:
        return Raw(b"\x8c" + u8(len(m)) + m + b"\x8c" + u8(len(n)) + n + b"\x93")
    return Raw(enc(mod) + enc(name) + b"\x93")


def call(fn, *args):
    return Raw(enc(fn) + enc(tuple(args)) + b"R")


def attr(obj, name):
    """builtins.getattr(obj, name)"""
    return call(G("builtins", "getattr"), obj, name)


OD = call(G("collections", "OrderedDict"))


def ordered_dict(items):
    """collections.OrderedDict() filled with SETITEMS, as torch writes a state_dict."""
    if not items:
        return OD
    body = b"".join(enc(k) + enc(v) for k, v in items)
    return Raw(bytes(OD) + b"(" + body + b"u")


_UNSET = object()


def pid(key="0", stype="FloatStorage", loc="cpu", numel=2, stype_global=_UNSET):
    st = stype_global if stype_global is not _UNSET else G("torch", stype)
    return Raw(enc(("storage", st, key, loc, numel)) + b"Q")


def persid(tup):
    return Raw(enc(tup) + b"Q")


def tensor(storage=None, offset=0, size=(2,), stride=(1,), rg=False, hooks=OD, extra=(),
           fn="_rebuild_tensor_v2", args=None):
    if storage is None:
        storage = pid()
    if args is None:
        args = (storage, offset, size, stride, rg, hooks) + tuple(extra)
    return Raw(bytes(G("torch._utils", fn)) + enc(tuple(args)) + b"R")


def pkl(obj, proto=2):
    head = b"\x80" + u8(proto) if proto is not None else b""
    return head + enc(obj) + b"."


F2 = struct.pack("<2f", 1.0, 2.0)  # data/0 of the standard 2-float tensor

# --------------------------------------------------------------------------------------------
# torch-style zip writer (mimics tests/fixtures/seed_tensor.pt byte for byte)
# --------------------------------------------------------------------------------------------


def deflate(data, level=9):
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
    return c.compress(data) + c.flush()


def deflate_zeros(n, byte=b"\0"):
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    out = []
    chunk = byte * (1 << 20)
    left = n
    while left > 0:
        k = min(left, len(chunk))
        out.append(c.compress(chunk[:k]))
        left -= k
    out.append(c.flush())
    return b"".join(out)


def crc_of_repeated(n, byte=b"\0"):
    crc = 0
    chunk = byte * (1 << 20)
    left = n
    while left > 0:
        k = min(left, len(chunk))
        crc = zlib.crc32(chunk[:k], crc)
        left -= k
    return crc


class Rec:
    """One zip record. data = uncompressed bytes (or None with payload/usize/crc given)."""

    def __init__(self, name, data=b"", method=0, payload=None, usize=None, crc=None,
                 declared_usize=None, declared_csize=None, declared_crc=None, flags=None,
                 local_name=None, local_extra=None, central_offset=None, local_sig=None,
                 version_needed=None):
        self.name = name
        self.data = data
        self.method = method
        if payload is None:
            payload = deflate(data) if method == 8 else data
        self.payload = payload
        self.usize = len(data) if usize is None else usize
        self.crc = zlib.crc32(data) if crc is None else crc
        self.declared_usize = declared_usize
        self.declared_csize = declared_csize
        self.declared_crc = declared_crc
        self.flags = flags
        self.local_name = local_name
        self.local_extra = local_extra
        self.central_offset = central_offset
        self.local_sig = local_sig
        self.version_needed = version_needed


def write_zip(recs, align=64, eocd=None, zip64=None, central_extra_recs=(), tail=b""):
    """Write records the way torch's PyTorchStreamWriter does.

    eocd / zip64: dicts overriding fields of the classic / zip64 end records
    (entries, cd_size, cd_offset, loc_offset). central_extra_recs: additional central entries
    given as (Rec, local_offset) that point at existing local data (overlaps).
    """
    out = bytearray()
    cents = []
    for r in recs:
        name = r.name.encode("utf-8")
        lname = r.local_name.encode("utf-8") if r.local_name is not None else name
        offset = len(out)
        if r.local_extra is not None:
            extra = r.local_extra
        else:
            start = offset + 30 + len(lname) + 4
            pad = (align - start % align) % align
            extra = b"FB" + u16(pad) + b"Z" * pad
        empty = r.usize == 0 and len(r.payload) == 0
        flags = r.flags if r.flags is not None else (0x0800 if empty else 0x0808)
        needed = r.version_needed if r.version_needed is not None else (20 if r.method == 8 else 0)
        sig = r.local_sig if r.local_sig is not None else 0x04034B50
        out += struct.pack("<IHHHHHIIIHH", sig, needed, flags, r.method, 0, 0, 0, 0, 0,
                           len(lname), len(extra))
        out += lname + extra + r.payload
        if not empty:
            out += struct.pack("<IIII", 0x08074B50, r.crc, len(r.payload) & 0xFFFFFFFF,
                               r.usize & 0xFFFFFFFF)
        cents.append((r, name, flags, needed, offset))
    for r, off in central_extra_recs:
        name = r.name.encode("utf-8")
        cents.append((r, name, 0x0808, 20 if r.method == 8 else 0, off))
    cd_offset = len(out)
    for r, name, flags, needed, offset in cents:
        usize = r.declared_usize if r.declared_usize is not None else r.usize
        csize = r.declared_csize if r.declared_csize is not None else len(r.payload)
        crc = r.declared_crc if r.declared_crc is not None else r.crc
        if r.central_offset is not None:
            offset = r.central_offset
        z64 = b""
        if usize >= 0xFFFFFFFF or csize >= 0xFFFFFFFF or offset >= 0xFFFFFFFF:
            if usize >= 0xFFFFFFFF:
                z64 += u64(usize)
                usize = 0xFFFFFFFF
            if csize >= 0xFFFFFFFF:
                z64 += u64(csize)
                csize = 0xFFFFFFFF
            if offset >= 0xFFFFFFFF:
                z64 += u64(offset)
                offset = 0xFFFFFFFF
            z64 = u16(1) + u16(len(z64)) + z64
        out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, needed, flags, r.method, 0, 0,
                           crc, csize, usize, len(name), len(z64), 0, 0, 0, 0, offset)
        out += name + z64
    cd_size = len(out) - cd_offset
    n = len(cents)
    z = dict(entries=n, cd_size=cd_size, cd_offset=cd_offset)
    if zip64:
        z.update(zip64)
    z64_at = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x2D, 0, 0, z["entries"],
                       z["entries"], z["cd_size"], z["cd_offset"])
    loc_off = z.get("loc_offset", z64_at)
    out += struct.pack("<IIQI", 0x07064B50, 0, loc_off, 1)
    e = dict(entries=min(n, 0xFFFF), cd_size=min(cd_size, 0xFFFFFFFF),
             cd_offset=min(cd_offset, 0xFFFFFFFF))
    if eocd:
        e.update(eocd)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, e["entries"], e["entries"], e["cd_size"],
                       e["cd_offset"], 0)
    out += tail
    return bytes(out)


SER_ID = b"0826864773560457770000027730831668810167"


def torch_records(data_pkl, storages=None, prefix="archive", version=b"3\n", byteorder=b"little",
                  pkl_method=0, drop=(), extra=()):
    storages = storages if storages is not None else {}
    p = (prefix + "/") if prefix else ""
    recs = [Rec(p + "data.pkl", data_pkl, method=pkl_method),
            Rec(p + ".format_version", b"1"),
            Rec(p + ".storage_alignment", b"64")]
    if byteorder is not None:
        recs.append(Rec(p + "byteorder", byteorder))
    for k in sorted(storages, key=lambda s: (len(s), s)):
        v = storages[k]
        recs.append(v if isinstance(v, Rec) else Rec(p + "data/" + k, v))
    if version is not None:
        recs.append(Rec(p + "version", version))
    recs.append(Rec(p + ".data/serialization_id", SER_ID))
    recs = [r for r in recs if r.name[len(p):] not in drop]
    recs += list(extra)
    return recs


def torch_zip(data_pkl, storages=None, **kw):
    zkw = {k: kw.pop(k) for k in ("eocd", "zip64", "central_extra_recs", "tail") if k in kw}
    return write_zip(torch_records(data_pkl, storages, **kw), **zkw)


def ckpt(obj, storages=None, proto=2, **kw):
    """A torch.save-like zip whose data.pkl is obj (a Raw or plain value)."""
    return torch_zip(pkl(obj, proto), storages, **kw)


def std_storages():
    return {"0": F2}


def read_fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def fixture_records(name):
    """Records of a real torch file, in archive order, with a new prefix 'archive'."""
    z = zipfile.ZipFile(io.BytesIO(read_fixture(name)))
    recs = []
    for info in z.infolist():
        rest = info.filename.split("/", 1)[1]
        recs.append((rest, z.read(info.filename), info.compress_type))
    return recs


def rebuild_fixture(name, replace=None, prefix="archive"):
    replace = replace or {}
    recs = []
    for rest, data, method in fixture_records(name):
        data = replace.get(rest, data)
        recs.append(Rec(prefix + "/" + rest, data, method=method))
    return write_zip(recs)


# --------------------------------------------------------------------------------------------
# legacy (non-zip) format
# --------------------------------------------------------------------------------------------

MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
LKEY = "94674562729184"


def lpid(key=LKEY, stype="FloatStorage", numel=2, view=None):
    return persid(("storage", G("torch", stype), key, "cpu", numel, view))


def legacy(obj_pkl, storages, magic_pkl=None, proto_pkl=None, sys_pkl=None, keys_pkl=None,
           keys=None, tail=b""):
    """storages: list of (key, numel_header, bytes)."""
    out = magic_pkl if magic_pkl is not None else pkl(MAGIC)
    out += proto_pkl if proto_pkl is not None else pkl(1001)
    out += sys_pkl if sys_pkl is not None else pkl(SYS_INFO)
    out += obj_pkl
    if keys is None:
        keys = sorted(k for k, _, _ in storages)
    out += keys_pkl if keys_pkl is not None else pkl(list(keys))
    for _k, numel, data in storages:
        out += u64(numel) + data
    return out + tail


def legacy_tensor(key=LKEY, numel=2, **kw):
    return tensor(storage=lpid(key, numel=numel), **kw)


# --------------------------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------------------------

ENTRIES = []  # manifest dicts (plus private "_" keys for verification)
FILES = {}


def add(name, cls, data, expect, must=(), any_=(), expect_inspect=None, note="", marker=None,
        pickles=(), audit=(), wellformed=True, is_zip=None, ext="pt"):
    """pickles: the pickle(s) of interest (for --verify / --run-markers).
    audit: globals "module.name" that unpickling the pickles requests (verified statically).
    wellformed: the pickles parse with pickletools (checked by --verify)."""
    fname = f"{name}.{ext}" if ext else name
    assert fname not in FILES, fname
    assert len(data) <= MAX_FILE, (fname, len(data))
    assert expect in ("error", "ok", "ok_or_error")
    FILES[fname] = data
    e = {"file": fname, "class": cls, "expect": expect}
    if expect_inspect is not None:
        e["expect_inspect"] = expect_inspect
    e["must_mention"] = list(must)
    if any_:
        e["must_mention_any"] = [list(g) for g in any_]
    if marker:
        e["marker"] = marker
    e["note"] = note
    e["_pickles"] = list(pickles)
    e["_audit"] = list(audit)
    e["_wellformed"] = wellformed
    e["_zip"] = is_zip
    ENTRIES.append(e)


# ---- code execution ------------------------------------------------------------------------

def gen_code_exec():
    C = "code_exec"

    def zipped(name, obj, audit, must=(), any_=(), marker=True, note="", storages=None,
               proto=2, raw_pickle=None, expect="error"):
        p = raw_pickle if raw_pickle is not None else pkl(obj, proto)
        m = marker_for(name) if marker else None
        add(name, C, torch_zip(p, storages if storages is not None else {}), expect, must, any_,
            note=note, marker=m, pickles=[p], audit=audit, is_zip=True)

    def touch(name):
        return f"touch {marker_for(name)}"

    def pyopen(name):
        return f"open({marker_for(name)!r}, 'w').close()"

    n = "ce_os_system"
    zipped(n, call(G("os", "system"), touch(n)), ["os.system"], ["os.system"],
           note="GLOBAL os.system + REDUCE at the top of data.pkl")

    n = "ce_os_system_in_state_dict"
    zipped(n, ordered_dict([("weight", tensor()), ("evil", call(G("os", "system"), touch(n)))]),
           ["os.system"], ["os.system"], storages=std_storages(),
           note="state_dict: a valid tensor, then os.system(...) as another value")

    n = "ce_os_system_in_dict_key"
    zipped(n, {call(G("os", "system"), touch(n)): tensor()}, ["os.system"], ["os.system"],
           storages=std_storages(), note="payload used as a dict key")

    n = "ce_os_system_in_hooks"
    zipped(n, {"w": tensor(hooks=call(G("os", "system"), touch(n)))}, ["os.system"],
           ["os.system"], storages=std_storages(),
           note="payload as the backward_hooks argument of _rebuild_tensor_v2")

    n = "ce_os_system_in_tensor_args_deep"
    zipped(n, {"w": tensor(size=(2,), extra=({"meta": [call(G("os", "system"), touch(n))]},))},
           ["os.system"], ["os.system"], storages=std_storages(),
           note="payload nested in the metadata argument of _rebuild_tensor_v2")

    n = "ce_os_system_as_storage_type"
    zipped(n, {"w": tensor(storage=pid(stype_global=G("os", "system")))}, ["os.system"],
           ["os.system"], marker=False, storages=std_storages(),
           note="bare GLOBAL os.system used as the storage type of a storage pid")

    n = "ce_os_system_module_pid"
    zipped(n, persid(("module", G("os", "system"), "x.py", "src")), ["os.system"], ["os.system"],
           marker=False, note="('module', os.system, ...) persistent id")

    n = "ce_os_system_memo_indirect"
    p = (b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01" + bytes(G("os", "system")) + b"q\x05"
         + b"0" + b"u" + b"h\x05" + enc((touch(n),)) + b"R.")
    zipped(n, None, ["os.system"], ["os.system"], raw_pickle=p,
           note="os.system memoized (BINPUT) and popped early, later BINGET + REDUCE")

    n = "ce_posix_system"
    zipped(n, call(G("posix", "system"), touch(n)), ["posix.system"], ["posix.system"])

    n = "ce_nt_system"
    zipped(n, call(G("nt", "system"), touch(n)), ["nt.system"], ["nt.system"], marker=False,
           note="Windows spelling; not importable on Linux")

    n = "ce_os_popen"
    zipped(n, call(G("os", "popen"), touch(n)), ["os.popen"], ["os.popen"])

    # real Python pickler output, every protocol
    class Reducer:
        def __init__(self, cmd):
            self.cmd = cmd

        def __reduce__(self):
            return (os.system, (self.cmd,))

    for proto in range(6):
        n = f"ce_posix_system_dumps_p{proto}"
        p = pickle.dumps({"w": Reducer(touch(n))}, protocol=proto)
        zipped(n, None, ["posix.system"], ["posix.system"], raw_pickle=p,
               note=f"pickle.dumps(protocol={proto}) of an object reducing to os.system "
                    f"(Python names it posix.system)")

    n = "ce_os_system_stack_global"
    body = (b"\x8c\x02os\x94\x8c\x06system\x94\x93\x94" + enc(touch(n)) + b"\x94\x85\x94R\x94.")
    p = b"\x80\x04\x95" + u64(len(body)) + body
    zipped(n, None, ["os.system"], ["os.system"], raw_pickle=p,
           note="protocol 4: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL os.system")

    n = "ce_os_system_dotted_stack_global"
    zipped(n, call(SG("os", "path.os.system"), touch(n)), ["os.path.os.system"],
           ["path.os.system"], proto=4,
           note="protocol 4 dotted name: STACK_GLOBAL('os', 'path.os.system') is os.system")

    n = "ce_collections_sys_modules_dotted"
    osmod = call(attr(SG("collections", "_sys.modules"), "get"), "os")
    zipped(n, call(attr(osmod, "system"), touch(n)), ["collections._sys.modules",
                                                       "builtins.getattr"],
           any_=[["_sys.modules", "builtins.getattr"]], proto=4,
           note="STACK_GLOBAL('collections', '_sys.modules') reaches sys.modules; getattr chain")

    n = "ce_torch_serialization_os_dotted"
    zipped(n, call(SG("torch.serialization", "os.system"), touch(n)),
           ["torch.serialization.os.system"], ["os.system"], proto=4, marker=False,
           note="allowed-looking module, dotted name reaching os.system")

    for mod, fn, args, mk in [
        ("subprocess", "Popen", lambda n: (["touch", marker_for(n)],), True),
        ("subprocess", "check_output", lambda n: (["touch", marker_for(n)],), True),
        ("subprocess", "run", lambda n: (["touch", marker_for(n)],), True),
        ("subprocess", "call", lambda n: (["touch", marker_for(n)],), True),
        ("subprocess", "getoutput", lambda n: (touch(n),), True),
        ("builtins", "eval", lambda n: (pyopen(n),), True),
        ("builtins", "exec", lambda n: (pyopen(n),), True),
        ("builtins", "compile", lambda n: ("x = 1", "<s>", "exec"), False),
        ("builtins", "open", lambda n: (marker_for(n), "w"), True),
        ("builtins", "__import__", lambda n: ("os",), False),
        ("builtins", "breakpoint", lambda n: (), False),
        ("runpy", "_run_code", lambda n: (pyopen(n), {}), True),
        ("shutil", "rmtree", lambda n: (marker_for(n) + "_nonexistent_dir/x",), False),
        ("socket", "socket", lambda n: (2, 1), False),
        ("ctypes", "CDLL", lambda n: (marker_for(n) + "_nonexistent.so",), False),
        ("torch", "load", lambda n: (marker_for(n) + ".pt",), False),
        ("torch.jit", "load", lambda n: (marker_for(n) + ".pt",), False),
        ("torch.serialization", "load", lambda n: (marker_for(n) + ".pt",), False),
        ("sys", "exit", lambda n: (0,), False),
        ("pydoc", "pipepager", lambda n: ("x", touch(n)), True),
        ("profile", "run", lambda n: (pyopen(n),), True),
        ("numpy.testing._private.utils", "runstring", lambda n: (pyopen(n), {}), False),
        ("marshal", "loads", lambda n: (b"\xe3",), False),
        ("os", "execv", lambda n: ("/bin/sh", ["sh", "-c", touch(n)]), False),
    ]:
        n = f"ce_{mod.replace('.', '_')}_{fn.strip('_')}"
        g = f"{mod}.{fn}"
        zipped(n, call(G(mod, fn), *args(n)), [g], [g], marker=mk,
               note=f"GLOBAL {g} + REDUCE" + ("" if mk else " (not run by --run-markers)"))

    n = "ce_builtin_py2_eval"
    zipped(n, call(G("__builtin__", "eval"), pyopen(n)), ["__builtin__.eval"],
           any_=[["__builtin__.eval", "builtins.eval"]],
           note="Python 2 module name __builtin__ (pickle maps it to builtins)")

    n = "ce_getattr_import_chain"
    zipped(n, call(attr(call(G("builtins", "__import__"), "os"), "system"), touch(n)),
           ["builtins.getattr", "builtins.__import__"],
           any_=[["builtins.getattr", "builtins.__import__"]],
           note="builtins.getattr(builtins.__import__('os'), 'system')(cmd)")

    n = "ce_sys_modules_chain"
    zipped(n, call(attr(call(attr(G("sys", "modules"), "get"), "os"), "system"), touch(n)),
           ["sys.modules", "builtins.getattr"], any_=[["sys.modules", "builtins.getattr"]],
           note="getattr(sys.modules.get('os'), 'system')(cmd)")

    n = "ce_importlib_chain"
    zipped(n, call(attr(call(G("importlib", "import_module"), "os"), "system"), touch(n)),
           ["importlib.import_module", "builtins.getattr"],
           any_=[["importlib.import_module", "builtins.getattr"]],
           note="getattr(importlib.import_module('os'), 'system')(cmd)")

    n = "ce_pickle_loads_nested"
    inner = pkl(call(G("os", "system"), touch(n)))
    zipped(n, call(G("pickle", "loads"), inner), ["pickle.loads"], ["pickle.loads"],
           note="pickle.loads(BINBYTES nested pickle that calls os.system)")

    n = "ce__pickle_loads_nested_codecs"
    inner = pkl(call(G("os", "system"), touch(n)))
    as_bytes = call(G("_codecs", "encode"), inner.decode("latin-1"), "latin1")
    zipped(n, call(G("_pickle", "loads"), as_bytes), ["_pickle.loads", "_codecs.encode"],
           ["_pickle.loads"], note="_pickle.loads of bytes built torch-style with _codecs.encode")

    n = "ce_copyreg_reconstructor_popen"
    popen = G("subprocess", "Popen")
    zipped(n, call(G("copyreg", "_reconstructor"), popen, popen, ["touch", marker_for(n)]),
           ["copyreg._reconstructor", "subprocess.Popen"], ["subprocess.Popen"],
           note="copyreg._reconstructor(Popen, Popen, argv) runs Popen.__init__(argv)")

    # INST / OBJ
    n = "ce_inst_os_system"
    p = b"(V" + touch(n).encode() + b"\nios\nsystem\n."
    zipped(n, None, ["os.system"], ["os.system"], raw_pickle=p,
           note="protocol 0 INST os.system (MARK args INST)")

    n = "ce_inst_subprocess_check_output"
    p = b"((V" + b"touch" + b"\nV" + marker_for(n).encode() + b"\nlisubprocess\ncheck_output\n."
    zipped(n, None, ["subprocess.check_output"], ["subprocess.check_output"], raw_pickle=p,
           note="protocol 0 INST subprocess.check_output with a LIST argument")

    n = "ce_obj_os_system"
    p = b"\x80\x02(" + bytes(G("os", "system")) + enc(touch(n)) + b"o."
    zipped(n, None, ["os.system"], ["os.system"], raw_pickle=p, note="OBJ: MARK os.system cmd OBJ")

    n = "ce_obj_subprocess_popen"
    p = b"\x80\x02(" + bytes(G("subprocess", "Popen")) + enc(["touch", marker_for(n)]) + b"o."
    zipped(n, None, ["subprocess.Popen"], ["subprocess.Popen"], raw_pickle=p,
           note="OBJ: MARK subprocess.Popen argv OBJ")

    # NEWOBJ / NEWOBJ_EX
    n = "ce_newobj_subprocess_popen"
    p = b"\x80\x02" + bytes(G("subprocess", "Popen")) + enc((["touch", marker_for(n)],)) + b"\x81."
    zipped(n, None, ["subprocess.Popen"], ["subprocess.Popen"], raw_pickle=p, marker=False,
           note="NEWOBJ on subprocess.Popen (Python only runs __new__; still must be refused)")

    n = "ce_newobj_ex_subprocess_popen"
    p = (b"\x80\x04" + bytes(SG("subprocess", "Popen")) + b")"
         + enc({"args": ["touch", marker_for(n)]}) + b"\x92.")
    zipped(n, None, ["subprocess.Popen"], ["subprocess.Popen"], raw_pickle=p, marker=False,
           note="NEWOBJ_EX on subprocess.Popen with kwargs")

    n = "ce_newobj_socket"
    p = b"\x80\x02" + bytes(G("socket", "socket")) + enc((2, 1)) + b"\x81."
    zipped(n, None, ["socket.socket"], ["socket.socket"], raw_pickle=p, marker=False,
           note="NEWOBJ on socket.socket")

    # BUILD
    n = "ce_build_state_payload"
    p = (b"\x80\x02" + bytes(G("__main__", "Evil")) + b")\x81"
         + enc({"x": call(G("os", "system"), touch(n))}) + b"b.")
    zipped(n, None, ["__main__.Evil", "os.system"], ["os.system"], raw_pickle=p,
           note="unknown class via NEWOBJ, BUILD whose state calls os.system")

    n = "ce_build_setstate_global_ref"
    p = (b"\x80\x02" + bytes(G("__main__", "Evil")) + b")\x81"
         + enc(({"__setstate__": G("builtins", "exec")}, {"__reduce__": G("os", "system")}))
         + b"b.")
    zipped(n, None, ["__main__.Evil", "builtins.exec", "os.system"], marker=False,
           any_=[["builtins.exec", "os.system"]], raw_pickle=p,
           note="BUILD with (dict, slotstate) holding bare references to builtins.exec/os.system")

    # EXT1 / EXT2 / EXT4
    for op, arg, nm in [(b"\x82", u8(1), "ext1"), (b"\x83", u16(0x1234), "ext2"),
                        (b"\x84", i32(0x7FFFFFFF), "ext4")]:
        n = f"ce_{nm}"
        p = b"\x80\x02" + op + arg + enc((touch(n),)) + b"R."
        add(n, C, torch_zip(p, {}), "error", note=f"{nm.upper()} copyreg extension code + REDUCE",
            pickles=[p], audit=["!ext"], is_zip=True)

    # TorchScript-like archives (constants.pkl present)
    n = "ce_torchscript_data_pkl"
    p = pkl(call(G("os", "system"), touch(n)))
    add(n, C, rebuild_fixture("seed_mymodule_scripted.ptc", {"data.pkl": p}), "error",
        ["os.system"], marker=marker_for(n), pickles=[p], audit=["os.system"], is_zip=True,
        ext="ptc", note="TorchScript archive (has constants.pkl) whose data.pkl calls os.system")

    n = "ce_torchscript_data_pkl_in_module"
    orig = dict((r, d) for r, d, _ in fixture_records("seed_mymodule_scripted.ptc"))["data.pkl"]
    # insert an attribute 'evil' = os.system(...) into the top module's state dict
    anchor = b"X\x08\x00\x00\x00training"
    assert anchor in orig
    evil = enc("evil") + enc(call(G("os", "system"), touch(n)))
    p2 = orig.replace(anchor, evil + anchor, 1)
    add(n, C, rebuild_fixture("seed_mymodule_scripted.ptc", {"data.pkl": p2}), "error",
        ["os.system"], marker=marker_for(n), pickles=[p2], audit=["os.system"], is_zip=True,
        ext="ptc", note="real scripted module with an extra attribute computed by os.system")

    n = "ce_torchscript_constants_pkl"
    p = pkl((call(G("os", "system"), touch(n)),))
    add(n, C, rebuild_fixture("seed_mymodule_scripted.ptc", {"constants.pkl": p}), "ok_or_error",
        ["os.system"], marker=marker_for(n), pickles=[p], audit=["os.system"], is_zip=True,
        ext="ptc", note="TorchScript constants.pkl calls os.system (if it is parsed it must be "
                        "refused naming os.system; it must never run)")

    n = "ce_torchscript_code_py"
    code = (b"import os\nos.system('touch " + marker_for(n).encode() + b"')\n")
    add(n, C, rebuild_fixture("seed_mymodule_scripted.ptc", {"code/__torch__.py": code}),
        "ok_or_error", marker=marker_for(n), is_zip=True, ext="ptc",
        note="TorchScript code/__torch__.py replaced by Python that would run a command: "
             "ptfile must never execute code/")

    # legacy format carriers
    n = "ce_legacy_object_pickle"
    p = pkl({"w": call(G("os", "system"), touch(n))})
    add(n, C, legacy(p, []), "error", ["os.system"], marker=marker_for(n), pickles=[p],
        audit=["os.system"], note="legacy stream: object pickle calls os.system")

    n = "ce_legacy_sys_info_pickle"
    p = pkl(call(G("os", "system"), touch(n)))
    add(n, C, legacy(pkl({"w": legacy_tensor()}), [(LKEY, 2, F2)], sys_pkl=p), "error",
        ["os.system"], marker=marker_for(n), pickles=[p], audit=["os.system"],
        note="legacy stream: the (ignored) sys_info pickle calls os.system; torch unpickles it")

    n = "ce_legacy_keys_pickle"
    p = pkl(call(G("os", "system"), touch(n)))
    add(n, C, legacy(pkl({"w": legacy_tensor()}), [(LKEY, 2, F2)], keys_pkl=p), "error",
        ["os.system"], marker=marker_for(n), pickles=[p], audit=["os.system"],
        note="legacy stream: the storage-keys pickle calls os.system")

    n = "ce_legacy_magic_pickle"
    p = pkl(call(G("os", "system"), touch(n)))
    add(n, C, legacy(pkl({"w": legacy_tensor()}), [(LKEY, 2, F2)], magic_pkl=p), "error",
        marker=marker_for(n), pickles=[p], audit=["os.system"],
        note="legacy stream: the magic-number pickle calls os.system (refusing as a bad magic "
             "without naming os.system is fine)")

    n = "ce_legacy_module_pid"
    p = pkl({"m": persid(("module", G("os", "system"), "x.py", "src"))})
    add(n, C, legacy(p, []), "error", ["os.system"], pickles=[p], audit=["os.system"],
        note="legacy stream: ('module', os.system, ...) persistent id")


# ---- denial of service ---------------------------------------------------------------------

def memo_bomb(leaf, levels, kind):
    """leaf: fragment; each level: container of two GETs of the previous level."""
    out = bytearray(b"\x80\x02")
    out += enc(leaf)
    idx = 0
    out += b"r" + u32(idx) if kind == "long" else b"q" + u8(idx)
    for i in range(levels):
        if kind == "long":
            g = b"j" + u32(idx)
        else:
            g = b"h" + u8(idx)
        if kind in ("list", "long"):
            out += b"0" + b"](" + g + g + b"e"
        elif kind == "tuple":
            out += b"0" + g + g + b"\x86"
        elif kind == "dict":
            out += b"0" + b"}(" + enc("a") + g + enc("b") + g + b"u"
        idx += 1
        out += b"r" + u32(idx) if kind == "long" else b"q" + u8(idx)
    out += b"."
    return bytes(out)


def big_record_pickle(prefix, unit, count, suffix):
    """A (prefix + unit*count + suffix) pickle, deflated; returns (payload, usize, crc)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    parts = [c.compress(prefix)]
    crc = zlib.crc32(prefix)
    chunk = unit * ((1 << 20) // len(unit))
    left = count * len(unit)
    while left > 0:
        k = min(left, len(chunk))
        parts.append(c.compress(chunk[:k]))
        crc = zlib.crc32(chunk[:k], crc)
        left -= k
    parts.append(c.compress(suffix))
    crc = zlib.crc32(suffix, crc)
    parts.append(c.flush())
    return b"".join(parts), len(prefix) + count * len(unit) + len(suffix), crc


def deflated_pkl_zip(prefix, unit, count, suffix, storages=None):
    payload, usize, crc = big_record_pickle(prefix, unit, count, suffix)
    recs = torch_records(b"", storages or {})
    recs[0] = Rec("archive/data.pkl", b"", method=8, payload=payload, usize=usize, crc=crc)
    return write_zip(recs)


def deflated_ckpt(pkl, storages=None):
    """A torch zip whose data.pkl (any size) is deflated, so that big inputs stay small files."""
    recs = torch_records(b"", storages or {})
    recs[0] = Rec("archive/data.pkl", b"", method=8, payload=deflate(pkl), usize=len(pkl),
                  crc=zlib.crc32(pkl))
    return write_zip(recs)


def gen_amplify():
    """Small files that make a reader copy or compute far more than they hold: one big
    memoized value used many times, and tensors whose views or parts multiply their data."""
    C = "dos"
    K = b"k" * (8 << 20)
    # One 8 MB string as STACK_GLOBAL module and name, 200 times.
    p = b"\x80\x04X" + u32(len(K)) + K + b"q\x00" + b"(" + b"h\x00h\x00\x93" * 200 + b"l."
    add("amp_stack_global_8mb_x200", C, deflated_ckpt(p), "ok_or_error", is_zip=True,
        note="a memoized 8 MB string used as a STACK_GLOBAL name 200 times", wellformed=False)
    # One 8 MB string referenced 2000 times in a list (written out per reference).
    p = b"\x80\x02X" + u32(len(K)) + K + b"q\x00" + b"0(" + b"h\x00" * 2000 + b"l."
    add("amp_string_8mb_x2000", C, deflated_ckpt(p), "ok_or_error", is_zip=True,
        note="a memoized 8 MB string referenced 2000 times")
    # 200 nested dicts, all keyed by the same 8 MB string (key paths).
    p = b"\x80\x02X" + u32(len(K)) + K + b"q\x000" + b"}h\x00" * 200 + b"N" + b"s" * 200 + b"."
    add("amp_nested_bigkey_x200", C, deflated_ckpt(p), "ok_or_error", is_zip=True,
        note="200 nested dicts keyed by one 8 MB string")
    # A storage pid with an 8 MB location, 100 000 references.
    loc = "c" * (8 << 20)
    pidt = enc(("storage", G("torch", "FloatStorage"), "0", loc, 2))
    p = b"\x80\x02" + pidt + b"q\x00" + b"0(" + b"h\x00Q" * 100000 + b"l."
    add("amp_pid_location_8mb", C, deflated_ckpt(p, {"0": F2}), "ok_or_error", is_zip=True,
        note="an 8 MB storage location referenced by 100k persistent ids")
    # A 200k-item dict handed to OrderedDict() 2000 times.
    p = (b"\x80\x02}q\x00(" + b"".join(b"J" + i32(i) + b"N" for i in range(20000)) + b"u0"
         + b"ccollections\nOrderedDict\nq\x010(" + b"h\x01h\x00\x85R" * 2000 + b"l.")
    add("amp_ordereddict_copies", C, deflated_ckpt(p), "ok_or_error", is_zip=True,
        note="OrderedDict(d) of one 20k-item dict, 2000 times")
    # 2000 big integers of 8 KiB, and 200 protocol-0 LONGs of 16000 digits.
    big = pickle.encode_long((1 << (8 * 8190)) - 12345)
    p = b"\x80\x02](" + (b"\x8b" + i32(len(big)) + big) * 2000 + b"e."
    add("amp_bigints_2000", C, deflated_ckpt(p), "ok_or_error", is_zip=True,
        note="2000 distinct 8 KiB integers (decimal conversion is quadratic)")
    p = b"(" + (b"L" + b"9" * 16000 + b"L\n") * 200 + b"l."
    add("amp_decimal_longs_200", C, deflated_ckpt(p), "ok_or_error", is_zip=True,
        note="200 protocol-0 LONGs of 16000 digits")
    # Tuple keys t(i+1) = (t(i), t(i)) 28 deep, then a bad tensor under that key (error path).
    p = b"\x80\x02)"
    for i in range(28):
        p += b"q" + u8(i) + b"0h" + u8(i) + b"h" + u8(i) + b"\x86"
    p += (b"q\x1e0}h\x1e" + bytes(G("torch._utils", "_rebuild_tensor_v2"))
          + b"(K\x01K\x00K\x02\x85K\x01\x85\x89)tRs.")
    add("amp_tuple_key_2p28", C, torch_zip(p, {}), "ok_or_error", is_zip=True,
        note="a tuple key that expands to 2**28 leaves, over an invalid tensor")
    # Stride-0 views that would multiply a one-float storage.
    big0 = tensor(storage=pid(numel=1), size=(1 << 26,), stride=(0,))
    add("amp_stride0_view_x20", C, ckpt([big0] * 20, {"0": F2[:4]}), "ok_or_error", is_zip=True,
        note="one 2**26-element stride-0 view of a single float, listed 20 times")
    add("amp_size1_huge_stride", C,
        ckpt({"w": tensor(storage=pid(numel=4), offset=1, size=(1, 2), stride=(2 ** 63 - 1, 2))},
             {"0": F2 + F2}), "ok_or_error", is_zip=True,
        note="a size-1 dimension with stride i64::MAX (never used, must not overflow)")
    add("amp_numel_overflow", C,
        ckpt({"w": tensor(storage=pid(numel=1), size=(2 ** 62,), stride=(0,))}, {"0": F2[:4]}),
        "ok_or_error", is_zip=True, note="2**62 elements of 4 bytes (byte count overflows)")
    # Sparse tensors with hostile parts.
    def coo(size, idx, vals):
        return Raw(bytes(G("torch._utils", "_rebuild_sparse_tensor"))
                   + enc((call(G("torch.serialization", "_get_layout"), "torch.sparse_coo"),
                          (idx, vals, call(G("torch", "Size"), tuple(size)), False))) + b"R")
    i64 = lambda n: tensor(storage=pid(key="1", stype="LongStorage", numel=n), size=(1, n), stride=(n, 1))
    add("amp_sparse_values_stride0", C,
        ckpt({"s": coo((1,), i64(1), tensor(storage=pid(numel=1), size=(1 << 34,), stride=(0,)))},
             {"0": F2[:4], "1": b"\0" * 8}), "ok_or_error", is_zip=True,
        note="sparse values: a 2**34-element stride-0 view")
    add("amp_sparse_shape_overflow", C,
        ckpt({"s": coo((2 ** 32, 2 ** 32, 2), i64(1), tensor(storage=pid(numel=1), size=(1,), stride=(1,)))},
             {"0": F2[:4], "1": b"\0" * 8}), "ok_or_error", is_zip=True,
        note="sparse shape whose element count overflows")
    add("amp_sparse_dense_1g", C,
        ckpt({"s": coo((1 << 28,), i64(0), tensor(storage=pid(numel=0), size=(0,), stride=(1,)))},
             {"0": b"", "1": b""}), "ok_or_error", is_zip=True,
        note="an empty sparse tensor with a 1 GiB dense equivalent")


def gen_depth():
    """Nesting that goes around a per-path depth limit: call chains without REDUCE, and shared
    (memoized) subtrees stacked on each other."""
    C = "dos"
    n = 100000
    p = (b"\x80\x02" + bytes(G("torch._tensor", "_rebuild_from_type_v2")) + b"q\x01"
         + bytes(G("torch", "Tensor")) + b"q\x02" + b"00" + b"h\x01h\x02" * n + b")"
         + b"\x87" * n + b"q\x03" + b"0" + b"h\x01h\x03R.")
    add("depth_rebuild_from_type_chain", C, deflated_ckpt(p), "error", is_zip=True,
        note="_rebuild_from_type_v2 nested 100000 times through its args tuple")
    k, levels = 990, 250
    p = b"\x80\x02" + bytes(G("torch", "device")) + b"(" + enc("cpu") + b"N" + b")r" + u32(0)
    for i in range(1, k):
        p += b"j" + u32(i - 1) + b"\x85" * levels + b"r" + u32(i)
    p += b"tR" + b"j" + u32(k - 1) + b"\x86."
    add("depth_shared_subtrees_stacked", C, deflated_ckpt(p), "error", is_zip=True,
        note="990 memoized subtrees each 250 deep, stacked: 250k levels of nesting")
    q = tensor(storage=pid(stype="CharStorage", numel=2), size=(2,), stride=(1,), fn="_rebuild_qtensor",
               args=(pid(stype="CharStorage", numel=2), 0, (2,), (1,),
                     (G("torch", "per_tensor_affine"), 0.5, -(2 ** 63)), False, OD))
    add("qtensor_zero_point_min", C, ckpt({"q": q}, {"0": b"\x01\x02"}), "ok_or_error", is_zip=True,
        note="quantized tensor with zero_point -2**63 (dequantization must not overflow)")


def gen_dos():
    C = "dos"

    for kind, levels, note in [("list", 100, "list [x, x] memoized and GET-doubled 100 times"),
                               ("tuple", 100, "tuple (x, x) doubled 100 times (TUPLE2)"),
                               ("dict", 100, "dict {'a': x, 'b': x} doubled 100 times"),
                               ("long", 300, "list doubling with LONG_BINPUT/LONG_BINGET, 300 levels")]:
        n = f"dos_memo_bomb_{kind}_{levels}"
        p = memo_bomb("leaf", levels, kind)
        add(n, C, torch_zip(p, {}), "ok_or_error", note=note + " (2**levels leaves if expanded)",
            pickles=[p], is_zip=True)

    n = "dos_memo_bomb_tensor_64"
    p = memo_bomb(tensor(), 64, "list")
    add(n, C, torch_zip(p, std_storages()), "ok_or_error", pickles=[p], is_zip=True,
        note="2**64 references to one tensor via doubling lists: never materialize per reference")

    n = "dos_memo_bomb_in_state_dict"
    bomb = memo_bomb(tensor(), 80, "dict")[2:-1]
    p = b"\x80\x02" + bytes(OD) + b"(" + enc("weight") + enc(tensor(storage=pid())) + enc("bomb") \
        + bomb + b"u."
    add(n, C, torch_zip(p, std_storages()), "ok_or_error", pickles=[p], is_zip=True,
        note="state_dict with a real tensor and a 2**80-leaf shared dict structure")

    n = "dos_memo_put_index_max"
    p = b"\x80\x02]r\xff\xff\xff\xff."
    add(n, C, torch_zip(p, {}), "ok_or_error", pickles=[p], is_zip=True,
        note="LONG_BINPUT 0xFFFFFFFF: a memo stored as a Vec indexed by the id would allocate 4G slots")

    n = "dos_memo_put_text_huge"
    p = b"]p" + b"9" * 60 + b"\n."
    add(n, C, torch_zip(p, {}), "ok_or_error", pickles=[p], is_zip=True,
        note="protocol-0 PUT with a 60-digit memo index")

    n = "dos_memo_get_index_max"
    p = b"\x80\x02]q\x00j\xff\xff\xff\xff."
    add(n, C, torch_zip(p, {}), "error", pickles=[p], is_zip=True,
        note="LONG_BINGET 0xFFFFFFFF of an undefined memo slot")

    n = "dos_memo_get_before_put"
    p = b"\x80\x02h\x00."
    add(n, C, torch_zip(p, {}), "error", pickles=[p], is_zip=True, note="BINGET with empty memo")

    # deep nesting
    D = 1_000_000
    for n, pre, unit, cnt, suf, note in [
        ("dos_deep_list_1e6", b"\x80\x02", b"]", D, b"a" * (D - 1) + b".",
         "10**6 nested EMPTY_LIST + APPEND (deflated data.pkl)"),
        ("dos_deep_mark_tuple_1e6", b"\x80\x02", b"(", D, b"t" * D + b".",
         "10**6 nested MARK ... TUPLE (deflated)"),
        ("dos_deep_tuple1_1e6", b"\x80\x02)", b"\x85", D, b".",
         "EMPTY_TUPLE wrapped 10**6 times in TUPLE1 (deflated)"),
        ("dos_deep_dict_1e6", b"\x80\x02", b"}K\x00", D, b"}" + b"s" * D + b".",
         "10**6 nested dicts via SETITEM (deflated)"),
        ("dos_deep_set_frozenset_1e5", b"\x80\x04", b"(", 100_000, b")" + b"\x91" * 100_000 + b".",
         "10**5 nested FROZENSET (MARK ... FROZENSET) (deflated)"),
    ]:
        add(n, C, deflated_pkl_zip(pre, unit, cnt, suf), "ok_or_error", note=note, is_zip=True)

    n = "dos_deep_list_28k_stored"
    d = 28_000
    p = b"\x80\x02" + b"]" * d + b"a" * (d - 1) + b"."
    add(n, C, torch_zip(p, {}), "ok_or_error", pickles=[p], is_zip=True,
        note="28000 nested lists, data.pkl stored (no deflate needed)")

    n = "dos_deep_object_1e5"
    d = 100_000
    pre = b"\x80\x02" + bytes(G("__main__", "Foo")) + b"q\x00)\x81}X\x01\x00\x00\x00a"
    unit = b"h\x00)\x81}X\x01\x00\x00\x00a"
    suf = b"N" + b"sb" * (d + 1) + b"."
    add(n, C, deflated_pkl_zip(pre, unit, d, suf), "ok_or_error", is_zip=True,
        note="10**5 nested __main__.Foo objects (NEWOBJ + BUILD {'a': inner})")

    n = "dos_deep_parameter_1e5"
    d = 100_000
    pre = (b"\x80\x02" + bytes(G("torch._utils", "_rebuild_parameter")) + b"q\x000"
           + bytes(G("collections", "OrderedDict")) + b"q\x010")
    suf = bytes(tensor()) + b"\x89h\x01)RtR" * d + b"."
    add(n, C, deflated_pkl_zip(pre, b"h\x00(", d, suf, std_storages()), "ok_or_error",
        is_zip=True, note="_rebuild_parameter nested 10**5 deep around one tensor")

    n = "dos_marks_1e6"
    add(n, C, deflated_pkl_zip(b"\x80\x02", b"(", D, b"N."), "ok_or_error", is_zip=True,
        note="10**6 MARKs never closed, then NONE STOP")

    n = "dos_marks_1e6_stop_on_mark"
    add(n, C, deflated_pkl_zip(b"\x80\x02", b"(", D, b"."), "error", is_zip=True,
        note="10**6 MARKs then STOP with an empty stack")

    # huge declared lengths
    for n, p, note in [
        ("dos_len_binunicode_4g", b"\x80\x02X\xff\xff\xff\xffabc.", "BINUNICODE len 2**32-1"),
        ("dos_len_binunicode8_2p60", b"\x80\x04\x8d" + u64(2 ** 60) + b"abc.",
         "BINUNICODE8 len 2**60"),
        ("dos_len_binunicode8_u64max", b"\x80\x04\x8d" + u64(2 ** 64 - 1) + b"abc.",
         "BINUNICODE8 len 2**64-1 (usize overflow when adding the position)"),
        ("dos_len_binbytes8_2p60", b"\x80\x04\x8e" + u64(2 ** 60) + b"abc.", "BINBYTES8 len 2**60"),
        ("dos_len_binbytes8_2p63", b"\x80\x04\x8e" + u64(2 ** 63) + b"abc.", "BINBYTES8 len 2**63"),
        ("dos_len_bytearray8_2p60", b"\x80\x05\x96" + u64(2 ** 60) + b"abc.",
         "BYTEARRAY8 len 2**60"),
        ("dos_len_binbytes_4g", b"\x80\x03B\xff\xff\xff\xffabc.", "BINBYTES len 2**32-1"),
        ("dos_len_long4_2g", b"\x80\x02\x8b\xff\xff\xff\x7fabc.", "LONG4 len 2**31-1"),
        ("dos_len_long4_negative", b"\x80\x02\x8b\xff\xff\xff\xffabc.", "LONG4 len -1"),
        ("dos_len_binstring_2g", b"\x80\x02T\xff\xff\xff\x7fabc.", "BINSTRING len 2**31-1"),
        ("dos_len_binstring_negative", b"\x80\x02T\xff\xff\xff\xffabc.", "BINSTRING len -1"),
        ("dos_len_short_binbytes_short", b"\x80\x03C\xffab", "SHORT_BINBYTES 255 with 2 bytes left"),
        ("dos_len_long1_short", b"\x80\x02\x8a\xffab", "LONG1 255 with 2 bytes left"),
        ("dos_len_binunicode_in_pid", b"\x80\x02}X\x01\x00\x00\x00w" + bytes(G("torch._utils", "_rebuild_tensor_v2"))
         + b"((X\x07\x00\x00\x00storage" + bytes(G("torch", "FloatStorage")) + b"X\xf0\xff\xff\xff0",
         "BINUNICODE len 2**32-16 as the storage key, file ends"),
    ]:
        add(n, C, torch_zip(p, {}), "error", note=note + " claimed, a few bytes present",
            pickles=[p], wellformed=False, is_zip=True)

    # FRAME lies
    body = enc({"a": 1}) + b"."
    for n, fl, note in [("dos_frame_len_2p60", 2 ** 60, "FRAME claims 2**60 bytes"),
                        ("dos_frame_len_u64max", 2 ** 64 - 1, "FRAME claims 2**64-1 bytes"),
                        ("dos_frame_len_too_short", 3, "FRAME claims 3 bytes, ops span past it"),
                        ("dos_frame_len_zero", 0, "FRAME of length 0 followed by ops")]:
        p = b"\x80\x04\x95" + u64(fl) + body
        add(n, C, torch_zip(p, {}), "ok_or_error", note=note, pickles=[p], wellformed=False,
            is_zip=True)
    n = "dos_frame_repeated"
    p = b"\x80\x04" + (b"\x95" + u64(2 ** 40)) * 3000 + b"N."
    add(n, C, torch_zip(p, {}), "ok_or_error", note="3000 FRAME opcodes each claiming 2**40 bytes",
        pickles=[p], wellformed=False, is_zip=True)

    # operation bombs: a 58 KiB file whose data.pkl inflates to 60 MB of opcodes
    for n, pre, unit, suf, note in [
        ("dos_ops_none_60m", b"\x80\x02", b"N", b".", "60M NONE pushes (stack of 60M values)"),
        ("dos_ops_emptylist_60m", b"\x80\x02", b"]", b".", "60M EMPTY_LIST pushes"),
        ("dos_ops_mark_60m", b"\x80\x02", b"(", b"N.", "60M MARKs (mark stack of 60M)"),
        ("dos_ops_append_30m", b"\x80\x02]", b"Na", b".", "one list with 30M APPENDed NONEs"),
        ("dos_ops_dup_60m", b"\x80\x02]", b"2", b".", "60M DUPs of one list"),
        ("dos_ops_binget_30m", b"\x80\x02]q\x00", b"h\x00", b".", "30M BINGETs of one list"),
        ("dos_ops_push_pop_30m", b"\x80\x02", b"N0", b"N.", "30M NONE+POP pairs (time only)"),
        ("dos_ops_setitem_same_key_20m", b"\x80\x02}", b"K\x00N" + b"s", b".",
         "20M SETITEMs of the same key (time only)"),
    ]:
        count = BIG // len(unit)
        add(n, C, deflated_pkl_zip(pre, unit, count, suf), "ok_or_error", is_zip=True,
            note=note + "; data.pkl deflated, inflates to ~60 MB")

    n = "dos_ops_list_of_lists_3m"
    add(n, C, deflated_pkl_zip(b"\x80\x02]", b"]a", 3_500_000, b"."), "ok_or_error", is_zip=True,
        note="a list of 3.5M distinct empty lists, under the node limit: memory and output size")

    # zip bombs
    n = "dos_zipbomb_datapkl_zeros_60m"
    recs = torch_records(b"", {})
    recs[0] = Rec("archive/data.pkl", b"", method=8, payload=deflate_zeros(BIG), usize=BIG,
                  crc=crc_of_repeated(BIG))
    add(n, C, write_zip(recs), "error", is_zip=True,
        note="data.pkl deflated: 60 MB of zero bytes (opcode 0x00 is invalid)")

    n = "dos_zipbomb_datapkl_declared_2p62"
    recs = torch_records(b"", {})
    good = pkl({"a": 1})
    recs[0] = Rec("archive/data.pkl", good, method=8, declared_usize=2 ** 62)
    add(n, C, write_zip(recs), "ok_or_error", is_zip=True,
        note="data.pkl deflated, central directory (zip64) declares 2**62 uncompressed bytes")

    n = "dos_zipbomb_stored_datapkl_declared_2p62"
    recs = torch_records(b"", {})
    recs[0] = Rec("archive/data.pkl", good, declared_usize=2 ** 62, declared_csize=2 ** 62)
    add(n, C, write_zip(recs), "error", is_zip=True,
        note="data.pkl stored, zip64 sizes declare 2**62 bytes (past the end of the file)")

    n = "dos_zipbomb_storage_declared_1t"
    numel = 2 ** 38  # floats -> 2**40 bytes
    recs = torch_records(pkl({"w": tensor(storage=pid(numel=numel), size=(numel,))}), {})
    recs.insert(4, Rec("archive/data/0", b"", method=8, payload=deflate_zeros(BIG), usize=BIG,
                       crc=crc_of_repeated(BIG), declared_usize=2 ** 40))
    add(n, C, write_zip(recs), "error", is_zip=True,
        note="storage of 2**38 floats; data/0 declares 2**40 bytes, deflate stream gives 60 MB")

    n = "dos_zipbomb_storage_small_declared"
    recs = torch_records(pkl({"w": tensor()}), {})
    recs.insert(4, Rec("archive/data/0", b"", method=8, payload=deflate_zeros(BIG), usize=8,
                       crc=zlib.crc32(b"\0" * 8)))
    add(n, C, write_zip(recs), "ok_or_error", is_zip=True,
        note="data/0 declares 8 bytes, its deflate stream inflates to 60 MB: stop at 8")

    n = "dos_zipbomb_bzip2_1g"
    size = 1 << 30
    comp = bz2.BZ2Compressor(9)
    parts = []
    blk = b"\0" * (1 << 24)
    for _ in range(size // len(blk)):
        parts.append(comp.compress(blk))
    parts.append(comp.flush())
    payload = b"".join(parts)
    numel = size // 4
    recs = torch_records(pkl({"w": tensor(storage=pid(numel=numel), size=(numel,))}), {})
    recs.insert(4, Rec("archive/data/0", b"", method=12, payload=payload, usize=size,
                       crc=crc_of_repeated(size), version_needed=46))
    add(n, C, write_zip(recs), "ok_or_error", is_zip=True,
        note="data/0 is a bzip2 (method 12) record of 1 GiB of zeros in <1 KiB; honest sizes")

    n = "dos_zipbomb_overlapping_storages"
    k = 24
    numel = BIG // 4
    payload = deflate_zeros(BIG)
    crc = crc_of_repeated(BIG)
    obj = ordered_dict([(f"w{i}", tensor(storage=pid(key=str(i), numel=numel), size=(numel,)))
                        for i in range(k)])
    recs = torch_records(pkl(obj), {})
    first = Rec("archive/data/0", b"", method=8, payload=payload, usize=BIG, crc=crc)
    recs.insert(4, first)
    # all other data/<i> central entries point at the local header of data/0
    tmp = write_zip(recs)
    off = tmp.find(b"PK\x03\x04" + struct.pack("<HHH", 20, 0x0808, 8))
    assert off > 0
    extra = [(Rec(f"archive/data/{i}", b"", method=8, payload=payload, usize=BIG, crc=crc), off)
             for i in range(1, k)]
    add(n, C, write_zip(recs, central_extra_recs=extra), "ok_or_error", is_zip=True,
        note=f"{k} central entries data/0..{k - 1} share one deflate stream of 60 MB: "
             f"{k * 60} MB if every storage is materialized")

    # huge numel / shape
    for n, t, note in [
        ("dos_numel_2p62", tensor(storage=pid(numel=2 ** 62), size=(2,)), "storage numel 2**62"),
        ("dos_numel_2p62_shape", tensor(storage=pid(numel=2 ** 62), size=(2 ** 62,)),
         "storage numel 2**62 and shape (2**62,)"),
        ("dos_numel_i64max", tensor(storage=pid(numel=2 ** 63 - 1), size=(2,)),
         "storage numel 2**63-1 (numel*4 overflows)"),
        ("dos_numel_u64max", tensor(storage=pid(numel=2 ** 64 - 1), size=(2,)),
         "storage numel 2**64-1 (LONG1 of 9 bytes)"),
        ("dos_numel_2p200", tensor(storage=pid(numel=2 ** 200), size=(2,)),
         "storage numel 2**200 (LONG1 of 26 bytes)"),
        ("dos_shape_huge_stride0", tensor(storage=pid(numel=2), size=(2 ** 20, 2 ** 20, 2 ** 20),
                                          stride=(0, 0, 0)),
         "legal expand-style view: 2**60 elements, all strides 0, storage of 2 floats"),
        ("dos_shape_2p31_stride0", tensor(storage=pid(numel=2), size=(2 ** 31,), stride=(0,)),
         "legal expand-style view of 2**31 elements (8 GiB if materialized)"),
        ("dos_shape_many_dims", tensor(storage=pid(numel=2), size=(1,) * 10000, stride=(1,) * 10000),
         "10000-dimensional tensor of one element"),
    ]:
        p = pkl({"w": t})
        exp = "ok_or_error" if "stride0" in n or "many_dims" in n else "error"
        add(n, C, torch_zip(p, std_storages()), exp, note=note, pickles=[p], is_zip=True,
            expect_inspect="ok_or_error")

    n = "dos_many_tensors_one_storage"
    cnt = 300
    p = b"\x80\x02}(" + b"".join(enc(f"t{i}") + enc(tensor()) for i in range(cnt)) + b"u."
    add(n, C, torch_zip(p, std_storages()), "ok", note=f"{cnt} tensors viewing one storage",
        pickles=[p], is_zip=True)


# ---- walks over module trees and code files (per-attribute / per-call work must be bounded) ----

def ts_zip(data_pkl, code=None, version=b"3\n", storages=None):
    """A TorchScript-like archive: data.pkl (deflated), constants.pkl, version, storages
    data/<key> and code files (deflated)."""
    recs = [Rec("archive/data.pkl", data_pkl, method=8),
            Rec("archive/constants.pkl", b"\x80\x02)."),
            Rec("archive/version", version)]
    for k, v in (storages or {}).items():
        recs.append(Rec("archive/data/" + k, v))
    for name, text in (code or {}).items():
        recs.append(Rec("archive/" + name, text, method=8))
    return write_zip(recs)


def newobj(cls, state):
    """cls.__new__(cls) then BUILD state (how module objects are pickled)."""
    m, n = cls.rsplit(".", 1)
    return b"c" + m.encode() + b"\n" + n.encode() + b"\n)\x81" + state + b"b"


def gen_dos_walks():
    C = "dos"
    big = 8 << 20

    # A 30 MB method name and 10 000 calls of torch.div in it: each warning used to copy the
    # name (300 GB); names in messages are cut and the warnings are counted past a limit.
    n = "dos_ts_method_name_div_calls"
    code = b"def " + b"a" * (30 << 20) + b"(x):\n" + b"  y = torch.div(x, 2)\n" * 10000
    p = b"\x80\x02" + newobj("__torch__.M", b"}" + enc("training") + b"\x88s") + b"."
    add(n, C, ts_zip(p, {"code/__torch__.py": code}), "ok", is_zip=True, pickles=[p],
        note="TorchScript code file (deflated) with a 30 MB def name and 10000 torch.div calls "
             "(version 3: one warning each)")

    # One child object (300k attributes, 'training' last) referred to by 300k attributes of
    # the root: telling modules apart must not rescan the child for every reference.
    n = "dos_ts_shared_child_many_attrs"
    k = 300_000
    child = newobj("__torch__.C", b"}(" + enc("x") + b"q\x02N" + b"h\x02N" * (k - 1)
                   + enc("training") + b"\x88u")
    p = (b"\x80\x02" + child + b"q\x01" + b"0"
         + newobj("__torch__.M", b"}(" + enc("k") + b"q\x04h\x01" + b"h\x04h\x01" * (k - 1)
                  + enc("training") + b"\x88u") + b".")
    add(n, C, ts_zip(p), "ok", is_zip=True, pickles=[p],
        note="TorchScript data.pkl (deflated): 300k attributes all referring to one module "
             "object with 300k attributes")

    # Nested script modules whose attribute names are one shared 8 MB string: key paths
    # must not grow by 8 MB per level.
    n = "dos_ts_nested_big_keys"
    levels = 60
    body = b"\x80\x02" + enc("k" * big) + b"q\x00" + b"0" + bytes(tensor()) + b"q\x01" + b"0"
    inner = newobj("__torch__.M", b"}(" + enc("training") + b"\x88" + b"h\x00h\x01u")
    for _ in range(levels):
        inner = newobj("__torch__.M", b"}(" + enc("training") + b"\x88" + b"h\x00h\x01"
                       + b"h\x00" + inner + b"u")
    p = body + inner + b"."
    add(n, C, ts_zip(p, storages=std_storages()), "ok_or_error", is_zip=True, pickles=[p],
        note=f"{levels} nested TorchScript modules, each attribute named by one 8 MB string")

    # A whole-module pickle: 200k buffers and a 200k-entry _non_persistent_buffers_set whose
    # only match is last (a list lookup per buffer is quadratic).
    n = "dos_module_nonpersistent_many"
    k = 200_000
    bufs = b"}(" + enc("zz") + b"q\x05K\x01" + b"h\x05K\x01" * (k - 1) + b"u"
    npers = b"](" + enc("a") + b"q\x06" + b"h\x06" * (k - 2) + b"h\x05e"
    state = (b"}(" + enc("_parameters") + b"}" + enc("_modules") + b"}" + enc("_buffers") + bufs
             + enc("_non_persistent_buffers_set") + npers + b"u")
    p = b"\x80\x02" + newobj("mymod.Net", state) + b"."
    add(n, C, write_zip(torch_records(p, {}, pkl_method=8)), "ok", is_zip=True, pickles=[p],
        note="torch.save(model) with 200k buffers, all non-persistent (the match last in a "
             "200k-entry set)")

    # Nested nn.Module objects whose parameter and submodule names are one shared 8 MB string.
    n = "dos_module_nested_big_keys"
    levels = 60
    body = b"\x80\x02" + enc("k" * big) + b"q\x00" + b"0" + bytes(tensor()) + b"q\x01" + b"0"

    def mod(children):
        return newobj("mymod.Block", b"}(" + enc("_parameters") + b"}h\x00h\x01s"
                      + enc("_buffers") + b"}" + enc("_modules") + b"}" + children + b"u")

    inner = mod(b"")
    for _ in range(levels):
        inner = mod(b"h\x00" + inner + b"s")
    p = body + inner + b"."
    add(n, C, write_zip(torch_records(p, std_storages(), pkl_method=8)), "ok_or_error",
        is_zip=True, pickles=[p],
        note=f"torch.save(model): {levels} nested modules, every name one 8 MB string")

    # Legacy stream: one storage persistent id referred to 5000 times (each must cost O(1)),
    # and a location longer than any torch writes.
    n = "lg_pid_shared_5000"
    pt = enc(("storage", G("torch", "FloatStorage"), LKEY, "cpu", 2, None))
    p = b"\x80\x02](" + pt + b"q\x00Q" + b"h\x00Q" * 4999 + b"e."
    add(n, "legacy", legacy(p, [(LKEY, 2, F2)]), "ok", pickles=[p],
        note="legacy stream: a list of 5000 references to one storage persistent id")

    n = "lg_pid_location_long"
    pt = enc(("storage", G("torch", "FloatStorage"), LKEY, "c" * 60000, 2, None))
    p = b"\x80\x02](" + pt + b"q\x00Q" + b"h\x00Q" * 999 + b"e."
    add(n, "legacy", legacy(p, [(LKEY, 2, F2)]), "error", ["location"], pickles=[p],
        note="legacy stream: a storage location of 60000 bytes, referred to 1000 times")


# ---- lying tensors -------------------------------------------------------------------------

def gen_lying():
    C = "lying_tensor"

    def lie(name, obj, expect="error", storages=None, note="", expect_inspect="ok_or_error",
            must=(), proto=2, wellformed=True):
        p = pkl(obj, proto)
        add(name, C, torch_zip(p, std_storages() if storages is None else storages), expect,
            must, expect_inspect=expect_inspect, note=note, pickles=[p], is_zip=True,
            wellformed=wellformed)

    T = lambda **kw: {"w": tensor(**kw)}  # noqa: E731

    lie("lt_offset_past_end", T(offset=5), note="storage_offset 5 on a 2-element storage")
    lie("lt_view_past_end", T(offset=1, size=(2,)), note="offset 1 + size 2 > 2 elements")
    lie("lt_stride_past_end", T(size=(2,), stride=(5,)), note="stride 5 reaches element 5")
    lie("lt_2d_past_end", T(size=(2, 2), stride=(2, 1)), note="2x2 view of 2 elements")
    lie("lt_negative_size", T(size=(-1,)), note="size -1")
    lie("lt_negative_size_2d", T(size=(-2, -1), stride=(1, 1)), note="sizes (-2, -1)")
    lie("lt_negative_stride", T(offset=1, size=(2,), stride=(-1,)),
        note="stride -1 (torch refuses negative strides)")
    lie("lt_negative_offset", T(offset=-1), note="storage_offset -1")
    lie("lt_offset_i64min", T(offset=-(2 ** 63)), note="storage_offset -2**63")
    lie("lt_size_product_overflow", T(size=(2 ** 32, 2 ** 32), stride=(0, 0)),
        expect="ok_or_error", note="sizes 2**32 x 2**32: element count 2**64 overflows i64")
    lie("lt_size_product_overflow_strided", T(size=(2 ** 32, 2 ** 32), stride=(2 ** 32, 1)),
        note="sizes 2**32 x 2**32 with contiguous strides")
    lie("lt_size_i64max", T(size=(2 ** 63 - 1, 2), stride=(1, 1)), note="size 2**63-1")
    lie("lt_size_bigint", T(size=(2 ** 70,), stride=(1,)), note="size 2**70 (LONG1 9 bytes)")
    lie("lt_stride_overflow", T(size=(2, 2), stride=(2 ** 63 - 1, 1)),
        note="(size-1)*stride overflows i64")
    lie("lt_stride_offset_overflow", T(offset=2 ** 62, size=(2,), stride=(2 ** 62,)),
        note="offset + stride overflow i64")
    lie("lt_empty_with_huge_stride", T(size=(0,), stride=(2 ** 63 - 1,)), expect="ok_or_error",
        note="zero elements, absurd stride: legal in torch")
    lie("lt_empty_dim_huge_other", T(size=(0, 2 ** 62), stride=(1, 1)), expect="ok_or_error",
        note="shape (0, 2**62): zero elements")
    lie("lt_size_stride_len_mismatch", T(size=(2, 1), stride=(1,)),
        note="2 sizes, 1 stride")
    lie("lt_missing_record", T(storage=pid(key="1")), note="pid key '1', no data/1 record")
    lie("lt_missing_all_records", T(), storages={}, note="no data/ records at all")
    lie("lt_record_short", T(storage=pid(numel=4), size=(4,)),
        note="numel 4 (16 bytes) but data/0 holds 8")
    lie("lt_record_empty", T(), storages={"0": b""}, note="data/0 empty, numel 2")
    lie("lt_record_long", T(storage=pid(numel=1), size=(1,)), expect="ok_or_error",
        note="numel 1 but data/0 holds 8 bytes")
    lie("lt_record_odd_bytes", T(storage=pid(numel=2)), storages={"0": b"\0" * 7},
        note="7 bytes for two floats")
    lie("lt_numel_negative", T(storage=pid(numel=-1)), note="numel -1")
    lie("lt_numel_float", T(storage=pid(numel=2.5)), note="numel 2.5")
    lie("lt_numel_str", T(storage=pid(numel="2")), note="numel '2'")
    lie("lt_numel_none", T(storage=pid(numel=None)), note="numel None")
    lie("lt_storage_type_unknown", T(storage=pid(stype="NotAStorage")),
        note="torch.NotAStorage as storage type")
    lie("lt_storage_type_misspelled", T(storage=pid(stype="FloatStorag")),
        note="torch.FloatStorag")
    lie("lt_storage_type_dtype", T(storage=pid(stype_global=G("torch", "float32"))),
        note="a dtype global where the storage class belongs")
    lie("lt_storage_type_str", T(storage=pid(stype_global="FloatStorage")),
        note="a string where the storage class belongs")
    lie("lt_storage_type_none", T(storage=pid(stype_global=None)), note="None as storage type")
    lie("lt_key_dotdot", T(storage=pid(key="../../../../etc/passwd")),
        note="storage key ../../../../etc/passwd (no such record; never read from disk)")
    lie("lt_key_abs", T(storage=pid(key="/etc/passwd")), note="storage key /etc/passwd")
    lie("lt_key_nul", T(storage=pid(key="0\x00")), note="storage key with NUL")
    lie("lt_key_empty", T(storage=pid(key="")), note="empty storage key")
    lie("lt_key_int", T(storage=pid(key=0)), expect="ok_or_error",
        note="int key 0 (torch formats f'data/{key}' and loads it)")
    lie("lt_key_none", T(storage=pid(key=None)), note="key None")
    lie("lt_key_tuple", T(storage=pid(key=("0",))), note="key ('0',)")
    lie("lt_key_float", T(storage=pid(key=0.5)), note="key 0.5")
    lie("lt_key_dotdot_existing", T(storage=pid(key="../x")), expect="ok_or_error",
        storages={"../x": F2}, note="key '../x' whose record archive/data/../x exists verbatim")
    lie("lt_pid_arity_4", T(storage=persid(("storage", G("torch", "FloatStorage"), "0", "cpu"))),
        note="4-tuple pid")
    lie("lt_pid_arity_6", T(storage=persid(("storage", G("torch", "FloatStorage"), "0", "cpu", 2,
                                            None))),
        expect="ok_or_error", note="6-tuple pid (legacy view_metadata slot in a zip file)")
    lie("lt_pid_arity_7", T(storage=persid(("storage", G("torch", "FloatStorage"), "0", "cpu", 2,
                                            None, None))), note="7-tuple pid")
    lie("lt_pid_arity_1", T(storage=persid(("storage",))), note="1-tuple pid")
    lie("lt_pid_empty", T(storage=persid(())), note="empty pid")
    lie("lt_pid_str", T(storage=persid("storage")), note="pid is a string")
    lie("lt_pid_int", T(storage=persid(0)), note="pid is an int in a zip file")
    lie("lt_pid_list", T(storage=persid(["storage", G("torch", "FloatStorage"), "0", "cpu", 2])),
        expect="ok_or_error", note="pid is a list")
    lie("lt_pid_tag_wrong", T(storage=persid(("Storage", G("torch", "FloatStorage"), "0", "cpu", 2))),
        note="pid tag 'Storage'")
    lie("lt_pid_text_persid", {"w": Raw(b"P0\n")}, note="protocol-0 PERSID '0'")
    lie("lt_v2_no_args", {"w": tensor(args=())}, note="_rebuild_tensor_v2()")
    lie("lt_v2_3_args", {"w": tensor(args=(pid(), 0, (2,)))}, note="_rebuild_tensor_v2 3 args")
    lie("lt_v2_9_args", {"w": tensor(args=(pid(), 0, (2,), (1,), False, OD, {}, 1, 2))},
        note="_rebuild_tensor_v2 9 args")
    lie("lt_v2_args_not_tuple", {"w": Raw(bytes(G("torch._utils", "_rebuild_tensor_v2"))
                                          + enc([pid(), 0, (2,), (1,), False, OD]) + b"R")},
        note="REDUCE with a list instead of an argument tuple")
    lie("lt_v2_size_int", T(size=2), note="size given as an int")
    lie("lt_v2_size_list", T(size=[2], stride=[1]), expect="ok_or_error", note="size as list")
    lie("lt_v2_size_str", T(size=("2",)), note="size ('2',)")
    lie("lt_v2_size_float", T(size=(2.0,)), expect="ok_or_error", note="size (2.0,)")
    lie("lt_v2_size_none", T(size=None), note="size None")
    lie("lt_v2_offset_str", T(offset="0"), note="storage_offset '0'")
    lie("lt_v2_storage_int", {"w": tensor(storage=7)}, note="storage argument is the int 7")
    lie("lt_v2_storage_none", {"w": tensor(storage=None, args=(None, 0, (2,), (1,), False, OD))},
        note="storage argument None")
    lie("lt_v2_storage_is_tensor", {"w": tensor(storage=tensor())},
        note="storage argument is a tensor")
    lie("lt_v2_requires_grad_int", T(rg=1), expect="ok_or_error", note="requires_grad 1")
    lie("lt_v2_hooks_list", T(hooks=[]), expect="ok_or_error", note="backward_hooks []")
    lie("lt_v2_metadata_not_dict", T(extra=(5,)), expect="ok_or_error", note="metadata 5")
    lie("lt_v3_dtype_unknown", {"w": tensor(fn="_rebuild_tensor_v3",
                                            storage=pid(stype_global=G("torch.storage", "UntypedStorage"), numel=8),
                                            extra=(G("torch", "notadtype"),))},
        note="_rebuild_tensor_v3 with torch.notadtype")
    lie("lt_v3_dtype_str", {"w": tensor(fn="_rebuild_tensor_v3",
                                        storage=pid(stype_global=G("torch.storage", "UntypedStorage"), numel=8),
                                        extra=("float32",))},
        note="_rebuild_tensor_v3 with dtype given as a string")
    lie("lt_v3_missing_dtype", {"w": tensor(fn="_rebuild_tensor_v3",
                                            storage=pid(stype_global=G("torch.storage", "UntypedStorage"), numel=8))},
        note="_rebuild_tensor_v3 without its dtype argument")
    lie("lt_v3_untyped_bytes_odd", {"w": tensor(fn="_rebuild_tensor_v3",
                                                storage=pid(stype_global=G("torch.storage", "UntypedStorage"), numel=7),
                                                size=(2,), extra=(G("torch", "float32"),))},
        storages={"0": b"\0" * 7}, note="untyped storage of 7 bytes viewed as 2 float32")
    lie("lt_shared_key_dtype_conflict",
        {"a": tensor(storage=pid(stype="FloatStorage", numel=2)),
         "b": tensor(storage=pid(stype="LongStorage", numel=1), size=(1,))},
        expect="ok_or_error", note="key '0' claimed as FloatStorage and as LongStorage")
    lie("lt_shared_key_numel_conflict",
        {"a": tensor(storage=pid(numel=2)),
         "b": tensor(storage=pid(numel=1000), size=(1000,))},
        note="key '0' with numel 2, then numel 1000 and a 1000-element view")
    lie("lt_parameter_of_str", {"w": call(G("torch._utils", "_rebuild_parameter"), "x", True, OD)},
        expect="ok_or_error", note="_rebuild_parameter wrapping a string")
    lie("lt_qtensor_bad_qparams",
        {"q": tensor(fn="_rebuild_qtensor", storage=pid(stype="QInt8Storage", numel=8),
                     args=(pid(stype="QInt8Storage", numel=8), 0, (8,), (1,),
                           (G("torch", "per_tensor_affine"),), False, OD))},
        note="_rebuild_qtensor with a 1-tuple quantizer_params")
    lie("lt_qtensor_unknown_scheme",
        {"q": tensor(fn="_rebuild_qtensor",
                     args=(pid(stype="QInt8Storage", numel=8), 0, (8,), (1,),
                           (G("torch", "per_evil_affine"), 0.1, 0), False, OD))},
        note="_rebuild_qtensor with an unknown qscheme")
    lie("lt_sparse_bad_layout",
        {"s": call(G("torch._utils", "_rebuild_sparse_tensor"), G("torch", "strided"),
                   (tensor(), tensor(), (2,)))},
        expect="ok_or_error", note="_rebuild_sparse_tensor with a bogus layout/data")
    lie("lt_meta_negative_size",
        {"m": call(G("torch._utils", "_rebuild_meta_tensor_no_storage"), G("torch", "float32"),
                   (-5,), (1,), False)},
        storages={}, note="meta tensor with size -5")
    lie("lt_meta_huge", {"m": call(G("torch._utils", "_rebuild_meta_tensor_no_storage"),
                                   G("torch", "float32"), (2 ** 40, 2 ** 40), (2 ** 40, 1), False)},
        storages={}, expect="ok_or_error",
        note="meta tensor of 2**80 elements: no data, must not be allocated")
    p = pkl(T())
    add("lt_byteorder_bad", C, torch_zip(p, std_storages(), byteorder=b"middle"), "error",
        expect_inspect="ok_or_error", note="byteorder record 'middle'", pickles=[p], is_zip=True)


# ---- zip damage / not a checkpoint --------------------------------------------------------

def find_eocd(b):
    return b.rfind(b"PK\x05\x06")


def gen_zip_damage():
    C = "zip_damage"
    base = read_fixture("seed_tensor_dict.pt")
    L = len(base)
    # truncations
    cuts = sorted(set([1, 2, 4, 10, 30, 64, L // 2, L - 1, L - 22, L - 23, L - 42, L - 98,
                       L - 99]))
    step = L / 21
    cuts = sorted(set(cuts + [int(step * i) for i in range(1, 21)]))
    for c in cuts:
        add(f"zd_truncate_{c:05d}", C, base[:c], "error", is_zip=False,
            note=f"seed_tensor_dict.pt cut to its first {c} of {L} bytes")
    n = "zd_truncate_appended_garbage"
    add(n, C, base + b"\0" * 100, "ok_or_error", note="valid file followed by 100 zero bytes")

    # bit flips
    seed = read_fixture("seed_tensor.pt")
    rnd = random.Random(0x5EED)
    for i in range(30):
        pos = rnd.randrange(len(seed))
        bit = rnd.randrange(8)
        b = bytearray(seed)
        b[pos] ^= 1 << bit
        add(f"zd_bitflip_{i:02d}_{pos:04d}_{bit}", C, bytes(b), "ok_or_error",
            note=f"seed_tensor.pt with bit {bit} of byte {pos} flipped")
    # targeted flips in the pickle (random bytes into data.pkl)
    for i in range(8):
        b = bytearray(seed)
        pos = 64 + rnd.randrange(150)
        b[pos] = rnd.randrange(256)
        add(f"zd_pickle_byte_{i}_{pos:03d}", C, bytes(b), "ok_or_error",
            note=f"seed_tensor.pt with data.pkl byte at file offset {pos} replaced")

    std_pkl = pkl({"w": tensor()})

    def z(name, expect, note, **kw):
        add(name, C, torch_zip(std_pkl, std_storages(), **kw), expect, note=note, is_zip=True)

    z("zd_cd_offset_past_end", "error", "classic and zip64 end records put the central directory "
                                        "at 0xFFFFFFF0 / 2**40",
      eocd={"cd_offset": 0xFFFFFFF0}, zip64={"cd_offset": 2 ** 40})
    z("zd_cd_offset_classic_past_end", "error", "classic EOCD central directory offset past the end",
      eocd={"cd_offset": 0x7FFFFFF0}, zip64={"cd_offset": 0x7FFFFFF0})
    z("zd_cd_offset_zero", "error", "central directory offset 0 (points at a local header)",
      eocd={"cd_offset": 0}, zip64={"cd_offset": 0})
    z("zd_cd_size_huge", "ok_or_error", "central directory size 2**62 / 0xFFFFFFF0",
      eocd={"cd_size": 0xFFFFFFF0}, zip64={"cd_size": 2 ** 62})
    z("zd_entries_huge_zip64", "error", "zip64 end record declares 2**60 entries",
      eocd={"entries": 0xFFFF}, zip64={"entries": 2 ** 60})
    z("zd_entries_65535", "ok_or_error", "both end records declare 65535 entries (7 exist)",
      eocd={"entries": 0xFFFF}, zip64={"entries": 0xFFFF})
    z("zd_entries_too_few", "ok_or_error", "end records declare 3 entries (7 exist)",
      eocd={"entries": 3}, zip64={"entries": 3})
    z("zd_zip64_locator_past_end", "ok_or_error", "zip64 locator points past the end",
      zip64={"loc_offset": 2 ** 50})
    z("zd_eocd_comment_garbage", "ok_or_error", "garbage after the end record",
      tail=b"PK\x05\x06" + b"\xff" * 40)

    def recs_mut(fn):
        recs = torch_records(std_pkl, std_storages())
        fn(recs)
        return recs

    def zr(name, expect, note, fn, **kw):
        add(name, C, write_zip(recs_mut(fn), **kw), expect, note=note, is_zip=True)

    zr("zd_local_offset_past_end", "error", "data.pkl's central entry points past the end",
       lambda r: setattr(r[0], "central_offset", 0x7FFFFFF0))
    zr("zd_local_offset_zip64_huge", "error", "data.pkl's zip64 local header offset 2**62",
       lambda r: setattr(r[0], "central_offset", 2 ** 62))
    zr("zd_local_offset_into_cd", "error", "data/0's local header offset points at another record",
       lambda r: setattr(r[4], "central_offset", 3))
    b = bytearray(torch_zip(std_pkl, std_storages()))
    struct.pack_into("<H", b, 28, 0xFFFF)
    add("zd_local_extra_len_huge", C, bytes(b), "error", is_zip=True,
        note="data.pkl local header extra length 0xFFFF (data offset past the end)")
    b = bytearray(torch_zip(std_pkl, std_storages()))
    struct.pack_into("<H", b, 26, 0xFFFF)
    add("zd_local_name_len_huge", C, bytes(b), "error", is_zip=True,
        note="data.pkl local header name length 0xFFFF")
    zr("zd_local_sig_bad", "ok_or_error", "data.pkl local header signature PK\\x03\\x05",
       lambda r: setattr(r[0], "local_sig", 0x05034B50))
    zr("zd_local_name_differs", "ok_or_error", "local header name of data.pkl is 'archive/evil.pkl'",
       lambda r: setattr(r[0], "local_name", "archive/evil.pkl"))
    zr("zd_csize_huge_stored", "error", "stored data.pkl declares csize=usize=0xFFFFFFF0",
       lambda r: (setattr(r[0], "declared_csize", 0xFFFFFFF0),
                  setattr(r[0], "declared_usize", 0xFFFFFFF0)))
    zr("zd_stored_usize_ne_csize", "ok_or_error", "stored data/0 with usize 4 != csize 8",
       lambda r: setattr(r[4], "declared_usize", 4))
    zr("zd_crc_wrong", "ok_or_error", "data/0 central CRC wrong (not 0)",
       lambda r: setattr(r[4], "declared_crc", 0xDEADBEEF))
    zr("zd_crc_zero", "ok", "every CRC 0 (torch's compute_crc32=False)",
       lambda r: [setattr(x, "declared_crc", 0) or setattr(x, "crc", 0) for x in r])
    zr("zd_method_unknown", "error", "data.pkl compression method 99",
       lambda r: (setattr(r[0], "method", 99)))
    zr("zd_method_deflate_garbage", "error", "data.pkl method 8 but payload is not deflate",
       lambda r: (setattr(r[0], "method", 8), setattr(r[0], "payload", b"\xff" * 40)))
    zr("zd_method_lzma", "ok_or_error", "data/0 compression method 14 (LZMA) with garbage",
       lambda r: setattr(r[4], "method", 14))
    zr("zd_encrypted_flag", "ok_or_error", "data.pkl flagged encrypted (bit 0)",
       lambda r: setattr(r[0], "flags", 0x0809))
    zr("zd_deflated_all", "ok_or_error", "all records deflated, as Python zipfile would write "
                                         "them (torch loads it; refusing compressed storages is a choice)",
       lambda r: [(setattr(x, "method", 8), setattr(x, "payload", deflate(x.data))) for x in r])

    # duplicates
    evil = pkl(call(G("os", "system"), f"touch {marker_for('zd_duplicate')}"))
    for n, first, second in [("zd_duplicate_datapkl_benign_first", std_pkl, evil),
                             ("zd_duplicate_datapkl_evil_first", evil, std_pkl)]:
        recs = torch_records(first, std_storages())
        recs.insert(1, Rec("archive/data.pkl", second))
        add(n, C, write_zip(recs), "ok_or_error", is_zip=True, marker=marker_for("zd_duplicate"),
            pickles=[evil], audit=["os.system"],
            note="two archive/data.pkl entries, one calls os.system (never run it)")
    recs = torch_records(std_pkl, std_storages())
    recs.insert(5, Rec("archive/data/0", b"\0" * 4))
    add("zd_duplicate_storage_record", C, write_zip(recs), "ok_or_error", is_zip=True,
        note="two archive/data/0 entries of 8 and 4 bytes")

    # names
    for n, extra_name, expect, note in [
        ("zd_entry_dotdot", "archive/../../tmp/ptfile_pwned_zipslip", "ok_or_error",
         "extra entry archive/../../tmp/ptfile_pwned_zipslip (nothing may be written)"),
        ("zd_entry_absolute", "/tmp/ptfile_pwned_abs", "ok_or_error", "extra entry /tmp/..."),
        ("zd_entry_backslash", "archive\\..\\..\\evil", "ok_or_error", "extra entry with backslashes"),
        ("zd_entry_nul", "archive/data/0\x00.txt", "ok_or_error", "extra entry name with NUL"),
        ("zd_entry_other_prefix", "other/data.pkl", "ok_or_error",
         "extra entry under a different top folder (torch refuses)"),
    ]:
        recs = torch_records(std_pkl, std_storages())
        recs.append(Rec(extra_name, b"evil"))
        add(n, C, write_zip(recs), expect, note=note, is_zip=True)
    recs = torch_records(std_pkl, std_storages())
    recs.insert(0, Rec("../evil/x", b"x"))
    add("zd_first_entry_dotdot", C, write_zip(recs), "ok_or_error", is_zip=True,
        note="first entry '../evil/x' (the prefix is taken from the first entry)")
    recs = torch_records(std_pkl, std_storages(), prefix="/tmp/ptfile_pwned_abs_prefix")
    add("zd_prefix_absolute", C, write_zip(recs), "ok_or_error", is_zip=True,
        note="every entry under '/tmp/ptfile_pwned_abs_prefix/'")
    recs = torch_records(std_pkl, std_storages(), prefix="")
    add("zd_no_prefix", C, write_zip(recs), "ok_or_error", is_zip=True,
        note="records at the root without a prefix folder (torch: 'not in a subdirectory')")
    recs = torch_records(std_pkl, std_storages(), prefix="a/b/c")
    add("zd_nested_prefix", C, write_zip(recs), "ok_or_error", is_zip=True,
        note="prefix 'a/b/c' (the reader takes 'a')")
    recs = torch_records(std_pkl, std_storages(), prefix="\u00e9\u202e\u0000x")
    add("zd_prefix_unicode_control", C, write_zip(recs), "ok_or_error", is_zip=True,
        note="prefix with an RTL override and a NUL")
    z("zd_missing_version", "ok_or_error", "no version record (torch refuses)", version=None)
    z("zd_version_99", "ok_or_error", "version '99\\n'", version=b"99\n")
    z("zd_version_garbage", "ok_or_error", "version 'abc'", version=b"abc")
    z("zd_version_huge", "ok_or_error", "version 2**70 in decimal", version=str(2 ** 70).encode())
    add("zd_missing_datapkl", C, write_zip(torch_records(std_pkl, std_storages(),
                                                          drop=("data.pkl",))),
        "error", is_zip=True, note="no data.pkl record")
    add("zd_datapkl_empty", C, torch_zip(b"", std_storages()), "error", is_zip=True,
        note="data.pkl of 0 bytes")
    add("zd_datapkl_no_stop", C, torch_zip(std_pkl[:-1], std_storages()), "error", is_zip=True,
        note="data.pkl without its STOP")
    add("zd_cd76_first_entry", C, torch_zip(std_pkl, std_storages(), prefix="abcdefghijklmnopqrstu"),
        "ok", is_zip=True,
        note="valid: first central entry exactly 76 bytes (zip crate 9.1-9.8 bug trigger)")
    add("zd_many_entries", C, torch_zip(std_pkl, std_storages(),
                                        extra=[Rec(f"archive/extra/{i}", b"") for i in range(400)]),
        "ok", is_zip=True, note="valid checkpoint plus 400 empty extra records")

    C = "not_a_checkpoint"
    add("nc_empty", C, b"", "error", note="empty file")
    add("nc_text", C, b"this is not a checkpoint\nsecond line\n", "error", note="text file")
    add("nc_pk_magic_only", C, b"PK\x03\x04", "error", note="just the 4-byte zip magic")
    add("nc_pytorch1", C, b"PYTORCH1" + b"\0" * 56, "error", note="preview-release magic")
    for i, size in enumerate([1, 64, 4096, 60000]):
        r = random.Random(1000 + i)
        add(f"nc_random_{size}", C, bytes(r.randrange(256) for _ in range(size)), "error",
            note=f"{size} seeded random bytes")
    add("nc_png", C, b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + b"\0" * 30, "error",
        note="PNG header")
    add("nc_elf", C, b"\x7fELF\x02\x01\x01" + b"\0" * 57, "error", note="ELF header")
    add("nc_gzip", C, b"\x1f\x8b\x08\x00" + b"\0" * 20, "error", note="gzip header")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("hello.txt", (1980, 1, 1, 0, 0, 0)), "hello")
    add("nc_zip_plain", C, buf.getvalue(), "error", is_zip=True, note="valid zip, one text file")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("proj/readme.txt", (1980, 1, 1, 0, 0, 0)), "hello")
        zf.writestr(zipfile.ZipInfo("proj/version", (1980, 1, 1, 0, 0, 0)), "3\n")
    add("nc_zip_prefix_no_pickle", C, buf.getvalue(), "error", is_zip=True,
        note="valid zip with prefix/ and version but no data.pkl")
    add("nc_zip_empty", C, b"PK\x05\x06" + b"\0" * 18, "error", note="empty zip (EOCD only)")
    add("nc_pickle_only", C, pkl({"a": 1}), "error",
        note="a bare pickle: neither zip nor legacy (first pickle is not the magic number)")
    add("nc_safetensors_like", C, u64(2) + b"{}" + b"\0" * 8, "error", note="safetensors-like header")
    # tar
    tar = bytearray(512)
    tar[0:8] = b"storages"
    tar[100:108] = b"0000644\0"
    tar[124:136] = b"00000000010\0"
    tar[257:263] = b"ustar\0"
    tar[263:265] = b"00"
    tar[148:156] = b" " * 8
    chk = sum(tar)
    tar[148:156] = ("%06o\0 " % chk).encode()
    add("nc_tar_storages_garbage", "legacy", bytes(tar) + b"\xff" * 8 + b"\0" * 504 + b"\0" * 1024,
        "error", note="ustar archive whose 'storages' member is 8 garbage bytes (legacy tar format)")
    tar2 = bytearray(tar)
    tar2[0:100] = b"\0" * 100
    tar2[0:32] = b"../../tmp/ptfile_pwned_tarslip\0\0"[:32]
    tar2[148:156] = b" " * 8
    chk = sum(tar2)
    tar2[148:156] = ("%06o\0 " % chk).encode()
    add("nc_tar_dotdot_member", "legacy", bytes(tar2) + b"\xff" * 8 + b"\0" * 504 + b"\0" * 1024,
        "error", note="ustar archive with member ../../tmp/ptfile_pwned_tarslip (nothing written)")


# ---- legacy --------------------------------------------------------------------------------

def gen_legacy():
    C = "legacy"
    obj = pkl({"w": legacy_tensor()})
    st = [(LKEY, 2, F2)]

    def L(name, data, expect="error", note="", expect_inspect=None):
        add(name, C, data, expect, expect_inspect=expect_inspect, note=note)

    L("lg_valid_baseline", legacy(obj, st), "ok", note="valid legacy file (sanity baseline)")
    L("lg_wrong_magic", legacy(obj, st, magic_pkl=pkl(MAGIC + 1)), note="magic number + 1")
    L("lg_magic_str", legacy(obj, st, magic_pkl=pkl("0x1950a86a20f9469cfc6c")), note="magic as str")
    L("lg_wrong_protocol", legacy(obj, st, proto_pkl=pkl(1000)), note="protocol version 1000")
    L("lg_protocol_huge", legacy(obj, st, proto_pkl=pkl(2 ** 80)), note="protocol version 2**80")
    L("lg_protocol_str", legacy(obj, st, proto_pkl=pkl("1001")), note="protocol version '1001'")
    L("lg_ends_after_protocol", pkl(MAGIC) + pkl(1001), note="nothing after the protocol pickle")
    L("lg_sys_info_garbage", legacy(obj, st, sys_pkl=b"\x80\x02\xff."),
      note="sys_info pickle with an invalid opcode")
    L("lg_sys_info_not_dict", legacy(obj, st, sys_pkl=pkl([1, 2, 3])), "ok_or_error",
      note="sys_info is a list (torch ignores sys_info)")
    L("lg_object_truncated", legacy(obj, st)[:len(pkl(MAGIC) + pkl(1001) + pkl(SYS_INFO)) + 40],
      note="object pickle cut in the middle")
    L("lg_keys_missing", pkl(MAGIC) + pkl(1001) + pkl(SYS_INFO) + obj,
      expect_inspect="ok_or_error", note="file ends after the object pickle")
    full = legacy(obj, st)
    L("lg_storage_truncated", full[:-3], expect_inspect="ok_or_error",
      note="last storage's data cut by 3 bytes")
    L("lg_storage_header_truncated", full[:-10], expect_inspect="ok_or_error",
      note="storage numel header cut")
    L("lg_storage_numel_huge", legacy(obj, [(LKEY, 2 ** 63, F2)]), expect_inspect="ok_or_error",
      note="storage header numel 2**63")
    L("lg_storage_numel_u64max", legacy(obj, [(LKEY, 2 ** 64 - 1, F2)]),
      expect_inspect="ok_or_error", note="storage header numel 2**64-1 (x4 overflows)")
    L("lg_storage_numel_mismatch", legacy(obj, [(LKEY, 1, F2[:4])]), expect_inspect="ok_or_error",
      note="header numel 1 (4 bytes) but the pid says 2 ('storage has wrong byte size')")
    L("lg_pid_numel_huge", legacy(pkl({"w": legacy_tensor(numel=2 ** 62)}), st),
      expect_inspect="ok_or_error", note="pid numel 2**62, data header 2")
    L("lg_key_not_in_keys", legacy(obj, st, keys=["12345"]), expect_inspect="ok_or_error",
      note="keys pickle lists a key the object never uses; the used one has no data")
    L("lg_extra_key", legacy(obj, [(LKEY, 2, F2), ("777", 1, F2[:4])]), "ok_or_error",
      note="an extra storage nobody references")
    L("lg_keys_not_list", legacy(obj, st, keys_pkl=pkl({LKEY: 1})), expect_inspect="ok_or_error",
      note="keys pickle is a dict")
    L("lg_keys_int_items", legacy(obj, st, keys_pkl=pkl([int(LKEY)])), "ok_or_error",
      note="keys pickle holds ints")
    L("lg_keys_duplicate", legacy(obj, [(LKEY, 2, F2), (LKEY, 2, F2)], keys=[LKEY, LKEY]),
      "ok_or_error", note="the same key listed twice, two data blocks")
    L("lg_keys_many_no_data", legacy(obj, [], keys=[str(i) for i in range(6000)]),
      expect_inspect="ok_or_error", note="6000 keys but no storage data")
    L("lg_view_past_root", legacy(pkl({"w": tensor(storage=lpid(view=("v0", 100, 2)))}), st),
      expect_inspect="ok_or_error", note="view_metadata offset 100 on a 2-element root")
    L("lg_view_negative", legacy(pkl({"w": tensor(storage=lpid(view=("v0", -1, 2)))}), st),
      expect_inspect="ok_or_error", note="view_metadata offset -1")
    L("lg_view_bad_arity", legacy(pkl({"w": tensor(storage=lpid(view=("v0",)))}), st),
      expect_inspect="ok_or_error", note="view_metadata 1-tuple")
    L("lg_tensor_past_storage", legacy(pkl({"w": legacy_tensor(offset=1)}), st),
      expect_inspect="ok_or_error", note="tensor offset 1 size 2 on 2 elements")
    L("lg_trailing_garbage", legacy(obj, st, tail=b"\xde\xad" * 10), "ok_or_error",
      note="20 garbage bytes after the last storage")
    fx = read_fixture("seed_views_legacy.pt")
    for c in (3, 15, 21, len(fx) // 2, len(fx) - 40, len(fx) - 1):
        L(f"lg_fixture_truncate_{c:04d}", fx[:c], expect_inspect=None if c < 380 else "ok_or_error",
          note=f"seed_views_legacy.pt cut to {c} of {len(fx)} bytes")


# ---- malformed pickles --------------------------------------------------------------------

def gen_pickle_malformed():
    C = "pickle_malformed"
    items = [
        ("pm_unknown_opcode", b"\x80\x02\xff.", "error", "opcode 0xff"),
        ("pm_opcode_zero", b"\x80\x02\x00.", "error", "opcode 0x00"),
        ("pm_no_stop", b"\x80\x02}", "error", "no STOP"),
        ("pm_truncated_global", b"\x80\x02ctorch._utils\n_rebuild", "error", "GLOBAL without its newline"),
        ("pm_global_no_newline_ever", b"\x80\x02c" + b"a" * 50000, "error", "GLOBAL that never ends"),
        ("pm_reduce_empty_stack", b"\x80\x02R.", "error", "REDUCE on empty stack"),
        ("pm_tuple_without_mark", b"\x80\x02K\x01t.", "error", "TUPLE with no MARK"),
        ("pm_append_to_int", b"\x80\x02K\x01K\x02a.", "error", "APPEND to an int"),
        ("pm_appends_to_dict", b"\x80\x02}(K\x01e.", "error", "APPENDS to a dict"),
        ("pm_setitem_on_list", b"\x80\x02]K\x01K\x02s.", "error", "SETITEM on a list"),
        ("pm_setitems_odd", b"\x80\x02}(K\x01u.", "error", "SETITEMS with an odd item count"),
        ("pm_build_on_int", b"\x80\x02K\x01}b.", "ok_or_error", "BUILD on an int"),
        ("pm_pop_mark_without_mark", b"\x80\x02N1.", "error", "POP_MARK without MARK"),
        ("pm_pop_empty", b"\x80\x020N.", "error", "POP on empty stack"),
        ("pm_dup_empty", b"\x80\x022.", "error", "DUP on empty stack"),
        ("pm_stop_empty", b"\x80\x02.", "error", "STOP with empty stack"),
        ("pm_stop_inside_mark", b"\x80\x02(N.", "ok_or_error", "STOP with an open MARK"),
        ("pm_proto_6", b"\x80\x06N.", "ok_or_error", "PROTO 6"),
        ("pm_proto_255", b"\x80\xffN.", "ok_or_error", "PROTO 255"),
        ("pm_proto_twice", b"\x80\x02\x80\x02N.", "ok_or_error", "PROTO twice"),
        ("pm_trailing_after_stop", b"\x80\x02N.\xff\xff", "ok_or_error", "garbage after STOP"),
        ("pm_two_pickles", b"\x80\x02N.\x80\x02N.", "ok_or_error", "two pickles in data.pkl"),
        ("pm_int_text_garbage", b"Iabc\n.", "error", "INT 'abc'"),
        ("pm_int_text_huge", b"I" + b"9" * 5000 + b"\n.", "ok_or_error", "INT of 5000 digits"),
        ("pm_long_text_huge", b"L" + b"9" * 50000 + b"L\n.", "ok_or_error", "LONG of 50000 digits"),
        ("pm_float_text_garbage", b"Fxyz\n.", "error", "FLOAT 'xyz'"),
        ("pm_float_text_nan", b"Fnan\n.", "ok", "FLOAT nan"),
        ("pm_get_text_garbage", b"]p0\ngzz\n.", "error", "GET 'zz'"),
        ("pm_get_text_negative", b"]p0\ng-1\n.", "error", "GET -1"),
        ("pm_string_unquoted", b"Sabc\n.", "error", "STRING without quotes"),
        ("pm_string_bad_escape", b"S'\\x4'\n.", "error", "STRING with a bad escape"),
        ("pm_unicode_bad_escape", b"V\\u12\n.", "error", "UNICODE with a bad escape"),
        ("pm_binunicode_invalid_utf8", b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", "ok_or_error",
         "BINUNICODE with invalid UTF-8"),
        ("pm_binunicode_surrogate", b"\x80\x02X\x03\x00\x00\x00\xed\xa0\x80.", "ok_or_error",
         "BINUNICODE with a lone surrogate (Python accepts via surrogatepass)"),
        ("pm_short_binstring_latin1", b"\x80\x02U\x02\xff\xfe.", "ok_or_error",
         "Python 2 str with bytes that are not UTF-8"),
        ("pm_stack_global_non_str", b"\x80\x04K\x01K\x02\x93.", "error", "STACK_GLOBAL of ints"),
        ("pm_stack_global_empty", b"\x80\x04\x93.", "error", "STACK_GLOBAL on empty stack"),
        ("pm_newobj_args_not_tuple", b"\x80\x02" + bytes(G("__main__", "Foo")) + b"K\x01\x81.",
         "error", "NEWOBJ with an int as args"),
        ("pm_newobj_ex_bad_kwargs", b"\x80\x04" + bytes(G("__main__", "Foo")) + b")K\x01\x92.",
         "ok_or_error", "NEWOBJ_EX with an int as kwargs (Python refuses; an opaque object is fine)"),
        ("pm_next_buffer", b"\x80\x05\x97.", "error", "NEXT_BUFFER without out-of-band buffers"),
        ("pm_readonly_buffer_non_buffer", b"\x80\x05K\x01\x98.", "error", "READONLY_BUFFER on an int"),
        ("pm_additems_to_list", b"\x80\x04](K\x01\x90.", "error", "ADDITEMS to a list"),
        ("pm_memoize_empty", b"\x80\x04\x94.", "error", "MEMOIZE on empty stack"),
        ("pm_binpersid_empty", b"\x80\x02Q.", "error", "BINPERSID on empty stack"),
        ("pm_persid_text_zip", b"P0\n.", "error", "protocol-0 PERSID in a zip"),
        ("pm_mark_then_setitems_nondict", b"\x80\x02K\x01(K\x02K\x03u.", "error", "SETITEMS on an int"),
        ("pm_inst_no_newline", b"(ios\nsys", "error", "INST truncated"),
        ("pm_obj_without_class", b"\x80\x02(o.", "error", "OBJ with nothing after MARK"),
    ]
    for n, p, expect, note in items:
        add(n, C, torch_zip(p, {}), expect, note=note, pickles=[p], wellformed=False, is_zip=True)

    # Keys Python cannot hash: its unpickler raises TypeError at the SETITEM(S)/DICT opcode
    # that stores one (here always the last before STOP), so torch.load refuses the file.
    unhashable = [
        ("pm_dict_list_key", b"\x80\x02}]K\x01s.", "list", "dict with a list key"),
        ("pm_dict_dict_key", b"\x80\x02}}K\x01s.", "dict", "dict with a dict key"),
        ("pm_dict_set_key", b"\x80\x04}\x8fK\x01s.", "set", "dict with a set key"),
        ("pm_dict_tuple_list_key", b"\x80\x02}K\x01]\x86K\x02s.", "list",
         "dict with the key (1, []): a tuple holding a list"),
        ("pm_dict_list_keys_setitems", b"\x80\x02}(K\x01K\x02]K\x03u.", "list",
         "SETITEMS whose second key is a list"),
        ("pm_ordered_dict_list_key", b"\x80\x02ccollections\nOrderedDict\n)R(]K\x01u.", "list",
         "OrderedDict (a state_dict's type) with a list key"),
    ]
    for n, p, t, note in unhashable:
        add(n, C, torch_zip(p, {}), "error",
            must=[f"unhashable type: '{t}'", f"pickle byte offset {len(p) - 2}"],
            note=note, pickles=[p], wellformed=True, is_zip=True)


# ---- message injection ---------------------------------------------------------------------

def gen_message():
    C = "message"
    cases = [
        ("msg_key_newline", {"w": tensor(storage=pid(key="0\nSECOND LINE: fake"))},
         "storage key with a newline, no such record"),
        ("msg_key_carriage_return", {"w": tensor(storage=pid(key="0\rOVERWRITTEN"))},
         "storage key with a carriage return"),
        ("msg_key_ansi", {"w": tensor(storage=pid(key="\x1b[2J\x1b[31mRED"))},
         "storage key with ANSI escapes"),
        ("msg_key_40k", {"w": tensor(storage=pid(key="k" * 40000))},
         "storage key of 40000 characters (the error line must stay short)"),
        ("msg_storage_type_newline",
         {"w": tensor(storage=pid(stype_global=SG("torch", "Float\nStorage")))},
         "storage class name with a newline"),
    ]
    for n, obj, note in cases:
        p = pkl(obj, 4)
        add(n, C, torch_zip(p, std_storages()), "error", note=note, pickles=[p], is_zip=True)
    n = "msg_global_newline"
    p = pkl(call(SG("os", "system\nSECOND LINE"), "x"), 4)
    add(n, C, torch_zip(p, {}), "error", note="STACK_GLOBAL os.'system\\nSECOND LINE' + REDUCE",
        pickles=[p], is_zip=True)
    n = "msg_global_40k"
    p = pkl(call(SG("os", "system" + "x" * 40000), "x"), 4)
    add(n, C, torch_zip(p, {}), "error", note="STACK_GLOBAL in module os with a 40000-char name",
        pickles=[p], is_zip=True)
    n = "msg_location_newline"
    p = pkl({"w": tensor(storage=pid(loc="cpu\nSECOND LINE"))})
    add(n, C, torch_zip(p, std_storages()), "ok_or_error", note="location 'cpu\\nSECOND LINE'",
        pickles=[p], is_zip=True)
    n = "msg_location_40k"
    p = pkl({"w": tensor(storage=pid(loc="cuda:" + "9" * 40000))})
    add(n, C, torch_zip(p, std_storages()), "ok_or_error", note="location 'cuda:999...9' (40000 digits)",
        pickles=[p], is_zip=True)


# ---- odd but valid -------------------------------------------------------------------------

def gen_odd_valid():
    C = "odd_valid"

    def ok(name, p, expect="ok", storages=None, note=""):
        add(name, C, torch_zip(p, storages or {}), expect, note=note, pickles=[p], is_zip=True)

    ok("ov_cyclic_list", b"\x80\x02]q\x00h\x00a.", note="l = []; l.append(l)")
    ok("ov_cyclic_list_deep", pickle.dumps(_cyc3(), 2),
       note="a -> b -> c -> a list cycle")
    ok("ov_cyclic_dict", b"\x80\x02}q\x00X\x04\x00\x00\x00selfq\x01h\x00s.",
       note="d = {}; d['self'] = d")
    ok("ov_cyclic_ordereddict", b"\x80\x02" + bytes(OD) + b"q\x00X\x04\x00\x00\x00selfh\x00s.",
       note="OrderedDict containing itself")
    ok("ov_cyclic_via_tuple", pickle.dumps(_cyc_tuple(), 2),
       note="l = []; t = (l,); l.append(t) (Python's POP_MARK/GET recursive-tuple encoding)")
    ok("ov_cyclic_with_tensor", b"\x80\x02}q\x00(X\x01\x00\x00\x00w" + bytes(tensor())
       + b"X\x04\x00\x00\x00selfh\x00u.", storages=std_storages(),
       note="state dict holding a tensor and itself")
    ok("ov_main_foo_newobj_build", b"\x80\x02" + bytes(G("__main__", "Foo")) + b")\x81"
       + enc({"a": 1, "b": "x", "w": tensor()}) + b"b.", storages=std_storages(),
       note="__main__.Foo via NEWOBJ + BUILD with plain state (opaque object)")
    ok("ov_main_foo_newobj_slots", b"\x80\x02" + bytes(G("__main__", "Foo")) + b")\x81"
       + enc((None, {"a": 1})) + b"b.", note="__main__.Foo BUILD with (None, slotstate)")
    ok("ov_argparse_namespace_p2", pickle.dumps({"args": _ns()}, 2),
       note="argparse.Namespace as pickled by Python, protocol 2 (NEWOBJ + BUILD)")
    ok("ov_argparse_namespace_p0", pickle.dumps({"args": _ns()}, 0), expect="ok_or_error",
       note="argparse.Namespace, protocol 0 (copyreg._reconstructor)")
    ok("ov_shared_exponential", memo_bomb(tensor(), 40, "dict"), expect="ok_or_error",
       storages=std_storages(),
       note="shared structure with 2**40 paths to one tensor: print with references or refuse")
    ok("ov_shared_exponential_small", memo_bomb("leaf", 12, "list"), expect="ok",
       note="2**12 leaves through sharing: small enough to print either way")
    ok("ov_unicode_keys", enc_dict_pkl({"\x1b[31mred": 1, "tab\there": 2, "nl\nkey": 3,
                                        "\u202eevil": 4, "nul\x00": 5, "\U0001F600": 6}),
       note="dict keys with ANSI, tab, newline, RTL override, NUL, emoji")
    ok("ov_long_key", enc_dict_pkl({"k" * 40000: 1}), note="a 40000-character key")
    ok("ov_big_ints", enc_dict_pkl({"a": 2 ** 2000, "b": -(2 ** 2000), "c": 2 ** 63, "d": -(2 ** 63)}),
       note="LONG1/LONG4 integers far outside i64")
    ok("ov_floats", enc_dict_pkl({"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"),
                                  "nz": -0.0, "tiny": 5e-324}), note="NaN, inf, -0.0, subnormal")
    ok("ov_empty_dict", pkl({}), note="empty dict")
    ok("ov_none", pkl(None), note="None")
    ok("ov_empty_storage", pkl({"w": tensor(storage=pid(numel=0), size=(0,))}),
       storages={"0": b""}, note="zero-element tensor on an empty storage")
    ok("ov_int_key_dict", enc_dict_pkl({1: 2, (1, 2): 3, None: 4, 1.5: 5, b"by": 6}),
       note="non-string dict keys")
    ok("ov_set_frozenset", b"\x80\x04\x8f(K\x01K\x02\x90(K\x03\x91\x86.", expect="ok",
       note="protocol 4 set + frozenset")
    ok("ov_bytes_bytearray", b"\x80\x05C\x03abc\x96" + u64(3) + b"def\x86.", note="bytes, bytearray8")
    ok("ov_protocol0_dict", pickle.dumps({"a": [1, 2.5, "x", None, True]}, 0), note="protocol 0 text pickle")
    ok("ov_protocol5_framed", pickle.dumps({"a": list(range(100)), "s": "x" * 300}, 5),
       note="protocol 5 with FRAMEs")
    add("ov_deflated_storage_60mb", C, _deflated_storage_zip(), "ok_or_error", is_zip=True,
        note="valid: data/0 deflated, 60 MB of zeros (15M floats); torch loads deflated records, "
             "refusing compressed storages is a choice")


def _cyc3():
    a, b, c = [], [], []
    a.append(b)
    b.append(c)
    c.append(a)
    return a


def _cyc_tuple():
    lst = []
    t = (lst,)
    lst.append(t)
    return t


def _ns():
    import argparse
    return argparse.Namespace(lr=0.1, epochs=3, name="run")


def enc_dict_pkl(d):
    return pkl(d)


def _deflated_storage_zip():
    numel = BIG // 4
    recs = torch_records(pkl({"w": tensor(storage=pid(numel=numel), size=(numel,))}), {})
    recs.insert(4, Rec("archive/data/0", b"", method=8, payload=deflate_zeros(BIG), usize=BIG,
                       crc=crc_of_repeated(BIG)))
    return write_zip(recs)


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

def generate():
    ENTRIES.clear()
    FILES.clear()
    gen_code_exec()
    gen_dos()
    gen_dos_walks()
    gen_amplify()
    gen_depth()
    gen_lying()
    gen_zip_damage()
    gen_legacy()
    gen_pickle_malformed()
    gen_message()
    gen_odd_valid()
    total = sum(len(v) for v in FILES.values())
    assert total <= MAX_TOTAL, total
    manifest = [{k: v for k, v in e.items() if not k.startswith("_")} for e in ENTRIES]
    return manifest


def manifest_text(manifest):
    return json.dumps(manifest, indent=1, ensure_ascii=True) + "\n"


def write_all(manifest):
    os.makedirs(CORPUS, exist_ok=True)
    for old in os.listdir(CORPUS):
        if old not in FILES:
            os.remove(os.path.join(CORPUS, old))
    for name, data in FILES.items():
        path = os.path.join(CORPUS, name)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    continue
        except FileNotFoundError:
            pass
        with open(path, "wb") as f:
            f.write(data)
    with open(MANIFEST, "w") as f:
        f.write(manifest_text(manifest))


def check(manifest):
    bad = []
    on_disk = set(os.listdir(CORPUS)) if os.path.isdir(CORPUS) else set()
    for name, data in FILES.items():
        p = os.path.join(CORPUS, name)
        if not os.path.exists(p):
            bad.append(f"missing {name}")
            continue
        with open(p, "rb") as f:
            if f.read() != data:
                bad.append(f"differs {name}")
    for extra in on_disk - set(FILES):
        bad.append(f"stale {extra}")
    with open(MANIFEST) as f:
        if f.read() != manifest_text(manifest):
            bad.append("manifest.json differs")
    return bad


def _stub_class(fullname, log):
    """A class standing in for any global: constructing or calling it only records."""

    class Stub:
        def __new__(cls, *a, **k):
            log.append(("call", fullname))
            return object.__new__(cls)

        def __init__(self, *a, **k):
            pass

        def __call__(self, *a, **k):
            return Stub()

        def __setstate__(self, state):
            pass

    Stub.__qualname__ = Stub.__name__ = fullname
    return Stub


def audit_pickle(data):
    """Unpickle with every global replaced by a recording stub. Nothing real is resolved."""
    log = []

    class Auditor(pickle._Unpickler):  # pure-Python unpickler: easier to intercept
        def find_class(self, module, name):
            log.append(("global", f"{module}.{name}"))
            if (module, name) == ("collections", "OrderedDict"):
                import collections
                return collections.OrderedDict  # harmless, and SETITEMS needs a real mapping
            return _stub_class(f"{module}.{name}", log)

        def persistent_load(self, pid):
            return ("pid", repr(pid)[:60])

    err = None
    try:
        Auditor(io.BytesIO(data)).load()
    except Exception as e:  # noqa: BLE001
        err = e
    return [g for k, g in log if k == "global"], err


def verify():
    manifest = generate()
    problems = []
    n_zip = n_pkl = n_audit = n_load = 0
    for e in ENTRIES:
        data = FILES[e["file"]]
        if e["_zip"]:
            try:
                zf = zipfile.ZipFile(io.BytesIO(data))
                names = zf.namelist()
                n_zip += 1
                if e["file"].startswith(("ce_", "dos_memo", "lt_", "ov_")) and \
                        not any(x.endswith("data.pkl") for x in names):
                    problems.append(f"{e['file']}: no data.pkl in {names[:5]}")
            except Exception as ex:  # noqa: BLE001
                if e["class"] not in ("zip_damage",):
                    problems.append(f"{e['file']}: zipfile cannot open it: {ex}")
        for p in e["_pickles"]:
            if e["_wellformed"]:
                try:
                    for _ in pickletools.genops(p):
                        pass
                    n_pkl += 1
                except Exception as ex:  # noqa: BLE001
                    problems.append(f"{e['file']}: pickletools: {ex}")
        if e["_audit"]:
            globs, err = [], None
            for p in e["_pickles"]:
                g, er = audit_pickle(p)
                globs += g
                err = err or er
            if e["_audit"] == ["!ext"]:
                if not (isinstance(err, ValueError) and "extension" in str(err)):
                    problems.append(f"{e['file']}: expected unregistered-extension error, got {err!r}")
            else:
                for want in e["_audit"]:
                    if want not in globs:
                        problems.append(f"{e['file']}: audit did not reach {want}: {globs} {err!r}")
            n_audit += 1
        # pickles that must be well-formed Python pickles (the hostility is semantic)
        if e["_zip"] and (e["class"] in ("odd_valid", "lying_tensor", "message")
                          or e["file"].startswith(("dos_memo_bomb", "dos_deep", "dos_many",
                                                   "dos_numel", "dos_shape", "dos_marks_1e6.",
                                                   "dos_memo_put"))):
            zf = zipfile.ZipFile(io.BytesIO(data))
            name = [x for x in zf.namelist() if x.endswith("/data.pkl")][0]
            _globs, err = audit_pickle(zf.read(name))
            n_load += 1
            if err is not None:
                problems.append(f"{e['file']}: Python cannot unpickle data.pkl: {err!r}")
    # sizes
    big = [(k, len(v)) for k, v in FILES.items() if len(v) > MAX_FILE]
    if big:
        problems.append(f"files too large: {big}")
    print(f"{len(FILES)} files, {sum(map(len, FILES.values()))} bytes; zips opened: {n_zip}; "
          f"pickles parsed: {n_pkl}; payloads audited: {n_audit}; data.pkl unpickled: {n_load}")
    return problems


SANDBOX = r"""
import io, pickle, sys
class Stub:
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return Stub()
    def __setstate__(self, s): pass
class U(pickle._Unpickler):
    def find_class(self, module, name):
        if module.split('.')[0] in ('torch', '__torch__', '__main__'):
            return Stub
        return super().find_class(module, name)
    def persistent_load(self, pid):
        return None
data = sys.stdin.buffer.read()
try:
    U(io.BytesIO(data)).load()
except Exception as e:
    print('raised', type(e).__name__, e, file=sys.stderr)
"""


def run_markers():
    """Execute, for real, only the payloads whose sole effect is creating their marker file."""
    generate()
    problems = []
    ran = 0
    for e in ENTRIES:
        m = e.get("marker")
        if not m or not e["_pickles"] or e["class"] != "code_exec":
            continue
        if not os.path.basename(m).startswith(MARKER_PREFIX):
            problems.append(f"{e['file']}: suspicious marker {m}")
            continue
        if os.path.exists(m):
            os.remove(m)
        with tempfile.TemporaryDirectory() as td:
            for p in e["_pickles"]:
                subprocess.run([sys.executable, "-c", SANDBOX], input=p, cwd=td, timeout=30,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.time() + 3
            while not os.path.exists(m) and time.time() < deadline:
                time.sleep(0.05)
        ran += 1
        if os.path.exists(m):
            os.remove(m)
            print(f"ok   {e['file']}: payload creates {m}")
        else:
            problems.append(f"{e['file']}: payload did NOT create {m}")
    print(f"{ran} marker payloads executed in the sandbox")
    return problems


def main():
    args = sys.argv[1:]
    if "--verify" in args:
        probs = verify()
        for p in probs:
            print("PROBLEM", p)
        sys.exit(1 if probs else 0)
    if "--run-markers" in args:
        probs = run_markers()
        for p in probs:
            print("PROBLEM", p)
        sys.exit(1 if probs else 0)
    manifest = generate()
    if "--check" in args:
        bad = check(manifest)
        for b in bad:
            print(b)
        sys.exit(1 if bad else 0)
    write_all(manifest)
    by = {}
    for e in manifest:
        by[e["class"]] = by.get(e["class"], 0) + 1
    print(f"wrote {len(FILES)} files ({sum(map(len, FILES.values()))} bytes) to {CORPUS}")
    for k, v in by.items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
