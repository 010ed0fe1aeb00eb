"""Every checkpoint of tests/fixtures and tests/data: ptfile.load gives what torch.load gives,
value for value (types, dtypes, shapes, strides, storage offsets, requires_grad, bits of every
element, storage sharing, object identity, OrderedDict _metadata).

The reference is torch.load(weights_only=True); for the files torch's safe loader refuses but
which hold only data (pickle protocols 4 and 5, a frozenset, torch 0.1's tar format) it is
torch.load(weights_only=False): these files were written by torch for this repository."""
import warnings
import zipfile

import pytest
import torch

import ptfile
from compare import assert_same
from conftest import checkpoint_files

# Files ptfile.load refuses, and why (everything else must load).
REFUSED = {
    # A class torch's weights_only loader refuses too.
    "seed_mymodule_whole.pt": (ptfile.UnsafeError, "__main__.MyModule"),
    "whole_module_legacy.pt": (ptfile.UnsafeError, "__main__."),
    "numpy_values.pt": (ptfile.UnsafeError, "argparse.Namespace"),
    "numpy_values_p4.pt": (ptfile.UnsafeError, "argparse.Namespace"),
}

FILES = checkpoint_files()


def is_torchscript(path):
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def reference(path, **kw):
    """(what torch.load gives, how) -- how is 'safe', 'full' or None (torch cannot load it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, **kw), "safe"
        except Exception:  # noqa: BLE001 - torch refuses; try the full loader on our own files
            pass
        try:
            return torch.load(path, map_location="cpu", weights_only=False, **kw), "full"
        except Exception:  # noqa: BLE001
            return None, None


def ptfile_load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ptfile.load(path, **kw)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_load_matches_torch(path):
    if path.name in REFUSED:
        cls, mention = REFUSED[path.name]
        with pytest.raises(cls) as e:
            ptfile_load(path, map_location="cpu")
        assert mention in str(e.value)
        return
    if is_torchscript(path):
        with pytest.raises(ptfile.UnsupportedError, match="TorchScript"):
            ptfile_load(path, map_location="cpu")
        return
    ref, how = reference(path)
    got = ptfile_load(path, map_location="cpu")
    if how is None:
        # torch cannot read it at all (legacy_untyped.pt): ptfile reads it; nothing to compare.
        return
    assert_same(got, ref)


@pytest.mark.parametrize("path", [p for p in FILES if is_torchscript(p)], ids=lambda p: p.name)
def test_torchscript_state_dict(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.jit.load(str(path), map_location="cpu").state_dict()
    got = ptfile_load_state_dict(path)
    assert type(got) is type(ref)
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        assert torch.equal(got[k].detach(), ref[k].detach()), k


def ptfile_load_state_dict(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ptfile.load_state_dict(path, map_location="cpu")


@pytest.mark.parametrize("path", [p for p in FILES if p.name not in REFUSED and not is_torchscript(p)], ids=lambda p: p.name)
def test_mmap_matches_torch(path):
    """mmap=True gives the same values (torch's own mmap=True where torch supports it)."""
    ref, how = reference(path, mmap=True) if zipfile.is_zipfile(path) else reference(path)
    if how is None:
        ref, how = reference(path)
    got = ptfile_load(path, map_location="cpu", mmap=True)
    if how is not None:
        assert_same(got, ref)


@pytest.mark.parametrize("path", [p for p in FILES if p.name not in REFUSED and not is_torchscript(p)], ids=lambda p: p.name)
def test_default_map_location(path):
    """map_location=None: storages go where they were saved; on a machine without the saved
    device they fall back to the CPU with one FallbackWarning (torch would raise)."""
    ref, how = reference(path)
    locations = {r["device"] for r in ptfile.inspect(path)["storages"]}
    missing = sorted(loc for loc in locations if loc != "cpu" and not ptfile._torch_places(loc))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = ptfile.load(path)
    fallbacks = [x for x in w if issubclass(x.category, ptfile.FallbackWarning)]
    if missing:
        assert len(fallbacks) == 1, [str(x.message) for x in w]
        for loc in missing:
            assert loc in str(fallbacks[0].message)
        with pytest.raises(ptfile.PlacementError):
            ptfile_load(path, strict=True)
    else:
        assert not fallbacks, [str(x.message) for x in fallbacks]
    if how is not None and not missing:
        moved = [loc for loc in locations if loc != "cpu"]
        if not moved:
            assert_same(got, ref)
