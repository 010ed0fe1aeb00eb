#!/usr/bin/env python3
"""Time ptfile against torch.load on the same checkpoint, in one run.

usage: bench/compare.py [--gib 1.0] [--ptfile target/release/ptfile] [--dir /tmp/ptfile-bench]
                        [--runs 3] [--cold] [--json] [--device cuda:0]

Makes a llama-like bf16 state dict of about --gib GiB with torch (once; reused when present),
then times, on this machine, in this run:

  torch_first       torch.load(f, map_location="cpu", weights_only=True) as a fresh Python
                    process's first load (the call alone: `import torch` is not counted)
  torch_repeat      the same call repeated in one process (best of --runs)
  torch_mmap        torch.load(f, mmap=True, weights_only=True) with every page touched
  ptfile_process    the whole `ptfile load FILE` process (wall clock, best of --runs)
  ptfile_bench      `ptfile bench --json FILE` (load_s: every storage in owned memory)
  ptfile_mmap       `ptfile bench --json --mmap FILE` (every page of the map touched)
  ptfile_open       open_s of `ptfile bench` (metadata only)

and peak resident memory of `ptfile load`. With --cold (root on Linux) each first load also
runs after dropping the page cache. With --device D (e.g. cuda:0, on a GPU machine) it times
torch.load(map_location=D) and safetensors load_file(device=D) (the file converted by ptfile;
both synchronized, CUDA context made first) against `ptfile bench --map-location D`, with
the peak RSS growth of each warm load, instead (the CUDA measurement: --gib 2 --device
cuda:0; on the CPU safetensors maps the file lazily, so its figure there means little).
Prints a table with GB/s and ratios against torch.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_state_dict(path, gib):
    import torch

    torch.manual_seed(0)
    dim, ffn, vocab = 2048, 5632, 32000
    sd = {"model.embed_tokens.weight": torch.randn(vocab, dim, dtype=torch.bfloat16)}
    layer_bytes = 2 * (4 * dim * dim + 3 * dim * ffn) + 2 * 2 * dim
    n_layers = max(1, int((gib * (1 << 30) - 2 * 2 * vocab * dim) // layer_bytes))
    for i in range(n_layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + f"self_attn.{n}.weight"] = torch.randn(dim, dim, dtype=torch.bfloat16)
        sd[p + "mlp.gate_proj.weight"] = torch.randn(ffn, dim, dtype=torch.bfloat16)
        sd[p + "mlp.up_proj.weight"] = torch.randn(ffn, dim, dtype=torch.bfloat16)
        sd[p + "mlp.down_proj.weight"] = torch.randn(dim, ffn, dtype=torch.bfloat16)
        sd[p + "input_layernorm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
    sd["model.norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
    sd["lm_head.weight"] = torch.randn(vocab, dim, dtype=torch.bfloat16)
    torch.save(sd, path)
    return len(sd)


FIRST = r"""
import sys, time, torch
t = time.perf_counter()
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
print(time.perf_counter() - t)
"""

REPEAT = r"""
import sys, time, torch
best = 1e9
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
    best = min(best, time.perf_counter() - t)
    del sd
print(best)
"""

MMAP = r"""
import sys, time, torch
best = 1e9
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True, mmap=True)
    s = 0
    for v in sd.values():
        b = v.reshape(-1).view(torch.uint8)
        s += int(b[::4096].sum())
    best = min(best, time.perf_counter() - t)
    del sd
print(best)
"""


DEVICE = r"""
import sys, time, torch

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return status("VmRSS:")

path, runs, dev, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if dev.startswith("cuda"):
    torch.zeros(1, device=dev)  # create the context before timing
    torch.cuda.synchronize()
if kind == "safetensors":
    from safetensors.torch import load_file
    load = lambda: load_file(path, device=dev)
else:
    load = lambda: torch.load(path, map_location=dev, weights_only=True)
best, growth = 1e9, 0
for i in range(runs):
    before = reset_peak()
    t = time.perf_counter()
    sd = load()
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    best = min(best, time.perf_counter() - t)
    if i > 0 or runs == 1:
        growth = max(growth, status("VmHWM:") - before)
    del sd
