#!/usr/bin/env python3
"""Write the torch-made checkpoints of tests/formats.rs with their descriptions (needs torch).

usage: PY make_torch_data.py      # PY: a Python with torch (e.g. .venv/bin/python)

Files (each with NAME.json from tests/python/describe.py, i.e. what torch.load or
torch.jit.load returns):
  whole_module_legacy.pt  torch.save(module, _use_new_zipfile_serialization=False): the
                          module classes travel as ('module', cls, file, source) persistent ids.
  scripted_buffers.ptc    torch.jit.script of a module with BatchNorm buffers, a Linear without
                          bias (a None parameter), a non-persistent buffer, a ModuleList, a
                          plain tensor attribute (not state) and a submodule nested two deep.
  traced_constants.ptc    torch.jit.trace of a module whose forward uses a tensor constant
                          (constants.pkl with its own storage).
  numpy_values.pt,        numpy arrays (native and big-endian), scalars (float64 and
  numpy_values_p4.pt      complex128 are Python float/complex subclasses; the others numpy
                          types) and dtypes in a training-config-like dict, pickle protocols 2
                          and 4 (as published checkpoints such as SevenNet's carry them).
"""
import os
import subprocess
import sys

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2, bias=False)
        self.register_buffer("counter", torch.tensor([5], dtype=torch.int32))

    def forward(self, x):
        return self.proj(x)


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 1)
        self.bn = nn.BatchNorm1d(3)
        self.layers = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])
        self.inner = Inner()
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.scale = torch.tensor(2.0)  # a plain attribute, not a buffer

    def forward(self, x):
        y = self.bn(self.conv(x)).mean(-1)
        for layer in self.layers:
            y = layer(y)
        return self.inner(y) * self.scale


class WithConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x) + torch.tensor([0.25, -0.5])


def numpy_values():
    import argparse

    import numpy as np

    return {
        "config": {
            "shift": np.array([[-5.06, -4.13, 0.5]], dtype=np.float32),
            "counts": np.arange(6, dtype=np.int64).reshape(2, 3),
            "mask": np.array([True, False]),
            "big_endian": np.array([1.5, -2.0], dtype=">f4"),
            "lr": np.float64(0.001),
            "z": np.complex128(1.5 - 2j),
            "epochs": np.int32(7),
            "scale": np.float32(0.25),
            "flag": np.bool_(True),
            "dtype": np.dtype("float32"),
            "names": np.dtype("U3"),
        },
        "args": argparse.Namespace(seed=3, mode="train"),
        "weight": torch.arange(4.0),
    }


def main():
    torch.manual_seed(0)
    whole = WithBuffers()
    whole.bn.running_mean.fill_(0.5)
    files = []
    p = os.path.join(HERE, "whole_module_legacy.pt")
    torch.save(Inner(), p, _use_new_zipfile_serialization=False)
    files.append(p)
    p = os.path.join(HERE, "scripted_buffers.ptc")
    torch.jit.save(torch.jit.script(whole), p)
    files.append(p)
    p = os.path.join(HERE, "traced_constants.ptc")
    torch.jit.save(torch.jit.trace(WithConstant(), torch.ones(1, 2)), p)
    files.append(p)
    for name, protocol in [("numpy_values.pt", 2), ("numpy_values_p4.pt", 4)]:
        p = os.path.join(HERE, name)
        torch.save(numpy_values(), p, pickle_protocol=protocol)
        files.append(p)
    tool = os.path.join(ROOT, "tests", "python", "describe.py")
    for f in files:
        out = os.path.splitext(f)[0] + ".json"
        subprocess.run([sys.executable, tool, f, "--out", out], check=True)
        print("wrote", os.path.basename(f), os.path.basename(out))


if __name__ == "__main__":
    main()
