"""pytest's setup for this folder: the `float32` fixture, the `cuda` marker, the exercises' stubs.

- The test files compute in float64 by default; a test that builds a model takes `float32`,
  the default dtype of models and training, restored after the test.
- Tests that need a CUDA GPU carry @pytest.mark.cuda; `python -m pytest -m cuda` runs exactly
  them, and elsewhere they skip, saying why.
- EXERCISES.md names, for each coding exercise, the functions a student writes. With
  NANOSEDD_STUB="graph.py Absorbing.score_entropy,loss.py loss_fn" each named function raises
  NotImplementedError instead, as a student's empty answer would: test_pipeline.py checks that every
  exercise's Check fails then (and passes with the code as it is).
"""
import functools
import importlib
import os
import sys

import pytest
import torch


@pytest.fixture
def float32():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (python -m pytest -m cuda runs exactly these)")
    stubs = [item.split() for item in os.environ.get("NANOSEDD_STUB", "").split(",") if item.strip()]
    replaced = {}  # id of an original function -> its stub
    for path, name in stubs:
        owner = importlib.import_module(path.removesuffix(".py"))
        *outer, attr = name.split(".")
        for part in outer:  # Class.method
            owner = getattr(owner, part)
        original = getattr(owner, attr)

        @functools.wraps(original)  # the same name and signature, an empty body
        def stub(*args, _name=f"{path} {name}", **kwargs):
            raise NotImplementedError(f"{_name}: your code goes here")
        setattr(owner, attr, stub)
        replaced[id(original)] = stub
    if not replaced:
        return
    for module in [m for m in sys.modules.values() if m is not None]:  # names bound by `from x import name`
        for attr, value in list(vars(module).items()):
            if id(value) in replaced:
                setattr(module, attr, replaced[id(value)])
