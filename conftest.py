"""pytest's setup for this folder: shared fixtures, the `cuda` marker, the exercises' stubs.

- Tests compute in float64 (the autouse fixture `float64`); a test that builds a model takes
  `float32` instead, the default dtype of models and training. The dtype is restored after each
  test, and no test file sets it on import, so files run alone as in the whole suite. `gpt2_bpe`
  is an offline stand-in for GPT-2's BPE; `tiny_data` a small character corpus prepared once per
  test file.
- Tests that need a CUDA GPU carry @pytest.mark.cuda; `python -m pytest -m cuda` runs exactly
  them, and elsewhere they skip, saying why.
- EXERCISES.md names, for each coding exercise, the functions a student writes. With
  NANOSEDD_STUB="graph.py Absorbing.score_entropy,loss.py loss_fn" each named function raises
  NotImplementedError instead, as a student's empty answer would; with NANOSEDD_WRONG=name the
  wrong answer `name` of wrong_answers.py takes the place of the function it is written for, and
  with NANOSEDD_RIGHT=name one of its right answers written another way. test_exercises.py
  checks that every exercise's Check fails on the first two and passes on the third.
"""
import functools
import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

import prepare
import wrong_answers


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def float32(float64):  # after float64, whose teardown restores the dtype
    torch.set_default_dtype(torch.float32)


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture
def gpt2_bpe(monkeypatch):
    """A small byte-level BPE in GPT-2's layout (GPT-2's split pattern, a few merges,
    <|endoftext|> = 50256), registered as tiktoken's r50k_base so that prepare.gpt2_encoding
    returns it: the tests check what nanoSEDD does with an encoding, offline and without any file
    outside the repository; GPT-2's real ranks are tiktoken's to test."""
    import tiktoken
    import tiktoken.registry
    ranks = {bytes([b]): b for b in range(256)}
    for piece in (b"th", b"the", b" t", b" the", b"er", b"in", b"ing"):
        ranks[piece] = len(ranks)
    enc = tiktoken.Encoding("gpt2-test", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "r50k_base", enc)
    prepare.gpt2_encoding.cache_clear()
    yield enc
    prepare.gpt2_encoding.cache_clear()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    prepare.main(["chars", "--src", str(root / "corpus.txt"), "--name", "tiny", "--out_dir", str(root)])
    return str(root)


HERE = Path(__file__).resolve().parent
REPLACED = []  # (owner, attribute, the original function, what replaces it) while replaced


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (python -m pytest -m cuda runs exactly these)")
    for target, replacement in answers_from_the_environment():
        path, name = target.split()
        owner = importlib.import_module(path.removesuffix(".py"))
        *outer, attr = name.split(".")
        for part in outer:  # Class.method
            owner = getattr(owner, part)
        original = getattr(owner, attr)
        if replacement is None:
            @functools.wraps(original)  # the same name and signature, an empty body
            def replacement(*args, _name=target, **kwargs):
                raise NotImplementedError(f"{_name}: your code goes here")
        REPLACED.append((owner, attr, original, replacement))
    rebind({id(original): replacement for _, _, original, replacement in REPLACED})


def pytest_unconfigure(config):
    """The project's functions back in place, so that test_exercises.py can run many Checks, each
    with its own replacements, in one process."""
    rebind({id(replacement): original for _, _, original, replacement in REPLACED})
    REPLACED.clear()


def answers_from_the_environment():
    """("file.py Name", the function that takes its place; None for an empty answer)."""
    stubs = [(item.strip(), None) for item in os.environ.get("NANOSEDD_STUB", "").split(",") if item.strip()]
    wrong = [wrong_answers.WRONG[os.environ["NANOSEDD_WRONG"]]] if os.environ.get("NANOSEDD_WRONG") else []
    right = [wrong_answers.RIGHT[os.environ["NANOSEDD_RIGHT"]]] if os.environ.get("NANOSEDD_RIGHT") else []
    return stubs + wrong + right


def rebind(swaps):
    """Every binding of a function whose id is in `swaps` bound to what it maps to: the class or
    module that defines it, and each of this folder's modules that imported it by name
    (`from x import name`), wrong_answers.py excepted."""
    for owner, attr, *_ in REPLACED:
        if id(getattr(owner, attr)) in swaps:
            setattr(owner, attr, swaps[id(getattr(owner, attr))])
    ours = [m for name, m in list(sys.modules.items())
            if "." not in name and Path(getattr(m, "__file__", None) or "/").resolve().parent == HERE]
    for module in ours:
        if module is not wrong_answers:
            for attr, value in list(vars(module).items()):
                if id(value) in swaps:
                    setattr(module, attr, swaps[id(value)])
