#!/usr/bin/env python3
"""Time ptfile's writer against torch.save on the same state dict, in one run.

usage: save_vs_torch.py [--mib 512] [--dir DIR] [--bin PATH]

Builds 8 bfloat16 tensors (MIB MiB in all) in torch and times torch.save (best of 3, and
torch.save followed by fsync), then runs `save_state_dict --bench MIB` (the example, built
with `cargo build --release --example save_state_dict`), which builds the same tensors from
Rust buffers and times ptfile's save (without and with its fsync). Checks that torch loads
ptfile's file to the same tensors and prints the ratios.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_state_dict(mib):
    per = mib * (1 << 20) // 2 // 8
    sd = {}
    for k in range(8):
        bits = ((torch.arange(per, dtype=torch.int64) + k) & 0x7F7F).to(torch.int16)
        sd[f"layers.{k}.weight"] = bits.view(torch.bfloat16).reshape(per // 1024, 1024)
    return sd


def best_of(n, f):
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--dir", default=None)
    p.add_argument("--bin", default=None)
    a = p.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = a.bin or os.path.join(target, "release", "examples", "save_state_dict")
    d = a.dir or tempfile.mkdtemp(prefix="ptfile-bench-", dir=os.path.join(ROOT, "target") if os.path.isdir(os.path.join(ROOT, "target")) else None)
    sd = bench_state_dict(a.mib)
    tpath = os.path.join(d, "torch.pt")
    ppath = os.path.join(d, "ptfile.pt")

    def torch_save():
        if os.path.exists(tpath):
            os.remove(tpath)
        torch.save(sd, tpath)

    def torch_save_fsync():
        torch_save()
        fd = os.open(tpath, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    t_torch = best_of(3, torch_save)
    t_torch_sync = best_of(3, torch_save_fsync)
    out = subprocess.run([exe, "--bench", str(a.mib), ppath], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    back = torch.load(ppath, weights_only=True, mmap=True)
    assert list(back) == list(sd), "keys differ"
    for k in sd:
        assert torch.equal(back[k].view(torch.int16), sd[k].view(torch.int16)), k
    gb = a.mib / 1024
    print(f"state dict: 8 bfloat16 tensors, {a.mib} MiB")
    print(f"torch.save           {t_torch:.3f} s  ({gb / t_torch:.2f} GiB/s)")
    print(f"torch.save + fsync   {t_torch_sync:.3f} s  ({gb / t_torch_sync:.2f} GiB/s)")
    print(f"ptfile (no sync)     {r['seconds']:.3f} s  ({gb / r['seconds']:.2f} GiB/s)")
    print(f"ptfile (fsync)       {r['seconds_sync']:.3f} s  ({gb / r['seconds_sync']:.2f} GiB/s)")
    print(f"speed ratio ptfile/torch: {t_torch / r['seconds']:.2f}x without fsync, "
          f"{t_torch_sync / r['seconds_sync']:.2f}x with fsync")
    for f in (tpath, ppath):
        os.remove(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
