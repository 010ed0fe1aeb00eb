"""The examples of PyTorch's serialization notes (docs/source/notes/serialization.rst), with
ptfile.load in place of torch.load: views keep sharing their storage, a view saves its whole
storage, and state dicts load into modules."""
import torch

import ptfile
from conftest import FIXTURES


def test_saving_views_preserves_sharing(tmp_path):
    numbers = torch.arange(1, 10)
    evens = numbers[1::2]
    torch.save([numbers, evens], tmp_path / "tensors.pt")
    for path in (tmp_path / "tensors.pt", FIXTURES / "seed_views.pt", FIXTURES / "seed_views_p5.pt", FIXTURES / "seed_views_legacy.pt"):
        loaded_numbers, loaded_evens = ptfile.load(path)
        loaded_evens *= 2
        assert loaded_numbers.tolist() == [1, 4, 3, 8, 5, 12, 7, 16, 9], path
        assert loaded_numbers.untyped_storage().data_ptr() == loaded_evens.untyped_storage().data_ptr()


def test_view_saves_whole_storage(tmp_path):
    large = torch.arange(1, 1000)
    small = large[0:5]
    torch.save(small, tmp_path / "small.pt")
    for path in (tmp_path / "small.pt", FIXTURES / "seed_small_view.pt"):
        loaded_small = ptfile.load(path)
        assert loaded_small.tolist() == [1, 2, 3, 4, 5]
        assert loaded_small.untyped_storage().nbytes() == 999 * 8


def test_clone_saves_only_its_elements(tmp_path):
    small = torch.arange(1, 1000)[0:5].clone()
    torch.save(small, tmp_path / "small.pt")
    for path in (tmp_path / "small.pt", FIXTURES / "seed_small_clone.pt"):
        loaded_small = ptfile.load(path)
        assert loaded_small.untyped_storage().nbytes() == 5 * 8


def test_two_slices_share_one_storage():
    a, b = ptfile.load(FIXTURES / "seed_share.pt")
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    assert a.untyped_storage().nbytes() == 100000 * 4
    a[0] = 7.0
    assert b.untyped_storage().nbytes() == a.untyped_storage().nbytes()


def test_expanded_tensor_keeps_its_small_storage():
    t = ptfile.load(FIXTURES / "seed_expand.pt")
    assert t.stride() == (0, 1)
    assert t.untyped_storage().nbytes() == 4 * 4


def test_state_dict_into_batchnorm():
    bn = torch.nn.BatchNorm1d(3, track_running_stats=True)
    sd = ptfile.load(FIXTURES / "seed_bn_state_dict.pt")
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    r = bn.load_state_dict(sd)
    assert not r.missing_keys and not r.unexpected_keys


class MyModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l0 = torch.nn.Linear(4, 2)
        self.l1 = torch.nn.Linear(2, 1)

    def forward(self, x):
        return self.l1(self.l0(x))


def test_state_dict_into_module_with_metadata(tmp_path):
    m = MyModule()
    torch.save(m.state_dict(), tmp_path / "mymodule.pt")
    for path in (tmp_path / "mymodule.pt", FIXTURES / "seed_mymodule_state_dict.pt", FIXTURES / "seed_mymodule_state_dict_p4.pt"):
        sd = ptfile.load(path)
        assert type(sd).__name__ == "OrderedDict"
        assert sd._metadata[""] == {"version": 1} and "l0" in sd._metadata
        new_m = MyModule()
        r = new_m.load_state_dict(sd)
        assert not r.missing_keys and not r.unexpected_keys
    sd = ptfile.load(tmp_path / "mymodule.pt")
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())


def test_whole_module_is_refused_without_running_it():
    import pytest

    with pytest.raises(ptfile.UnsafeError, match="MyModule"):
        ptfile.load(FIXTURES / "seed_mymodule_whole.pt")
