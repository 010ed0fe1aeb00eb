"""The DLPack hand-off: capsules torch consumes zero-copy, whose deleter runs exactly once
(when torch's last tensor of the storage dies, or with an unconsumed capsule); tensors
outlive everything else of a load."""
import gc

import pytest
import torch

import ptfile
from ptfile import _native
from conftest import FIXTURES

LAYOUTS = FIXTURES / "layouts.pt"


def live():
    gc.collect()
    return ptfile.live_tensors()


def test_storage_capsule_values():
    base = live()
    h = _native.load(str(LAYOUTS))
    ref = torch.load(LAYOUTS, weights_only=True)
    for i, row in enumerate(h.storages()):
        t = torch.from_dlpack(h.capsule(i))
        assert t.dtype == torch.uint8 and t.dim() == 1 and t.stride() == (1,)
        assert t.numel() == row[6]
    storage0 = torch.from_dlpack(h.capsule(0))
    assert bytes(storage0.numpy()) == bytes(ref["transposed"].untyped_storage())
    del h, storage0, t
    assert live() == base


def test_tensor_capsules_keep_strides():
    base = live()
    h = _native.load(str(LAYOUTS))
    ref = torch.load(LAYOUTS, weights_only=True)
    names = h.tensor_names()
    assert "transposed" in names
    for name in names:
        r = ref[name]
        if r.is_conj() or r.is_neg():
            continue
        t = torch.from_dlpack(h.tensor_capsule(name))
        assert t.shape == r.shape and t.dtype == r.dtype, name
        if r.numel() > 1:
            assert t.stride() == r.stride(), name
        assert torch.equal(t, r), name
    del h, t
    assert live() == base


def test_deleter_runs_once_when_tensor_dies():
    base = live()
    h = _native.load(str(LAYOUTS))
    cap = h.capsule(0)
    assert live() == base + 1
    t = torch.from_dlpack(cap)
    del h
    assert live() == base + 1
    with pytest.raises(Exception):
        torch.from_dlpack(cap)  # consumed: renamed, not taken twice
    del cap  # the capsule no longer owns the tensor
    assert live() == base + 1
    s = t.untyped_storage()
    del t
    assert live() == base + 1  # the storage still holds it
    del s
    assert live() == base


def test_unconsumed_capsule_frees_its_tensor():
    base = live()
    h = _native.load(str(LAYOUTS))
    caps = [h.capsule(i) for i in range(len(h.storages()))]
    assert live() == base + len(caps)
    del caps, h
    assert live() == base


def test_loaded_tensors_outlive_the_load():
    base = live()
    sd = ptfile.load(FIXTURES / "seed_mymodule_state_dict.pt")
    n = live() - base
    assert n == len({t.untyped_storage().data_ptr() for t in sd.values()})
    gc.collect()
    w = sd["l0.weight"]
    del sd
    gc.collect()
    assert live() == base + 1  # only w's storage is still held
    assert torch.isfinite(w).all() and w.sum().item() == w.sum().item()
    del w
    assert live() == base


def test_mmap_storages_are_torch_own():
    base = live()
    sd = ptfile.load(FIXTURES / "seed_mymodule_state_dict.pt", mmap=True)
    assert live() == base
    del sd
