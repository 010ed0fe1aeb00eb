#!/usr/bin/env python3
"""Time ptfile.load against torch.load and safetensors on the same tensors, in one run.

usage: bench/py_compare.py [--gib 1.0] [--dir /tmp/ptfile-bench] [--runs 5] [--json]

Makes the llama-like bf16 state dict of bench/compare.py (about --gib GiB, with torch; reused
when present) and the same tensors as a .safetensors file (safetensors.torch.save_file), warms
the page cache, and times in this run, each in fresh Python processes (`import torch`,
`import ptfile` not counted):

  torch         torch.load(f, map_location="cpu", weights_only=True)
  ptfile        ptfile.load(f)                      (every storage in owned memory)
  safetensors   safetensors.torch.load_file(f.safetensors)   (a lazy map of the file)
  torch_mmap    torch.load(f, mmap=True, weights_only=True)
  ptfile_mmap   ptfile.load(f, mmap=True)

each as the first call of a fresh process (best and median of --runs processes) and repeated
in one process (best and median of --runs calls), the call alone and the call plus touching one
byte of every 4 KiB page of every storage (what a lazy map defers to the first use), with the
peak RSS growth of the call plus touch. Prints a table and the ratios against ptfile.load.
"""
import argparse
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CHILD = r"""
import json, os, sys, time
method, path, st_path, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import torch
import ptfile
import safetensors.torch

def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return rss("VmRSS:")

def touch(obj):
    seen, total = set(), 0
    values = obj.values() if isinstance(obj, dict) else obj
    for t in values:
        s = t.untyped_storage()
        if s.data_ptr() in seen or s.nbytes() == 0:
            continue
        seen.add(s.data_ptr())
        total += int(torch.empty(0, dtype=torch.uint8).set_(s)[::4096].sum())
    return total

fns = {
    "torch": lambda: torch.load(path, map_location="cpu", weights_only=True),
    "ptfile": lambda: ptfile.load(path),
    "safetensors": lambda: safetensors.torch.load_file(st_path),
    "torch_mmap": lambda: torch.load(path, mmap=True, weights_only=True),
    "ptfile_mmap": lambda: ptfile.load(path, mmap=True),
}
fn = fns[method]
out = []
for _ in range(runs):
    before = reset_peak()
    t0 = time.perf_counter()
    sd = fn()
    t1 = time.perf_counter()
    touch(sd)
    t2 = time.perf_counter()
    out.append({"call": t1 - t0, "touch": t2 - t0, "rss_growth": rss("VmHWM:") - before, "tensors": len(sd)})
    del sd
print(json.dumps(out))
"""

METHODS = [
    ("torch", 'torch.load(f, map_location="cpu", weights_only=True)'),
    ("ptfile", "ptfile.load(f)"),
    ("safetensors", "safetensors.torch.load_file(f.safetensors)"),
    ("torch_mmap", "torch.load(f, mmap=True, weights_only=True)"),
    ("ptfile_mmap", "ptfile.load(f, mmap=True)"),
]


