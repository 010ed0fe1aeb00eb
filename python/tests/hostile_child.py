"""Loads every file of the hostile corpus with ptfile.load in this one process and prints one
JSON line per file (run by test_hostile.py in a child process, so that a crash is seen as one)."""
import json
import sys
import time
import warnings

import ptfile

warnings.simplefilter("ignore")
corpus, names = sys.argv[1], sys.argv[2:]


def hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def peak():
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


for name in names:
    print(json.dumps({"start": name}), flush=True)
    before = hwm()
    r = {"file": name, "seconds": 0.0}
    for mmap in (False, True):
        t = time.perf_counter()
        try:
            obj = ptfile.load(f"{corpus}/{name}", mmap=mmap)
            del obj
            r["outcome" if not mmap else "mmap_outcome"] = "ok"
        except ptfile.Error as e:
            r["outcome" if not mmap else "mmap_outcome"] = "error"
            r["class"], r["message"] = type(e).__name__, str(e)
        except BaseException as e:  # noqa: BLE001 - reported as a failure by the parent
            r["outcome" if not mmap else "mmap_outcome"] = "other"
            r["class"], r["message"] = type(e).__name__, str(e)[:2000]
        r["seconds"] = max(r["seconds"], time.perf_counter() - t)
    if r.get("class") == "UnsupportedError" and "TorchScript" in r.get("message", ""):
        # A TorchScript archive: its state dict, its code never run.
        t = time.perf_counter()
        try:
            ptfile.load_state_dict(f"{corpus}/{name}")
            r["state_dict_outcome"] = "ok"
        except ptfile.Error as e:
            r["state_dict_outcome"] = "error"
            r["state_dict_message"] = str(e)
        except BaseException as e:  # noqa: BLE001
            r["state_dict_outcome"] = "other"
            r["state_dict_message"] = f"{type(e).__name__}: {e}"[:2000]
        r["seconds"] = max(r["seconds"], time.perf_counter() - t)
    p = peak()
    r["rss_growth"] = None if p is None or before is None else p - before
    print(json.dumps(r), flush=True)
print(json.dumps({"done": len(names)}), flush=True)
