"""map_location in torch's forms, the CPU fallback with its warning, strict mode."""
import warnings

import pytest
import torch

import ptfile
from compare import assert_same
from conftest import FIXTURES

CUDA = FIXTURES / "cuda_multi_gpu.pt"  # storages on cuda:0 and cuda:1
MIXED = FIXTURES / "cuda_mixed.pt"  # cpu and cuda:0
IPU = FIXTURES / "custom_ipu.pt"  # a storage tagged 'ipu'
HAVE_CUDA = torch.cuda.is_available()


def tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors(v)


def devices(obj):
    return {str(t.device) for t in tensors(obj)}


def load_quiet(*a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ptfile.load(*a, **kw)


def torch_cpu(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize(
    "ml",
    ["cpu", b"cpu", torch.device("cpu"), {"cuda:0": "cpu", "cuda:1": "cpu"}, {"cuda:0": torch.device("cpu"), "cuda:1": "cpu"},
     lambda s, loc: s, lambda s, loc: "cpu", lambda s, loc: torch.device("cpu")],
    ids=["str", "bytes", "device", "dict", "dict-device", "callable-storage", "callable-str", "callable-device"],
)
def test_to_cpu_without_warning(ml):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ptfile.FallbackWarning)
        got = ptfile.load(CUDA, map_location=ml)
    assert devices(got) == {"cpu"}
    assert_same(got, torch_cpu(CUDA))


def test_callable_gets_storage_and_location():
    seen = []

    def ml(storage, location):
        seen.append((type(storage), location, storage.nbytes()))
        return storage

    ptfile.load(CUDA, map_location=ml)
    assert sorted(loc for _, loc, _ in seen) == ["cuda:0", "cuda:1"]
    assert all(t is torch.UntypedStorage for t, _, _ in seen)


@pytest.mark.skipif(HAVE_CUDA, reason="this machine has a GPU: nothing falls back")
def test_missing_device_falls_back_with_one_warning():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = ptfile.load(CUDA)
    fb = [x for x in w if issubclass(x.category, ptfile.FallbackWarning)]
    assert len(fb) == 1, [str(x.message) for x in w]
    msg = str(fb[0].message)
    assert "2 storages fell back to the CPU" in msg and "cuda:0" in msg and "cuda:1" in msg
    assert devices(got) == {"cpu"}
    assert_same(got, torch_cpu(CUDA))


@pytest.mark.skipif(HAVE_CUDA, reason="this machine has a GPU")
def test_strict_raises_as_torch_does():
    with pytest.raises(ptfile.PlacementError) as e:
        ptfile.load(MIXED, strict=True)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, ptfile.Error)
    assert "cuda:0" in str(e.value) and "map_location" in str(e.value)
    with pytest.raises(RuntimeError):
        torch.load(MIXED, weights_only=True)
    with pytest.raises(ptfile.PlacementError):
        ptfile.load(MIXED, map_location=lambda s, loc: "cuda:0", strict=True)


def test_unknown_device_falls_back_or_raises():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = ptfile.load(IPU)
    fb = [x for x in w if issubclass(x.category, ptfile.FallbackWarning)]
    assert len(fb) == 1 and "ipu" in str(fb[0].message)
    assert devices(got) == {"cpu"}
    with pytest.raises(ptfile.PlacementError, match="ipu"):
        ptfile.load(IPU, strict=True)


def test_meta():
    got = ptfile.load(MIXED, map_location="meta")
    assert devices(got) == {"meta"}
    ref = torch_cpu(MIXED)
    for a, b in zip(tensors(got), tensors(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride()


def test_table_keeps_unlisted_locations():
    got = load_quiet(MIXED, map_location={"cuda:7": "cpu"})
    assert devices(got) <= {"cpu", "cuda:0"}


@pytest.mark.parametrize("bad", ["cuda:x", "nonsense", {"cuda:0": "cuda:x"}])
def test_bad_locations_are_usage_errors(bad):
    with pytest.raises(ptfile.UsageError):
        ptfile.load(MIXED, map_location=bad)


def test_bad_map_location_type():
    with pytest.raises(TypeError):
        ptfile.load(MIXED, map_location=42)
    with pytest.raises(TypeError):
        ptfile.load(MIXED, map_location=lambda s, loc: 42)


@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU")
def test_to_cuda():
    got = ptfile.load(FIXTURES / "cuda_state_dict.pt")
    ref = torch.load(FIXTURES / "cuda_state_dict.pt", weights_only=True)
    assert devices(got) == devices(ref) == {"cuda:0"}
    for a, b in zip(tensors(got), tensors(ref)):
        assert torch.equal(a, b)
    got = ptfile.load(FIXTURES / "seed_mymodule_state_dict.pt", map_location="cuda:0")
    assert devices(got) == {"cuda:0"}
