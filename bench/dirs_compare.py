#!/usr/bin/env python3
"""Time model directories against single files, and DCP consolidation against torch's.

usage: bench/dirs_compare.py [--gib 1.0] [--ptfile target/release/ptfile]
                             [--dir /tmp/ptfile-bench-dirs] [--runs 3] [--json]

Makes (once; reused when present) the llama-like bf16 state dict of bench/compare.py as one
torch.save file, as 4 Hugging Face `.bin` shards (huggingface_hub.save_torch_state_dict) and as a
torch.distributed.checkpoint directory (dcp.save), then times on this machine, in this run,
warm page cache, best of --runs:

  load_file     the whole `ptfile load FILE` process
  load_shards   the whole `ptfile load DIR` process on the 4 shards (the same tensors)
  dcp_torch     torch's dcp_to_torch_save(DIR, OUT) in a fresh process (the call alone)
  dcp_ptfile    the whole `ptfile convert DIR OUT` process

Both writers flush to disk: ptfile's convert fsyncs by default, and the torch side is followed
by os.fsync of its output inside the timed region. Prints GB/s and the ratios the issue sets
(shards no slower than one file; DCP -> .pt at least 3x faster than torch's).
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from compare import make_state_dict  # noqa: E402

DCP_TORCH = r"""
import os, sys, time, warnings
warnings.filterwarnings("ignore")
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
t = time.perf_counter()
dcp_to_torch_save(sys.argv[1], sys.argv[2])
fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd)
print(time.perf_counter() - t)
"""

MAKE_DIRS = r"""
import sys, warnings, torch
warnings.filterwarnings("ignore")
import torch.distributed.checkpoint as dcp
from huggingface_hub import save_torch_state_dict
sd = torch.load(sys.argv[1], weights_only=True)
total = sum(t.numel() * t.element_size() for t in sd.values())
import os; os.makedirs(sys.argv[2], exist_ok=True)
save_torch_state_dict(sd, sys.argv[2], max_shard_size=total // 4 + (1 << 20), safe_serialization=False)
dcp.save(sd, checkpoint_id=sys.argv[3])
"""


def wall(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def best(f, runs):
    return min(f() for _ in range(runs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--ptfile", default=os.path.join(ROOT, "target/release/ptfile"))
    ap.add_argument("--dir", default="/tmp/ptfile-bench-dirs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    f = os.path.join(a.dir, f"llama-{a.gib}g.pt")
    shards = os.path.join(a.dir, f"llama-{a.gib}g-shards")
    dcpd = os.path.join(a.dir, f"llama-{a.gib}g-dcp")
    if not os.path.exists(f):
        make_state_dict(f, a.gib)
    if not os.path.exists(dcpd):
        subprocess.run([sys.executable, "-c", MAKE_DIRS, f, shards, dcpd], check=True)
    size = os.path.getsize(f)
    n_shards = len([x for x in os.listdir(shards) if x.endswith(".bin")])
    # Warm the page cache.
    for p in [f] + [os.path.join(shards, x) for x in os.listdir(shards)] + [
        os.path.join(dcpd, x) for x in os.listdir(dcpd)
    ]:
        with open(p, "rb") as fh:
            while fh.read(64 << 20):
                pass
    out = os.path.join(a.dir, "out.pt")
    r = {}
    r["load_file"] = best(lambda: wall([a.ptfile, "load", f]), a.runs)
    r["load_shards"] = best(lambda: wall([a.ptfile, "load", shards]), a.runs)

    def torch_dcp():
        o = subprocess.run(
            [sys.executable, "-c", DCP_TORCH, dcpd, out], check=True, capture_output=True, text=True
        )
        return float(o.stdout.strip().splitlines()[-1])

    r["dcp_torch"] = best(torch_dcp, a.runs)
    r["dcp_ptfile"] = best(lambda: wall([a.ptfile, "convert", dcpd, out]), a.runs)
    gbs = lambda s: size / s / 1e9  # noqa: E731
    res = {
        "bytes": size,
        "shards": n_shards,
        "seconds": r,
        "gb_per_s": {k: gbs(v) for k, v in r.items()},
        "shards_vs_file": r["load_file"] / r["load_shards"],
        "dcp_ptfile_vs_torch": r["dcp_torch"] / r["dcp_ptfile"],
        "cores": os.cpu_count(),
    }
    if a.json:
        print(json.dumps(res))
        return
    print(f"{size / (1 << 30):.2f} GiB bf16 state dict, {n_shards} .bin shards, {os.cpu_count()} cores, warm cache, best of {a.runs}")
    for k, v in r.items():
        print(f"  {k:12s} {v:7.3f} s  {gbs(v):6.2f} GB/s")
    print(f"  shards / one file: {res['shards_vs_file']:.2f}x the speed (target >= 1.0)")
    print(f"  DCP -> .pt: ptfile {res['dcp_ptfile_vs_torch']:.2f}x faster than dcp_to_torch_save (target >= 3)")


if __name__ == "__main__":
    main()
