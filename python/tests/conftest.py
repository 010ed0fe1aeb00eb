"""Shared paths and helpers of the ptfile Python package's tests (run by tests/python_package.rs
after it builds and installs the wheel; or by hand: `pytest python/tests` with ptfile installed).
"""
import os
import pathlib
import warnings

import pytest

REPO = pathlib.Path(os.environ.get("PTFILE_REPO") or pathlib.Path(__file__).resolve().parents[2])
FIXTURES = REPO / "tests" / "fixtures"
DATA = REPO / "tests" / "data"
HOSTILE = REPO / "tests" / "hostile"


def checkpoint_files():
    """Every checkpoint shipped in tests/fixtures and tests/data."""
    files = []
    for d in (FIXTURES, DATA):
        files += sorted(p for p in d.iterdir() if p.suffix in (".pt", ".pth", ".ptc"))
    return files


def pytest_report_header(config):
    import ptfile
    import torch

    return [f"ptfile {ptfile.__version__} from {ptfile.__file__}", f"torch {torch.__version__}, repository {REPO}"]


@pytest.fixture
def quiet():
    """Silences torch's own warnings (TypedStorage, quantized, sparse beta) in a block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
