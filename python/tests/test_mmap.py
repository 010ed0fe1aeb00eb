"""mmap=True: storages are copy-on-write slices of one map of the file, as torch.load(mmap=True):
writes change the tensors, never the file."""
import hashlib
import shutil

import torch

import ptfile
from compare import assert_same
from conftest import FIXTURES


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copy_on_write(tmp_path):
    path = tmp_path / "sd.pt"
    shutil.copy(FIXTURES / "seed_mymodule_state_dict.pt", path)
    before = sha(path)
    sd = ptfile.load(path, mmap=True)
    ref = torch.load(path, mmap=True, weights_only=True)
    assert_same(sd, ref)
    w = sd["l0.weight"]
    w.add_(1.0)  # in place: must not crash (copy-on-write), must not reach the file
    assert torch.equal(w, ref["l0.weight"] + 1.0)
    assert sha(path) == before
    again = ptfile.load(path, mmap=True)
    assert torch.equal(again["l0.weight"], ref["l0.weight"])


def test_storages_share_one_map(tmp_path):
    path = tmp_path / "views.pt"
    shutil.copy(FIXTURES / "seed_views.pt", path)
    numbers, evens = ptfile.load(path, mmap=True)
    assert numbers.untyped_storage().data_ptr() == evens.untyped_storage().data_ptr()
    evens *= 2
    assert numbers.tolist() == [1, 4, 3, 8, 5, 12, 7, 16, 9]


def test_tensors_outlive_the_file(tmp_path):
    path = tmp_path / "sd.pt"
    shutil.copy(FIXTURES / "seed_mymodule_state_dict.pt", path)
    sd = ptfile.load(path, mmap=True)
    path.unlink()
    assert torch.isfinite(sd["l0.weight"]).all()


def test_formats_without_direct_offsets_load_into_memory():
    for name in ("seed_views_legacy.pt", "byteorder_big.pt", "training_checkpoint_legacy.pt"):
        got = ptfile.load(FIXTURES / name, mmap=True)
        ref = torch.load(FIXTURES / name, weights_only=True)
        assert_same(got, ref)
