"""ptfile.save and ptfile.convert write what torch.load (and safetensors) read back
identically."""
import collections
import io
import math

import pytest
import torch

import ptfile
from compare import assert_same
from conftest import FIXTURES

DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
    torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2,
]


def sample(dtype, n=7):
    if dtype == torch.bool:
        return torch.arange(n) % 2 == 0
    if dtype.is_complex:
        return torch.complex(torch.arange(n, dtype=torch.float64), -torch.arange(n, dtype=torch.float64)).to(dtype)
    if dtype.is_floating_point:
        return torch.linspace(-3, 3, n, dtype=torch.float32).to(dtype)
    return torch.arange(n).to(dtype)


def module_state_dict():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    return m.state_dict()


def roundtrip(obj, tmp_path, fmt="zip", **load):
    path = tmp_path / ("x.safetensors" if fmt == "safetensors" else "x.pt")
    n = ptfile.save(obj, path, format=fmt)
    assert n == path.stat().st_size
    return torch.load(path, weights_only=True, **load)


def test_state_dict(tmp_path):
    sd = module_state_dict()
    assert_same(roundtrip(sd, tmp_path), sd)
    assert_same(roundtrip(sd, tmp_path, mmap=True), sd)
    assert_same(ptfile.load(tmp_path / "x.pt"), sd)
    assert sd._metadata and roundtrip(sd, tmp_path)._metadata == sd._metadata


def test_views_share_storage(tmp_path):
    numbers = torch.arange(1, 10)
    evens = numbers[1::2]
    obj = [numbers, evens, numbers.view(3, 3).t()]
    got = roundtrip(obj, tmp_path)
    assert_same(got, obj)
    got[1].mul_(2)
    assert got[0].tolist() == [1, 4, 3, 8, 5, 12, 7, 16, 9]


def test_every_dtype(tmp_path):
    obj = {str(d): sample(d) for d in DTYPES}
    assert_same(roundtrip(obj, tmp_path), obj)
    legacy = {k: v for k, v in obj.items() if not k.startswith(("torch.uint16", "torch.uint32", "torch.uint64", "torch.float8"))}
    assert_same(roundtrip(legacy, tmp_path, "legacy"), legacy)


def test_values_and_containers(tmp_path):
    p = torch.nn.Parameter(torch.ones(2, 2))
    frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    obj = {
        "int": 7, "neg": -3, "big": 2**70, "float": 0.1, "nan": math.nan, "inf": -math.inf,
        "complex": 1.5 - 2j, "str": "héllo ✓", "bytes": b"\x00\x01\xff", "none": None,
        "bool": True, "tuple": (1, "a", 2.5), "list": [1, [2, [3]]], "set": {3},
        "size": torch.Size([2, 3]), "dtype": torch.bfloat16, "device": torch.device("cuda:1"),
        "od": collections.OrderedDict([("a", torch.zeros(2)), ("b", 1)]),
        5: "int key", (1, 2): "tuple key", "param": p, "frozen": frozen,
        "requires_grad": torch.ones(3, requires_grad=True), "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5), "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
    }
    got = roundtrip(obj, tmp_path)
    assert_same(got, obj)
    assert type(got["param"]) is torch.nn.Parameter and got["param"].requires_grad
    assert not got["frozen"].requires_grad


def test_legacy_format(tmp_path):
    sd = module_state_dict()
    obj = {"sd": sd, "views": [torch.arange(6), torch.arange(6)[2:]]}
    got = roundtrip(obj, tmp_path, "legacy")
    assert_same(got["sd"], sd)
    assert got["views"][1].tolist() == [2, 3, 4, 5]


def test_safetensors_format(tmp_path):
    import safetensors.torch

    obj = {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    ptfile.save(obj, tmp_path / "x.safetensors", format="safetensors")
    got = safetensors.torch.load_file(tmp_path / "x.safetensors")
    assert set(got) == set(obj)
    for k in obj:
        assert torch.equal(got[k], obj[k]) and got[k].dtype == obj[k].dtype


def test_file_objects(tmp_path):
    sd = module_state_dict()
    buf = io.BytesIO()
    ptfile.save(sd, buf)
    buf.seek(0)
    assert_same(torch.load(buf, weights_only=True), sd)
    buf.seek(0)
    assert_same(ptfile.load(buf), sd)


def test_conj_is_saved_resolved(tmp_path):
    z = torch.tensor([1 + 2j, 3 - 4j]).conj()
    got = roundtrip({"z": z}, tmp_path)
    assert torch.equal(got["z"], z.resolve_conj())


def test_refusals(tmp_path):
    with pytest.raises(ptfile.UsageError, match="object"):
        ptfile.save({"x": object()}, tmp_path / "x.pt")
    with pytest.raises(ptfile.UsageError, match="sparse"):
        ptfile.save({"x": torch.eye(3).to_sparse()}, tmp_path / "x.pt")
    base = torch.zeros(4)
    with pytest.raises(ptfile.UsageError, match="different types"):
        ptfile.save([base, base.view(torch.int32)], tmp_path / "x.pt")
    with pytest.raises(ptfile.UsageError):
        ptfile.save({"x": 1}, tmp_path / "x.pt", format="tar")
    loop = []
    loop.append(loop)
    with pytest.raises(ptfile.UsageError, match="deep"):
        ptfile.save(loop, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_convert(tmp_path, fmt):
    for name in ("training_checkpoint.pt", "seed_views_p5.pt", "dtypes_all_legacy.pt", "byteorder_big.pt"):
        src = FIXTURES / name
        n = ptfile.convert(src, tmp_path / "out.pt", format=fmt)
        assert n == (tmp_path / "out.pt").stat().st_size
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = torch.load(src, weights_only=name != "seed_views_p5.pt")
        assert_same(torch.load(tmp_path / "out.pt", weights_only=True), ref)


def test_convert_safetensors_and_map_location(tmp_path):
    import safetensors.torch

    ptfile.convert(FIXTURES / "seed_mymodule_state_dict.pt", tmp_path / "m.safetensors")
    ref = torch.load(FIXTURES / "seed_mymodule_state_dict.pt", weights_only=True)
    got = safetensors.torch.load_file(tmp_path / "m.safetensors")
    assert all(torch.equal(got[k], v) for k, v in ref.items())
    ptfile.convert(FIXTURES / "cuda_state_dict.pt", tmp_path / "cpu.pt", map_location="cpu")
    assert {r["device"] for r in ptfile.inspect(tmp_path / "cpu.pt")["storages"]} == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_keep_their_location(tmp_path):
    obj = {"w": torch.arange(4.0, device="cuda:0")}
    got = roundtrip(obj, tmp_path)
    assert got["w"].device == torch.device("cuda:0") and torch.equal(got["w"], obj["w"])
