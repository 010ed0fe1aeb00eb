"""Values torch.save writes that the fixtures do not cover: numpy values, sparse tensors
coalesced or not, shared objects, every dtype and layout of a torch-written file."""
import collections

import numpy as np
import pytest
import torch

import ptfile
from compare import assert_same


def both(obj, tmp_path, **save):
    path = tmp_path / "v.pt"
    torch.save(obj, path, **save)
    ref = torch.load(path, weights_only=False)
    return ptfile.load(path), ref


def test_numpy_values(tmp_path):
    obj = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran_big_endian": np.asfortranarray(np.arange(6, dtype=">i2").reshape(2, 3)),
        "strings": np.array(["ab", "c"]),
        "empty": np.zeros((0, 3)),
        "f32": np.float32(1.5), "i64": np.int64(-3), "bool": np.bool_(True),
        "dtype": np.dtype("<f4"), "dtype_be": np.dtype(">i8"), "dtype_str": np.dtype("U3"),
        "counter": collections.Counter({"x": 2, "y": 1}),
        "weight": torch.arange(4.0),
    }
    got, ref = both(obj, tmp_path)
    assert_same(got, ref)
    got["a"][0, 0] = 7  # writable, as numpy's own unpickling gives
    # numpy float64 / complex128 scalars come back as their Python base types
    got, ref = both({"f64": np.float64(2.5), "c128": np.complex128(1 - 2j)}, tmp_path)
    assert type(got["f64"]) is float and got["f64"] == ref["f64"]
    assert type(got["c128"]) is complex and got["c128"] == ref["c128"]


def test_numpy_object_arrays_are_refused(tmp_path):
    torch.save({"o": np.array([{"a": 1}], dtype=object)}, tmp_path / "o.pt")
    with pytest.raises(ptfile.Error):
        ptfile.load(tmp_path / "o.pt")


@pytest.mark.parametrize("coalesce", [True, False])
def test_sparse_coo(tmp_path, coalesce):
    i = torch.tensor([[0, 1, 1, 2], [2, 0, 2, 1]])
    v = torch.tensor([3.0, 4.0, 5.0, 6.0])
    s = torch.sparse_coo_tensor(i, v, (3, 3))
    if coalesce:
        s = s.coalesce()
    else:
        s = torch.sparse_coo_tensor(i[:, [2, 0, 3, 1]], v[[2, 0, 3, 1]], (3, 3))
    got, ref = both({"s": s, "csc": torch.eye(3).to_sparse_csc(), "bsr": torch.eye(4).to_sparse_bsr((2, 2))}, tmp_path)
    assert got["s"].is_coalesced() == ref["s"].is_coalesced() == coalesce
    assert_same(got, ref)


def test_shared_objects_stay_shared(tmp_path):
    shared = [1, 2]
    t = torch.arange(3)
    obj = {"a": shared, "b": shared, "t1": t, "t2": t, "s": "x" * 1000, "s2": None}
    obj["s2"] = obj["s"]
    got, ref = both(obj, tmp_path)
    assert got["a"] is got["b"] and ref["a"] is ref["b"]
    assert got["t1"] is got["t2"]
    assert_same(got, ref)


def test_memo_bomb_is_cheap(tmp_path):
    # 2**30 leaves if written out; 30 distinct lists to build.
    x = [0]
    for _ in range(30):
        x = [x, x]
    got, ref = both(x, tmp_path)
    node = got
    for _ in range(30):
        assert node[0] is node[1]
        node = node[0]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("zipfile", [True, False])
def test_every_dtype_and_layout(tmp_path, protocol, zipfile):
    if not zipfile and protocol > 2:
        pytest.skip("the legacy format with protocols 4/5 is torch's own oddity")
    obj = {}
    for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
              torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128, torch.complex32):
        if d == torch.complex32 and not zipfile:
            continue  # torch's legacy loader cannot read the untyped storage it writes for it
        base = torch.arange(24).to(d) if d not in (torch.complex32,) else torch.arange(24, dtype=torch.float16).to(d)
        obj[str(d)] = base
        obj[str(d) + ".t"] = base.view(4, 6).t()
        obj[str(d) + ".slice"] = base.view(4, 6)[1:3, ::2]
    for d in (torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2):
        if zipfile:
            obj[str(d)] = torch.arange(5).to(d)
    obj["conj"] = torch.tensor([1 + 2j, 3 - 4j]).conj()
    obj["neg"] = torch.tensor([1 + 2j]).conj().imag
    obj["param"] = torch.nn.Parameter(torch.ones(2))
    obj["0d"] = torch.tensor(3.5)
    obj["empty"] = torch.zeros(0, 4)
    obj["expanded"] = torch.arange(3.0).expand(4, 3)
    got, ref = both(obj, tmp_path, pickle_protocol=protocol, _use_new_zipfile_serialization=zipfile)
    assert_same(got, ref)
    got_mmap = ptfile.load(tmp_path / "v.pt", mmap=True)
    assert_same(got_mmap, ref)