print(growth)
print(best)
"""


def py_device(path, runs, dev, kind):
    """(best seconds, peak RSS growth bytes of the warm runs) of DEVICE."""
    out = subprocess.run([sys.executable, "-c", DEVICE, path, str(runs), dev, kind], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()
    return float(out[-1]), int(out[-2])


def peak_rss(cmd):
    """Peak resident set of one child process, in bytes (wait4's maxrss)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"{cmd} failed with status {status}")
    return ru.ru_maxrss * 1024


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def py(code, *args):
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def wall(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--ptfile", default=os.path.join(ROOT, "target/release/ptfile"))
    ap.add_argument("--dir", default="/tmp/ptfile-bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default=None, help="time loading onto this device instead")
    a = ap.parse_args()

    os.makedirs(a.dir, exist_ok=True)
    path = os.path.join(a.dir, f"llama_bf16_{a.gib:g}gib.pt")
    if not os.path.exists(path):
        n = make_state_dict(path, a.gib)
        print(f"wrote {path}: {n} tensors", file=sys.stderr)
    size = os.path.getsize(path)

    # Warm the page cache once.
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass

    if a.device:
        mib = 1 << 20
        t, t_rss = py_device(path, a.runs, a.device, "torch")
        st_path = os.path.splitext(path)[0] + ".safetensors"
        st = None
        try:
            import safetensors  # noqa: F401
            if not os.path.exists(st_path):
                subprocess.run([a.ptfile, "convert", "--format", "safetensors", path, st_path],
                               check=True, capture_output=True)
            st = py_device(st_path, a.runs, a.device, "safetensors")
        except (ImportError, subprocess.CalledProcessError) as e:
            print(f"safetensors not compared: {e}", file=sys.stderr)
        b = json.loads(subprocess.run([a.ptfile, "bench", "--json", "--runs", str(a.runs),
                                       "--map-location", a.device, path],
                                      check=True, capture_output=True, text=True).stdout)
        gb = size / 1e9
        out = {"file_bytes": size, "device": a.device, "torch_s": t, "torch_rss_growth": t_rss,
               "safetensors_s": st and st[0], "safetensors_rss_growth": st and st[1],
               "ptfile": b}
        if a.json:
            print(json.dumps(out, indent=1))
            return
        print(f"file: {path} ({size / (1 << 30):.2f} GiB) onto {a.device}, warm, best of {a.runs}")
        print(f"torch.load(map_location={a.device!r})  {t:.3f} s {gb / t:6.2f} GB/s  "
              f"peak RSS growth {t_rss / mib:.0f} MiB")
        if st:
            print(f"safetensors load_file(device=...)  {st[0]:.3f} s {gb / st[0]:6.2f} GB/s  "
                  f"peak RSS growth {st[1] / mib:.0f} MiB")
        growth = b.get("rss_growth_bytes")
        growth = "n/a" if growth is None else f"{growth / mib:.0f} MiB"
        print(f"ptfile bench --map-location {a.device}  {b['load_s']:.3f} s {b['gbps']:6.2f} GB/s  "
              f"peak RSS growth {growth} on {b['device']}: {t / b['load_s']:.2f}x torch"
              + (f", {st[0] / b['load_s']:.2f}x safetensors" if st else ""))
        return

    r = {}
    r["torch_first"] = min(py(FIRST, path) for _ in range(a.runs))
    r["torch_repeat"] = py(REPEAT, path, a.runs)
    r["torch_mmap"] = py(MMAP, path, a.runs)
    r["ptfile_process"] = min(wall([a.ptfile, "load", path]) for _ in range(a.runs))
    rss = peak_rss([a.ptfile, "load", path])
    b = json.loads(subprocess.run([a.ptfile, "bench", "--json", "--runs", str(a.runs), path],
                                  check=True, capture_output=True, text=True).stdout)
    m = json.loads(subprocess.run([a.ptfile, "bench", "--json", "--mmap", "--runs", str(a.runs), path],
                                  check=True, capture_output=True, text=True).stdout)
    r["ptfile_bench"] = b["load_s"]
    r["ptfile_mmap"] = m["load_s"]
    r["ptfile_open"] = b["open_s"]
    cold = {}
    if a.cold and drop_caches():
        cold["torch_first"] = py(FIRST, path)
        drop_caches()
        cold["ptfile_process"] = wall([a.ptfile, "load", path])
        drop_caches()
        cold["ptfile_bench_1run"] = json.loads(subprocess.run(
            [a.ptfile, "bench", "--json", "--runs", "1", path], check=True, capture_output=True,
            text=True).stdout)["load_s"]

    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"
    out = {"file_bytes": size, "machine": machine, "warm_s": r, "cold_s": cold,
           "ptfile_load_peak_rss_bytes": rss}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    gb = size / 1e9
    print(f"file: {path} ({size / (1 << 30):.2f} GiB); machine: {machine}")
    print(f"{'what':<16} {'seconds':>9} {'GB/s':>7}  ratio")
    for k, v in r.items():
        if k == "ptfile_open":
            print(f"{k:<16} {v * 1e3:>8.2f}ms")
            continue
        ratio = ""
        if k == "ptfile_process":
            ratio = f"{r['torch_first'] / v:.2f}x faster than torch_first, {r['torch_repeat'] / v:.2f}x vs torch_repeat"
        elif k == "ptfile_bench":
            ratio = f"{r['torch_repeat'] / v:.2f}x faster than torch_repeat"
        elif k == "ptfile_mmap":
            ratio = f"{r['torch_mmap'] / v:.2f}x faster than torch_mmap"
        print(f"{k:<16} {v:>9.3f} {gb / v:>7.2f}  {ratio}")
    for k, v in cold.items():
        print(f"cold {k:<11} {v:>9.3f} {gb / v:>7.2f}")
    print(f"ptfile load peak RSS: {out['ptfile_load_peak_rss_bytes'] / (1 << 20):.0f} MiB "
          f"(file {size / (1 << 20):.0f} MiB; target <= file + 64 MiB)")


if __name__ == "__main__":
    main()