def child(method, path, st_path, runs):
    r = subprocess.run([sys.executable, "-c", CHILD, method, path, st_path, str(runs)],
                       check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def warm(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dir", default="/tmp/ptfile-bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    os.makedirs(a.dir, exist_ok=True)
    path = os.path.join(a.dir, f"llama_bf16_{a.gib:g}gib.pt")
    if not os.path.exists(path):
        from compare import make_state_dict

        n = make_state_dict(path, a.gib)
        print(f"wrote {path}: {n} tensors", file=sys.stderr)
    st_path = os.path.splitext(path)[0] + ".safetensors"
    if not os.path.exists(st_path):
        import torch
        import safetensors.torch

        sd = torch.load(path, weights_only=True)
        safetensors.torch.save_file(sd, st_path)
        del sd
        print(f"wrote {st_path}", file=sys.stderr)
    size = os.path.getsize(path)
    warm(path)
    warm(st_path)

    results = {}
    for method, _ in METHODS:
        first = [child(method, path, st_path, 1)[0] for _ in range(a.runs)]
        repeat = child(method, path, st_path, a.runs)
        results[method] = {
            "first_call_s": min(r["call"] for r in first),
            "first_touch_s": min(r["touch"] for r in first),
            "first_touch_median_s": sorted(r["touch"] for r in first)[len(first) // 2],
            "repeat_touch_median_s": sorted(r["touch"] for r in repeat)[len(repeat) // 2],
            "repeat_call_s": min(r["call"] for r in repeat),
            "repeat_touch_s": min(r["touch"] for r in repeat),
            "rss_growth_bytes": max(r["rss_growth"] for r in repeat[1:] or repeat),
            "tensors": repeat[0]["tensors"],
        }
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"
    out = {"file": path, "file_bytes": size, "machine": machine, "runs": a.runs, "results": results}
    if a.json:
        print(json.dumps(out, indent=1))
        return

    gb = size / 1e9
    p = results["ptfile"]
    print(f"file: {path} ({size / (1 << 30):.2f} GiB, {p['tensors']} tensors), warm page cache, "
          f"best of {a.runs}; {machine}")
    print(f"{'':52} {'fresh process':>33} {'repeated':>33}  {'RSS':>7}")
    print(f"{'':52} {'call':>10} {'+touch':>10} {'median':>10}  {'call':>10} {'+touch':>10} {'median':>10}  {'growth':>7}")
    for method, label in METHODS:
        r = results[method]
        print(f"{label:52} {r['first_call_s']:9.4f}s {r['first_touch_s']:9.4f}s {r['first_touch_median_s']:9.4f}s  "
              f"{r['repeat_call_s']:9.4f}s {r['repeat_touch_s']:9.4f}s {r['repeat_touch_median_s']:9.4f}s  "
              f"{r['rss_growth_bytes'] / (1 << 20):5.0f}Mi")
    print()
    t, s = results["torch"], results["safetensors"]
    tm, pm = results["torch_mmap"], results["ptfile_mmap"]

    def ratio(x, y):
        return x / y if y > 0 else float("inf")

    print(f"ptfile.load vs torch.load:        {ratio(t['first_touch_s'], p['first_touch_s']):.2f}x faster "
          f"(fresh process), {ratio(t['repeat_touch_s'], p['repeat_touch_s']):.2f}x (repeated); medians "
          f"{ratio(t['first_touch_median_s'], p['first_touch_median_s']):.2f}x and "
          f"{ratio(t['repeat_touch_median_s'], p['repeat_touch_median_s']):.2f}x; {gb / p['repeat_touch_s']:.2f} GB/s")
    print(f"ptfile.load vs safetensors+touch: {ratio(s['first_touch_s'], p['first_touch_s']):.2f}x "
          f"(fresh process), {ratio(s['repeat_touch_s'], p['repeat_touch_s']):.2f}x (repeated)")
    print(f"ptfile mmap vs safetensors (call): {ratio(s['first_call_s'], pm['first_call_s']):.2f}x "
          f"(fresh process), {ratio(s['repeat_call_s'], pm['repeat_call_s']):.2f}x (repeated); "
          f"+touch {ratio(s['repeat_touch_s'], pm['repeat_touch_s']):.2f}x")
    print(f"ptfile mmap vs torch mmap (+touch): {ratio(tm['first_touch_s'], pm['first_touch_s']):.2f}x "
          f"(fresh process), {ratio(tm['repeat_touch_s'], pm['repeat_touch_s']):.2f}x (repeated); "
          f"call alone {ratio(tm['repeat_call_s'], pm['repeat_call_s']):.2f}x")
    print(f"peak RSS growth of ptfile.load: {p['rss_growth_bytes'] / (1 << 20):.0f} MiB for a "
          f"{size / (1 << 20):.0f} MiB file (target: file + 64 MiB)")


if __name__ == "__main__":
    main()
