"""The package's surface: errors (classes, messages as the CLI's), paths and file objects,
inspect, load_state_dict, the GIL released while bytes are read."""
import errno
import io
import json
import os
import pathlib
import subprocess
import threading
import time

import pytest
import torch

import ptfile
from ptfile import _native
from conftest import FIXTURES, HOSTILE, REPO

PTFILE_BIN = os.environ.get("PTFILE_BIN")


def test_exception_hierarchy():
    for cls in (ptfile.UnsafeError, ptfile.InvalidCheckpoint, ptfile.UnsupportedError, ptfile.PlacementError,
                ptfile.ReadError, ptfile.WriteError, ptfile.UsageError):
        assert issubclass(cls, ptfile.Error) and cls.__module__ == "ptfile"
    assert issubclass(ptfile.ReadError, OSError) and issubclass(ptfile.PlacementError, RuntimeError)
    assert issubclass(ptfile.UsageError, ValueError)


def test_missing_file():
    with pytest.raises(ptfile.ReadError) as e:
        ptfile.load("/nonexistent/model.pt")
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOENT
    assert e.value.filename == "/nonexistent/model.pt"
    assert str(e.value).startswith("cannot read /nonexistent/model.pt")


def test_directory_and_text(tmp_path):
    with pytest.raises(ptfile.InvalidCheckpoint, match="no weights found"):
        ptfile.load(tmp_path)  # (a model directory: shards, safetensors)
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ptfile.InvalidCheckpoint, match="not a PyTorch checkpoint"):
        ptfile.load(tmp_path / "notes.txt")


def test_unsafe_names_the_global():
    with pytest.raises(ptfile.UnsafeError, match="os.system"):
        ptfile.load(HOSTILE / "corpus" / "ce_os_system.pt")


@pytest.mark.skipif(not PTFILE_BIN, reason="PTFILE_BIN (the ptfile command) not set")
@pytest.mark.parametrize("name", ["ce_os_system.pt", "ce_builtins_eval.pt", "zd_truncate_00030.pt", "lt_offset_past_end.pt", "msg_global_newline.pt"])
def test_messages_are_the_clis(name):
    path = HOSTILE / "corpus" / name
    if not path.exists():
        pytest.skip(f"{name} is not in the corpus")
    cli = subprocess.run([PTFILE_BIN, "load", str(path)], capture_output=True, text=True)
    if cli.returncode == 0:
        pytest.skip(f"the CLI loads {name}")
    with pytest.raises(ptfile.Error) as e:
        ptfile.load(path)
    assert cli.stderr.strip() == f"ptfile: {e.value}"


def test_paths_and_file_objects():
    p = FIXTURES / "seed_tensor.pt"
    ref = torch.load(p, weights_only=True)
    for f in (p, str(p), os.fsencode(p), pathlib.PurePath(p)):
        assert torch.equal(ptfile.load(f), ref)
    with open(p, "rb") as fh:
        assert torch.equal(ptfile.load(fh), ref)
    assert torch.equal(ptfile.load(io.BytesIO(p.read_bytes())), ref)
    with pytest.raises(TypeError):
        ptfile.load(42)
    with pytest.raises(TypeError):
        ptfile.load(io.StringIO("text"))


def test_inspect():
    d = ptfile.inspect(FIXTURES / "seed_mymodule_state_dict.pt")
    assert d["format"] == "zip" and d["root"]["type"] == "ordered_dict"
    assert len(d["storages"]) == 4
    if PTFILE_BIN:
        cli = subprocess.run([PTFILE_BIN, "inspect", "--json", str(FIXTURES / "seed_mymodule_state_dict.pt")],
                             capture_output=True, text=True, check=True)
        assert json.loads(cli.stdout) == d


def test_load_state_dict_of_torchscript():
    sd = ptfile.load_state_dict(FIXTURES / "seed_mymodule_scripted.ptc")
    assert list(sd) == ["l0.weight", "l0.bias", "l1.weight", "l1.bias"]
    with pytest.raises(ptfile.UnsupportedError, match="load_state_dict"):
        ptfile.load(FIXTURES / "seed_mymodule_scripted.ptc")
    # a plain state dict is what load gives
    assert list(ptfile.load_state_dict(FIXTURES / "seed_mymodule_state_dict.pt")) == list(sd)


def test_version():
    assert ptfile.__version__ == _native.__version__


def test_gil_is_released_while_reading(tmp_path):
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(48 << 20, dtype=torch.float32)}, path)  # 192 MiB
    ticks, span = [], {}
    stop = threading.Event()

    def read():
        t0 = time.perf_counter()
        _native.load(str(path))
        span["t"] = (t0, time.perf_counter())
        stop.set()

    th = threading.Thread(target=read)
    th.start()
    while not stop.is_set():
        ticks.append(time.perf_counter())
    th.join()
    t0, t1 = span["t"]
    inside = [t for t in ticks if t0 + 0.2 * (t1 - t0) < t < t1 - 0.2 * (t1 - t0)]
    assert t1 - t0 > 0.01, "the load was too quick to tell"
    assert len(inside) > 100, f"{len(inside)} ticks of the other thread during a {t1 - t0:.3f} s read"


def test_torch_load_signature():
    p = FIXTURES / "seed_tensor.pt"
    assert torch.equal(ptfile.load(p, "cpu", weights_only=True), torch.load(p, weights_only=True))
    with pytest.raises(ptfile.UsageError, match="weights_only=False"):
        ptfile.load(p, weights_only=False)


def test_concurrent_loads():
    """Loads from several threads at once (each on its own worker thread) give the same values."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["seed_mymodule_state_dict.pt", "layouts.pt", "dtypes_all.pt", "training_checkpoint.pt"] * 4
    refs = {n: ptfile.load(FIXTURES / n) for n in set(names)}
    from compare import assert_same

    with ThreadPoolExecutor(max_workers=6) as ex:
        got = list(ex.map(lambda n: (n, ptfile.load(FIXTURES / n)), names))
    for n, obj in got:
        assert_same(obj, refs[n])
