"""The hostile corpus (tests/hostile: code execution through every opcode that can name a
global, memo and deflate bombs, lying tensors, damaged zips, ...) through ptfile.load: every
file gives a value or a ptfile.Error subclass -- never another exception, never a crash --
nothing in it runs (no marker file appears, nothing is written), and each stays within bounds.

A file the manifest expects to be refused must raise; one it expects to open may still be
refused by ptfile.load where torch.load(weights_only=True) refuses it too (UnsafeError: an
instance of an arbitrary class) or where ptfile.load cannot build it (UnsupportedError: a
TorchScript archive, a cyclic structure). Every ptfile error names what the manifest says it
must name."""
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import HOSTILE

SECONDS_PER_FILE = 10
RSS_GROWTH_LIMIT = 1 << 30
MARKERS = "/tmp/ptfile_pwned_*"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    manifest = json.loads((HOSTILE / "manifest.json").read_text())
    names = [e["file"] for e in manifest]
    work = tmp_path_factory.mktemp("hostile-cwd")
    home = tmp_path_factory.mktemp("hostile-home")
    tmp = tmp_path_factory.mktemp("hostile-tmp")
    markers_before = set(glob.glob(MARKERS))
    env = dict(os.environ, HOME=str(home), TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    child = os.path.join(os.path.dirname(__file__), "hostile_child.py")
    out = subprocess.run(
        [sys.executable, child, str(HOSTILE / "corpus"), *names],
        cwd=work, env=env, capture_output=True, text=True, timeout=SECONDS_PER_FILE * 60,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    started = [x["start"] for x in lines if "start" in x]
    done = {x["file"]: x for x in lines if "file" in x}
    crashed = started[-1] if started and started[-1] not in done else None
    assert out.returncode == 0 and crashed is None, (
        f"the child process died (exit {out.returncode}) loading {crashed}:\n{out.stderr[-4000:]}"
    )
    assert set(glob.glob(MARKERS)) == markers_before, "a file of the corpus ran code (a marker appeared)"
    for d in (work, home, tmp):
        assert not os.listdir(d), f"something was written to {d}: {os.listdir(d)}"
    return manifest, done


def test_every_file_is_a_value_or_a_ptfile_error(results):
    manifest, done = results
    failures = []
    for e in manifest:
        r = done.get(e["file"])
        if r is None:
            failures.append(f"{e['file']}: no result")
            continue
        for key in ("outcome", "mmap_outcome"):
            if r[key] == "other":
                failures.append(f"{e['file']}: {key} raised {r['class']}, not a ptfile.Error: {r.get('message', '')[:300]}")
        if r.get("state_dict_outcome") == "other":
            failures.append(f"{e['file']}: load_state_dict raised {r['state_dict_message'][:300]}")
        if e["expect"] == "error" and r["outcome"] != "error":
            failures.append(f"{e['file']}: loaded, but the manifest expects it refused ({e['note']})")
        if e["expect"] == "ok" and r["outcome"] == "error" and r["class"] not in ("UnsafeError", "UnsupportedError"):
            failures.append(f"{e['file']}: {r['class']}: {r['message'][:300]} (the manifest expects it readable)")
        if r["outcome"] == "error":
            msg = r["message"]
            missing = [m for m in e.get("must_mention", []) if m not in msg]
            for group in e.get("must_mention_any", []):
                if not any(m in msg for m in group):
                    missing.append(" or ".join(group))
            if missing:
                failures.append(f"{e['file']}: the error does not mention {missing}: {msg[:300]}")
            if "\n" in msg.strip():
                failures.append(f"{e['file']}: the error is not one line: {msg[:300]!r}")
        if r["seconds"] > SECONDS_PER_FILE:
            failures.append(f"{e['file']}: took {r['seconds']:.1f} s")
        if r["rss_growth"] is not None and r["rss_growth"] > RSS_GROWTH_LIMIT:
            failures.append(f"{e['file']}: resident memory grew by {r['rss_growth'] >> 20} MiB")
    assert not failures, "\n".join(failures)


def test_code_execution_is_refused_as_unsafe(results):
    manifest, done = results
    for e in manifest:
        if e["class"] == "code_exec" and e["expect"] == "error":
            r = done[e["file"]]
            # (a plain pickle or a damaged container is refused before any global is read)
            assert r["class"] in ("UnsafeError", "InvalidCheckpoint"), (e["file"], r.get("class"), r.get("message", "")[:200])
