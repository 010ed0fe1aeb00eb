"""Deep comparison of what ptfile.load and torch.load return: types, values bit for bit,
tensor layout (dtype, shape, stride, storage offset, requires_grad, device, conj/neg bits,
quantization, sparse parts) and which tensors share a storage or are the same object."""

import collections
import math

import torch

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy comes with the test venv
    np = None


class Groups:
    """Tensors in visiting order, to compare storage sharing and object identity."""

    def __init__(self):
        self.storage = {}
        self.ident = {}
        self.storage_seq = []
        self.ident_seq = []
        self.keep = []  # ids stay unique while the objects live

    def add(self, t, identity=True):
        if t.layout == torch.strided and not t.is_quantized and t.device.type != "meta":
            s = t.untyped_storage()
            if s.nbytes() > 0:
                key = (str(s.device), s.data_ptr())
                self.storage_seq.append(self.storage.setdefault(key, len(self.storage)))
        if identity:
            self.keep.append(t)
            self.ident_seq.append(self.ident.setdefault(id(t), len(self.ident)))


def storage_bytes(t):
    s = t.untyped_storage()
    if s.device.type == "meta":
        return None
    if s.device.type != "cpu":
        s = s.cpu()
    return bytes(torch.empty(0, dtype=torch.uint8).set_(s).numpy().tobytes()) if s.nbytes() else b""


def same_float(a, b):
    if math.isnan(a) and math.isnan(b):
        return True
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def assert_same(a, b, path="root", ga=None, gb=None, identity=True):
    """`a` from ptfile, `b` from torch."""
    top = ga is None
    if top:
        ga, gb = Groups(), Groups()
    assert type(a) is type(b), f"{path}: type {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert_same_tensor(a, b, path, ga, gb, identity)
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{path}: keys {list(a)[:8]} != {list(b)[:8]}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]", ga, gb)
        ma, mb = getattr(a, "_metadata", None), getattr(b, "_metadata", None)
        if ma is not None or mb is not None:
            assert_same(ma, mb, f"{path}._metadata", ga, gb)
        if isinstance(a, collections.Counter):
            assert a == b
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]", ga, gb)
    elif isinstance(a, (set, frozenset)):
        assert a == b, f"{path}: {a} != {b}"
    elif isinstance(a, float):
        assert same_float(a, b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, complex):
        assert same_float(a.real, b.real) and same_float(a.imag, b.imag), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, torch.storage.TypedStorage):
        assert a.dtype == b.dtype and a.device == b.device and a.nbytes() == b.nbytes(), f"{path}: {a.dtype} {a.nbytes()} != {b.dtype} {b.nbytes()}"
        assert bytes(a._untyped_storage.cpu()) == bytes(b._untyped_storage.cpu()), f"{path}: storage bytes differ"
    elif np is not None and isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides, f"{path}: {a.dtype}{a.shape}{a.strides} != {b.dtype}{b.shape}{b.strides}"
        assert a.tobytes(order="A") == b.tobytes(order="A"), f"{path}: array bytes differ"
        assert a.flags.writeable == b.flags.writeable, f"{path}: writeable differs"
    elif np is not None and isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
    if top:
        assert ga.storage_seq == gb.storage_seq, f"storage sharing differs: ptfile {ga.storage_seq} torch {gb.storage_seq}"
        assert ga.ident_seq == gb.ident_seq, f"tensor identity differs: ptfile {ga.ident_seq} torch {gb.ident_seq}"


def assert_same_tensor(a, b, path, ga, gb, identity=True):
    ga.add(a, identity)
    gb.add(b, identity)
    assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} != {b.dtype}"
    assert a.layout == b.layout, f"{path}: layout {a.layout} != {b.layout}"
    assert a.shape == b.shape, f"{path}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert a.device == b.device, f"{path}: device {a.device} != {b.device}"
    assert a.requires_grad == b.requires_grad, f"{path}: requires_grad {a.requires_grad} != {b.requires_grad}"
    if identity and b._backward_hooks is not None:
        # (torch sets an empty OrderedDict where the file used _rebuild_tensor_v2 or v3, as
        # every torch since 0.4 writes; ptfile's model does not say which, so ptfile sets it
        # on every tensor, also those of torch < 0.4's _rebuild_tensor, where torch leaves None)
        ha, hb = a._backward_hooks, b._backward_hooks
        assert type(ha) is type(hb) and len(ha) == len(hb) == 0, f"{path}: _backward_hooks {ha!r} != {hb!r}"
    if a.layout != torch.strided:
        assert a.is_coalesced() == b.is_coalesced() if a.layout == torch.sparse_coo else True, f"{path}: is_coalesced differs"
        if a.layout == torch.sparse_coo:
            assert_same(a._indices(), b._indices(), f"{path}._indices()", ga, gb, False)
            assert_same(a._values(), b._values(), f"{path}._values()", ga, gb, False)
        else:
            if a.layout in (torch.sparse_csr, torch.sparse_bsr):
                pa, pb = (a.crow_indices(), a.col_indices()), (b.crow_indices(), b.col_indices())
            else:
                pa, pb = (a.ccol_indices(), a.row_indices()), (b.ccol_indices(), b.row_indices())
            for i, (x, y) in enumerate(zip(pa, pb)):
                assert_same(x, y, f"{path}.indices[{i}]", ga, gb, False)
            assert_same(a.values(), b.values(), f"{path}.values()", ga, gb, False)
        return
    assert a.stride() == b.stride(), f"{path}: stride {a.stride()} != {b.stride()}"
    assert a.storage_offset() == b.storage_offset(), f"{path}: storage_offset {a.storage_offset()} != {b.storage_offset()}"
    assert a.is_conj() == b.is_conj() and a.is_neg() == b.is_neg(), f"{path}: conj/neg bits differ"
    if a.is_quantized:
        assert a.qscheme() == b.qscheme(), f"{path}: qscheme"
        if a.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            assert a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point(), f"{path}: quantizer"
        else:
            assert torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales()), f"{path}: scales"
            assert torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points()), f"{path}: zero points"
            assert a.q_per_channel_axis() == b.q_per_channel_axis(), f"{path}: axis"
        assert a.untyped_storage().nbytes() == b.untyped_storage().nbytes(), f"{path}: storage size"
        assert storage_bytes(a) == storage_bytes(b), f"{path}: elements differ"
        return
    sa, sb = a.untyped_storage(), b.untyped_storage()
    assert sa.nbytes() == sb.nbytes(), f"{path}: storage nbytes {sa.nbytes()} != {sb.nbytes()}"
    if a.device.type != "meta":
        assert storage_bytes(a) == storage_bytes(b), f"{path}: elements differ"
