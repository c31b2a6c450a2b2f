"""The pipeline, end to end on tiny runs: checkpoints, the command lines, sample quality,
data preparation, the training loop, the exercises, and (with a GPU) the CUDA path.

The exact proofs of the math are in test_sedd.py; its helpers (tiny models, exact scores) are
reused here. CPU only, no network: every corpus and every judge is made by the tests.
"""
import contextlib
import copy
import csv
import importlib
import importlib.util
import io
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

import bench
import compare
import evaluation
import model as M
import prepare
import sampling
import train
from graph import Absorbing, get_graph
from loss import loss_fn
from model import SEDD, SEDDConfig
from noise import GeometricNoise, LogLinearNoise, noise_config, noise_from_config
from prepare import char_splits, proportional
from sampling import sample, text_prompt
from test_sedd import batch, randomized, tiny

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- model.py: checkpoints

def official_config(c):
    """config.json as the official release writes it (its whole hydra config)."""
    return {"ngpus": 8, "tokens": c.vocab_size - 1, "graph": {"type": "absorb", "file": "data", "report_all": False},
            "training": {"batch_size": 512, "accum": 1, "n_iters": 1300001, "ema": 0.9999},
            "data": {"train": "openwebtext", "valid": "wikitext103", "cache_dir": "data"},
            "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20}, "optim": {"lr": 3e-4, "warmup": 2500},
            "model": {"name": "small", "type": "ddit", "hidden_size": c.n_embd, "cond_dim": c.cond_dim,
                      "length": c.block_size, "n_blocks": c.n_layer, "n_heads": c.n_head,
                      "scale_by_sigma": c.scale_by_sigma, "dropout": c.dropout}}


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "save_pretrained"])
def test_checkpoint_round_trip(tmp_path, fmt, float32):
    """The official layout (written here) and save_pretrained load back bit-for-bit, with the
    checkpoint's noise schedule (a geometric one's sigma_min and sigma_max too)."""
    path = tmp_path / "ckpt"
    if fmt == "save_pretrained":  # a uniform model
        c, noise = tiny(scale_by_sigma=False), GeometricNoise(sigma_min=1e-3, sigma_max=5.0)
        m = randomized(c, seed=3)
        m.save_pretrained(path, "uniform", noise_config(noise))
        assert json.loads((path / "config.json").read_text())["tokens"] == c.vocab_size
        kinds = ("uniform", {"type": "geometric", "sigma_min": 1e-3, "sigma_max": 5.0})
    else:  # official log-linear configs carry sigma_min and sigma_max, which that schedule ignores
        c, kinds = tiny(dropout=0.1), ("absorb", {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20})
        m = randomized(c)
        path.mkdir()
        (path / "config.json").write_text(json.dumps(official_config(c)))
        if fmt == "bin":
            torch.save(m.state_dict(), path / "pytorch_model.bin")
        else:
            pytest.importorskip("safetensors.torch").save_file(m.state_dict(), str(path / "model.safetensors"))
    m2 = SEDD.from_pretrained(str(path))
    assert (m2.graph_name, m2.noise_config) == kinds and m2.config == c and not m2.training
    noise = noise_from_config(m2.noise_config)
    assert vars(noise) == ({"eps": 1e-3} if fmt != "save_pretrained" else {"sigma_min": 1e-3, "sigma_max": 5.0})
    sa, sb = m.state_dict(), m2.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(m(*batch(c)), m2(*batch(c)))


def test_from_pretrained_clear_errors(tmp_path, monkeypatch, float32):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed; never online
    with pytest.raises(ImportError, match="pip install huggingface_hub safetensors"):
        SEDD.from_pretrained("louaaron/sedd-small")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a hub id"):
        SEDD.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SEDD.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="not an SEDD config"):
        SEDD.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(official_config(tiny())))
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        SEDD.from_pretrained(str(tmp_path))
    sd = SEDD(tiny()).state_dict()
    del sd["blocks.1.attn_out.weight"]
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(RuntimeError, match="do not match"):
        SEDD.from_pretrained(str(tmp_path))


# ---------------------------------------------------------------- sampling.py: the command line

def test_watch_redraws_in_place_and_falls_back_to_lines():
    decode = lambda ids: "".join("abc"[i] for i in ids)
    frames = [torch.tensor([[3, 3, 3]]), torch.tensor([[3, 1, 3]]), torch.tensor([[0, 1, 3]])]
    stream = io.StringIO()
    watch = sampling.Watch(decode, 3, 3, live=True, stream=stream)
    for step, x in enumerate(frames, 1):
        watch(step, x)
    out = stream.getvalue()
    assert out.count("\033[1F\033[J") == 2  # redrawn over the previous drawing, twice
    assert "\033[1;32mb\033[0m_" in out and "\033[1;32ma\033[0mb_" in out  # this step's tokens highlighted
    stream = io.StringIO()
    watch = sampling.Watch(decode, 3, 3, lines=1, stream=stream)  # not a terminal: plain lines
    for step, x in enumerate(frames, 1):
        watch(step, x)
    assert stream.getvalue() == "step     2/3: _b_\n"


def test_text_prompt_and_cli(tmp_path, capsys, float32):
    encode = lambda s: [ord(c) - ord("a") for c in s]
    assert text_prompt(encode, 6, "ab", "c", spans={3: "d"}) == {0: 0, 1: 1, 5: 2, 3: 3}
    with pytest.raises(ValueError, match="overlaps"):
        text_prompt(encode, 6, "abc", spans={2: "x"})
    chars = " abcdefghij"
    # the zero-initialised network: the exact score of uniform text, so masks fill in gradually
    SEDD(tiny(vocab_size=len(chars) + 1, block_size=16)).save_pretrained(tmp_path, "absorb", {"type": "loglinear"})
    meta = dict(name="tiny", tokenizer="chars", chars=chars, n_tokens=len(chars))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    argv = ["--ckpt", str(tmp_path), "--steps", "20", "--batch_size", "3", "--device", "cpu", "--seed", "1"]
    texts = sampling.main(argv + ["--prefix", "abc", "--suffix", "j ij", "--show_steps", "3"])
    out = capsys.readouterr().out
    assert len(texts) == 3 and all(len(t) == 16 and t.startswith("abc") and t.endswith("j ij") for t in texts)
    assert out.count("step ") == 3 and "_" in out and "21 network evaluations" in out
    sampling.main(argv + ["--watch"])  # not a terminal here: 8 lines instead of redrawing
    assert capsys.readouterr().out.count("step ") == 8
    sampling.main(argv + ["--animate", str(tmp_path / "a.svg"), "--predictor", "first_hitting"])
    frames = ElementTree.parse(tmp_path / "a.svg").getroot().findall("{http://www.w3.org/2000/svg}g")
    assert len(frames) == 16 and 'fill="freeze"' in (tmp_path / "a.svg").read_text()  # a frame per token, held
    for bad, msg in [(["--prefix", "abcdefghij", "--suffix", "abcdefghij"], r"20 tokens \(prefix 10, suffix 10\) .* 16"),
                     (["--prefix", "xyz"], "not in the vocabulary"), (["--length", "17"], "block_size 16")]:
        with pytest.raises(SystemExit, match=msg):
            sampling.main(argv + bad)
    with pytest.raises(SystemExit, match="neither a checkpoint directory nor a hub id"):
        sampling.main(["--ckpt", str(tmp_path / "missing")])


# ---------------------------------------------------------------- evaluation.py: sample quality


TEXTS = ["the quick brown fox jumps over the lazy dog and then sleeps in the warm sun",
         "a", "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
         "to be or not to be"]


class KnowsTheFuture(torch.nn.Module):
    """A (cheating) judge whose probabilities we know: at chunk position j it gives the true next
    token the logit j and every other token 0, so its NLL there is log(e^j + V - 1) - j. Its
    logits are float64, so the result is exact (a float32 sum over 50k logits is not)."""
    V = 50257

    def __init__(self, context):
        super().__init__()
        self.config = types.SimpleNamespace(n_positions=context)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.V, dtype=torch.float64)
        nxt = input_ids.roll(-1, dims=1)  # the next token (the wrapped last one is never scored)
        logits.scatter_(-1, nxt[..., None], torch.arange(T, dtype=torch.float64).expand(B, T)[..., None])
        return types.SimpleNamespace(logits=logits)


def test_generative_perplexity_matches_hand_computation(gpt2_bpe):
    context = 5
    lengths = [len(gpt2_bpe.encode(t)) for t in TEXTS]
    assert max(lengths) > 2 * context and 1 in lengths  # chunking and a lone token are exercised
    # chunks of `context` tokens; in each, positions 0 .. len - 2 are scored
    nll = [math.log(math.exp(j) + KnowsTheFuture.V - 1) - j
           for n in lengths for start in range(0, n, context) for j in range(min(context, n - start) - 1)]
    expected = math.exp(sum(nll) / len(nll))
    for batch_size in (1, 3, 64):  # padding must not change anything
        ppl = evaluation.generative_perplexity(TEXTS, KnowsTheFuture(context), batch_size=batch_size)
        assert ppl == pytest.approx(expected, rel=1e-12)


def test_generative_perplexity_errors(gpt2_bpe):
    with pytest.raises(ValueError, match="no token to score"):
        evaluation.generative_perplexity(["a", ""], KnowsTheFuture(8))
    with pytest.raises(ValueError, match="no token to score"):  # a context of 1 predicts nothing
        evaluation.generative_perplexity(TEXTS, KnowsTheFuture(1))


def test_generative_perplexity_with_tiny_gpt2_judge(gpt2_bpe, float32):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    judge = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=8))
    ppl = evaluation.generative_perplexity(TEXTS, judge, batch_size=2)
    assert math.isfinite(ppl) and ppl > 1
    # the same by hand: each chunk of at most 8 tokens alone through the judge
    nll, count = 0.0, 0
    for text in TEXTS:
        ids = gpt2_bpe.encode(text)
        for i in range(0, len(ids), 8):
            chunk = torch.tensor(ids[i:i + 8])[None]
            if chunk.shape[1] > 1:
                with torch.no_grad():
                    logits = judge(input_ids=chunk).logits[0, :-1]
                nll += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
                count += chunk.shape[1] - 1
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_generative_perplexity_names_the_missing_package(gpt2_bpe, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed; never online
    with pytest.raises(ImportError, match="pip install transformers"):
        evaluation.generative_perplexity(TEXTS, "gpt2-large")


def test_unigram_entropy():
    assert evaluation.unigram_entropy([3, 3, 3, 3]) == 0.0
    assert evaluation.unigram_entropy([0, 1, 0, 1]) == pytest.approx(math.log(2))
    p = torch.tensor([0.5, 0.25, 0.25])
    assert evaluation.unigram_entropy([7, 7, 1, 2]) == pytest.approx(-(p * p.log()).sum().item())
    # a batch: the mean of the per-sample entropies (0 and log 4), not the pooled entropy
    assert evaluation.unigram_entropy(torch.tensor([[5, 5, 5, 5], [0, 1, 2, 3]])) == pytest.approx(math.log(4) / 2)
    assert evaluation.unigram_entropy([[5, 5, 5, 5], [0, 1, 2, 3]]) == pytest.approx(math.log(4) / 2)


def test_real_word_rate_and_cli(tmp_path, capsys, float32):
    (tmp_path / "mat.txt").write_text("the cat sat on the mat " * 100)  # train: the first 90 copies
    prepare.main(["chars", "--src", str(tmp_path / "mat.txt"), "--out_dir", str(tmp_path)])
    words = evaluation.dataset_words(str(tmp_path / "mat"))
    assert words == "the cat sat on the mat".split() * 90
    vocabulary = set(words)
    # counted: the dog sat | (none) | cat mat on: 5 real of 6 (each sample's first and last are cut)
    assert evaluation.real_word_rate(["xx the dog sat yy", "a b", " cut cat mat on cut "], vocabulary) == 5 / 6
    with pytest.raises(ValueError, match="no word to check"):
        evaluation.real_word_rate(["a b", "c"], vocabulary)
    (tmp_path / "bpe").mkdir()
    (tmp_path / "bpe" / "meta.json").write_text(json.dumps(dict(name="bpe", tokenizer="gpt2", n_tokens=50257)))
    with pytest.raises(ValueError, match="character-level"):
        evaluation.dataset_words(str(tmp_path / "bpe"))

    chars = " abcdefghijklmnopqrstuvwxyz"
    SEDD(tiny(vocab_size=len(chars) + 1, block_size=24)).save_pretrained(tmp_path / "ckpt", "absorb", {"type": "loglinear"})
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps(dict(name="az", tokenizer="chars", chars=chars,
                                                                 n_tokens=len(chars))))
    argv = ["--ckpt", str(tmp_path / "ckpt"), "--steps", "8", "--batch_size", "3", "--prefix", "the cat sat "]
    texts = sampling.main(argv + ["--real_words", str(tmp_path / "mat")])
    rate = evaluation.real_word_rate(texts, vocabulary)
    assert rate > 0 and f"real words {rate:.1%} " in capsys.readouterr().out
    for bad, msg in [("missing", "prepare the dataset first"), ("bpe", "character-level")]:
        with pytest.raises(SystemExit, match=msg):
            sampling.main(argv + ["--real_words", str(tmp_path / bad)])


def test_cli_gen_ppl(tmp_path, capsys, monkeypatch, gpt2_bpe, float32):
    transformers = pytest.importorskip("transformers")
    chars = " abcdefghij"
    torch.manual_seed(0)
    SEDD(SEDDConfig(vocab_size=len(chars) + 1, n_embd=32, cond_dim=16, n_layer=1, n_head=2, block_size=24,
                    dropout=0.0)).save_pretrained(tmp_path, "absorb", {"type": "loglinear"})
    (tmp_path / "meta.json").write_text(json.dumps(dict(name="tiny", tokenizer="chars", chars=chars, n_tokens=len(chars))))
    judge = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16))
    asked = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda name: asked.append(name) or judge)
    argv = ["--ckpt", str(tmp_path), "--steps", "8", "--batch_size", "3", "--device", "cpu"]
    texts = sampling.main(argv + ["--gen_ppl"])
    out = capsys.readouterr().out
    assert asked == ["gpt2-large"]  # the default judge
    assert evaluation.generative_perplexity(texts, judge) == pytest.approx(
        float(out.split("generative perplexity ")[1].split()[0]), rel=1e-2)
    assert "first token is not scored" in out and "unigram entropy" in out
    sampling.main(argv + ["--gen_ppl", "gpt2"])
    assert asked[-1] == "gpt2"


def test_twin_as_judge_and_cli(tmp_path, capsys, float32):
    """A twin whose output ignores the context (blocks at their adaLN-zero start, output bias
    log q) gives every character the law q: its perplexity is exp(-mean log q(c)) by hand."""
    chars, q = " ab", torch.tensor([0.5, 0.3, 0.2])
    model = SEDD(tiny(vocab_size=4, causal=True, scale_by_sigma=False, block_size=16))
    with torch.no_grad():
        model.output_layer.linear.bias[:3] = q.log()
    model.save_pretrained(tmp_path / "judge")
    (tmp_path / "judge" / "meta.json").write_text(json.dumps(dict(name="ab", tokenizer="chars", chars=chars, n_tokens=3)))
    texts = ["ab a", "bb  ba"]
    ids = [chars.index(c) for t in texts for c in t]
    expected = math.exp(-sum(math.log(q[i]) for i in ids) / len(ids))
    assert evaluation.twin_perplexity(texts, str(tmp_path / "judge")) == pytest.approx(expected, rel=1e-5)
    SEDD(tiny(vocab_size=4, block_size=16)).save_pretrained(tmp_path / "sedd", "absorb", {"type": "loglinear"})
    (tmp_path / "sedd" / "meta.json").write_text((tmp_path / "judge" / "meta.json").read_text())
    with pytest.raises(ValueError, match="judge must be an autoregressive twin"):
        evaluation.twin_perplexity(texts, str(tmp_path / "sedd"))
    # the CLI: the twin samples (a prefix, nucleus); a diffusion model is judged by it
    texts = sampling.main(["--ckpt", str(tmp_path / "judge"), "--batch_size", "3", "--prefix", "ab", "--top_p", "0.9"])
    out = capsys.readouterr().out
    assert len(texts) == 3 and all(len(t) == 16 and t.startswith("ab") for t in texts)
    assert "left to right, nucleus top_p=0.9, 14 network evaluations" in out
    with pytest.raises(SystemExit, match="continues a prefix"):
        sampling.main(["--ckpt", str(tmp_path / "judge"), "--suffix", "ab"])
    sampling.main(["--ckpt", str(tmp_path / "sedd"), "--steps", "8", "--gen_ppl", str(tmp_path / "judge")])
    assert "per token of the twin" in capsys.readouterr().out


def test_compare_end_to_end(tiny_data, tmp_path, float32):
    """compare.py on three tiny runs (SEDD Absorb, SEDD Uniform, the twin) writes every table."""
    for name, kw in (("absorb", {}), ("uniform", {"graph": "uniform"}), ("ar", {"ar": True})):
        train.train({**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path / name),
                     "max_iters": 2, "eval_interval": 2, **kw})
    compare.main(["--absorb", str(tmp_path / "absorb"), "--uniform", str(tmp_path / "uniform"),
                  "--ar", str(tmp_path / "ar"), "--data", os.path.join(tiny_data, "tiny"), "--out", str(tmp_path / "cmp"),
                  "--eval_seqs", "8", "--eval_n_t", "2", "--samples", "3", "--steps", "2,4", "--span", "8", "--device", "cpu"])
    results = (tmp_path / "cmp" / "results.md").read_text()
    for row in ("| SEDD Absorb | <= ", "| SEDD Uniform | <= ", "| autoregressive twin | = ", "character 5-gram",
                "| SEDD 4 steps | 5 |", "| SEDD first hitting (exact) | 32 |", "| twin, temperature 1 | 32 |", "| twin, nucleus 0.9 | 32 |", "| real val text | - | - |",
                "| SEDD Absorb, first hitting | prefix + suffix |", "| the removed text |"):
        assert row in results
    with pytest.raises(SystemExit, match="train it first"):
        compare.main(["--absorb", str(tmp_path / "missing")])
    compare.main(["--absorb", str(tmp_path / "absorb"), "--uniform", "", "--ar", str(tmp_path / "ar"), "--data",
                  os.path.join(tiny_data, "tiny"), "--out", str(tmp_path / "two"), "--eval_seqs", "4", "--eval_n_t", "1",
                  "--samples", "2", "--steps", "2", "--span", "8", "--device", "cpu"])
    assert "SEDD Uniform" not in (tmp_path / "two" / "results.md").read_text()  # left out with --uniform ''


# ---------------------------------------------------------------- prepare.py


def text8_like(n, seed):
    return "".join(np.random.default_rng(seed).choice(list(" abcdefghijklmnopqrstuvwxyz"), size=n))


def write_zip(path, text, member="text8"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, text)
    return str(path)


def read_splits(out, splits=("train", "val", "test")):
    """meta.json, the splits' token arrays, and the text of all splits in order, decoded."""
    meta = prepare.load_meta(out)
    bins = {s: np.fromfile(os.path.join(out, s + ".bin"), dtype=meta["dtype"]) for s in splits}
    return meta, bins, prepare.get_tokenizer(meta)[1](np.concatenate(list(bins.values())).tolist())


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


def test_toy_language_and_its_entropy(tmp_path):
    """prepare.py toy: a Markov chain whose samples look like words; the entropy it records for
    windows of L tokens equals -sum p log2 p over all 14^3 windows of 3 (enumeration), and the
    corpus's transition frequencies are the chain's."""
    chars, P = prepare.toy_chain()
    assert np.allclose(P.sum(1), 1) and chars[0] == " "
    prepare.main(["toy", "--out_dir", str(tmp_path), "--n", "200000", "--block_size", "3"])
    meta, bins, text = read_splits(tmp_path / "toy")
    pi = np.linalg.matrix_power(P, 200)[0]  # the stationary law: every row of P^n converges to it
    windows = np.array(list(itertools.product(range(len(chars)), repeat=3)))
    p = pi[windows[:, 0]] * P[windows[:, 0], windows[:, 1]] * P[windows[:, 1], windows[:, 2]]
    p = p[p > 0]
    assert meta["entropy_bits_per_token"] == pytest.approx(-(p * np.log2(p)).sum() / 3, rel=1e-9)
    assert meta["entropy_first_bits"] == pytest.approx(-(pi * np.log2(pi)).sum(), rel=1e-9)
    ids = np.concatenate(list(bins.values()))
    counts = np.zeros_like(P)
    np.add.at(counts, (ids[:-1], ids[1:]), 1)
    assert np.abs(counts / counts.sum(1, keepdims=True) - P).max() < 0.02
    words = text.split()
    assert 3 < np.mean([len(w) for w in words]) < 6 and len(set(words)) > 1000


def test_text8_partial_corpus_refused_then_proportional_and_idempotent(tmp_path, capsys, monkeypatch):
    text = text8_like(10_000, 0)
    src, out = write_zip(tmp_path / "small.zip", text), tmp_path / "data"
    with pytest.raises(SystemExit, match="--proportional") as e:
        prepare.main(["text8", "--src", src, "--out_dir", str(out)])
    assert "10,000 characters" in str(e.value) and "100,000,000" in str(e.value)
    assert not (out / "text8" / "meta.json").exists()
    prepare.main(["text8", "--src", src, "--out_dir", str(out), "--proportional"])
    meta, _, decoded = read_splits(out / "text8")
    assert meta["chars"] == list(" abcdefghijklmnopqrstuvwxyz") and meta["n_tokens"] == 27 and decoded == text
    assert meta["counts"] == {"train": 9000, "val": 500, "test": 500} and meta["dtype"] == "uint16"
    assert "proportional" in meta["split"] and "not the standard" in meta["split"]
    assert prepare.get_tokenizer(meta)[0]("ab z") == [1, 2, 0, 26]
    # a finished dataset is not rebuilt, even from another source, unless --force
    train_bin = out / "text8" / "train.bin"
    before = (train_bin.read_bytes(), train_bin.stat().st_mtime_ns)
    src2 = write_zip(tmp_path / "other.zip", text8_like(10_000, 1))
    prepare.main(["text8", "--src", src2, "--out_dir", str(out), "--proportional"])
    assert "already prepared" in capsys.readouterr().out
    assert (train_bin.read_bytes(), train_bin.stat().st_mtime_ns) == before
    prepare.main(["text8", "--src", src2, "--out_dir", str(out), "--proportional", "--force"])
    assert read_splits(out / "text8")[2] == text8_like(10_000, 1) and not list((out / "text8").glob("*.tmp"))
    # the standard split of a full corpus (here 1,000 characters), unzipped corpora accepted too
    monkeypatch.setattr(prepare, "TEXT8_SPLIT", (900, 50, 50))
    (tmp_path / "text8.txt").write_text(text8_like(1000, 2))
    prepare.main(["text8", "--src", str(tmp_path / "text8.txt"), "--out_dir", str(tmp_path / "full")])
    meta = prepare.load_meta(tmp_path / "full" / "text8")
    assert meta["counts"] == {"train": 900, "val": 50, "test": 50} and meta["split"].startswith("standard")


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (("abc", "enwik8"), "no member named 'text8'"),
    (("hello World",), "other than a-z and space"), (b"PK\x03\x04 truncated", "not a valid zip")])
def test_text8_bad_input(tmp_path, content, message):
    src = tmp_path / "text8.zip"
    if isinstance(content, bytes):
        src.write_bytes(content)
    elif content:
        write_zip(src, *content)
    with pytest.raises(SystemExit, match=message):
        prepare.main(["text8", "--src", str(src), "--out_dir", str(tmp_path), "--proportional"])
    assert not (tmp_path / "text8" / "meta.json").exists()


def test_chars_round_trip_errors_and_large_vocabulary(tmp_path):
    text = "Où est la gare ?\r\nÀ gauche, 200 m — merci !\n" * 30
    (tmp_path / "french.txt").write_bytes(text.encode("utf-8"))
    prepare.main(["chars", "--src", str(tmp_path / "french.txt"), "--out_dir", str(tmp_path)])
    meta, bins, decoded = read_splits(tmp_path / "french")
    assert meta["chars"] == sorted(set(text)) and meta["n_tokens"] == len(set(text)) and decoded == text
    encode = prepare.get_tokenizer(meta)[0]
    assert encode(text) == np.concatenate(list(bins.values())).tolist()
    with pytest.raises(ValueError, match="'€'"):
        encode("5 €")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SystemExit, match="empty.txt is empty"):
        prepare.main(["chars", "--src", str(tmp_path / "empty.txt"), "--out_dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="python prepare.py chars"):
        prepare.load_meta(tmp_path / "empty")
    (tmp_path / "big.txt").write_text("".join(map(chr, range(0x10000, 0x10000 + 70_000))), encoding="utf-8")
    prepare.main(["chars", "--src", str(tmp_path / "big.txt"), "--out_dir", str(tmp_path)])
    meta, bins, _ = read_splits(tmp_path / "big")  # 70,000 distinct characters: uint32
    assert meta["dtype"] == "uint32" and bins["test"].max() == 69_999


def test_interrupted_rebuild_never_looks_finished(tmp_path):
    src, out = tmp_path / "a.txt", tmp_path / "a"
    src.write_text("hello world\n" * 100)
    prepare.main(["chars", "--src", str(src), "--out_dir", str(tmp_path)])

    def killed():  # a --force rebuild killed while writing
        yield np.zeros(10, dtype=np.uint16)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        prepare.write_dataset(str(out), {"train": killed()}, prepare.load_meta(out))
    assert not (out / "meta.json").exists() and (out / "train.bin.tmp").exists()
    with pytest.raises(SystemExit, match="no meta.json"):  # old bins, no meta: not silently reused
        prepare.main(["chars", "--src", str(src), "--out_dir", str(tmp_path)])
    prepare.main(["chars", "--src", str(src), "--out_dir", str(tmp_path), "--force"])
    assert read_splits(out)[2] == src.read_text()


def test_owt_path_packs_documents_with_eot(tmp_path, gpt2_bpe):
    docs = ["Hello world.", "A document mentioning <|endoftext|> as text.", "Ünïcode ☃\n\nend"]
    prepare.write_gpt2_dataset(str(tmp_path / "owt"), {"train": [{"text": d} for d in docs], "val": docs[:1]},
                               {"name": "owt-test", "source": "test", "split": "test"})
    expected = [t for d in docs for t in gpt2_bpe.encode_ordinary(d) + [50256]]
    meta, bins, _ = read_splits(tmp_path / "owt", ("train", "val"))
    assert bins["train"].tolist() == expected and bins["train"][-1] == 50256 and (bins["train"] == 50256).sum() == 3
    assert bins["val"].tolist() == expected[:expected.index(50256) + 1]  # the first document
    assert meta["tokenizer"] == "gpt2" and meta["n_tokens"] == 50257 and meta["dtype"] == "uint16"
    encode, decode = prepare.get_tokenizer(meta)
    assert decode(bins["train"].tolist()) == "".join(d + "<|endoftext|>" for d in docs)
    # the, space, th, ing (merges by rank: th before " t", in before ing), then the separator
    assert encode("the thing<|endoftext|>") == [257, 32, 256, 262, 50256]


def test_detokenizers():
    wt = prepare.wikitext_detokenizer
    assert wt(" = = Early life = = \n") == " == Early life ==\n"
    assert (wt("The 2 @,@ 000 @-@ strong army , led by Smith 's son ( John ) , won 3 @.@ 5 % . \n")
            == "The 2,000-strong army, led by Smith's son (John), won 3.5 %.\n")
    assert (prepare.ptb_detokenizer("the firm 's stock fell N N to $ N and it does n't <unk> it")
            == "the firm's stock fell 1 1 to $1 and it doesn't ? it")
    assert (prepare.lm1b_detokenizer("Visit http : / / example.com , it costs $ 5 today .")
            == "Visit http://example.com, it costs $5 today.")
    assert prepare.lm1b_detokenizer('He said " fine " , then left') == 'He said "fine", then left'
    assert prepare.lambada_detokenizer("\u201cHi,\u201d she said.  \n") == '\n"Hi," she said.'


def test_zeroshot_path_writes_1024_token_rows(tmp_path, gpt2_bpe):
    lines = ["", " = Valkyria Chronicles III = \n", "",
             " The game 's battle system , the BliTZ system , is carried over directly from "
             "Valkyria Chronicles . During missions , players select each unit using a top @-@ "
             "down perspective of the battlefield map ( about 1 @,@ 000 units ) . \n"] * 40
    detok, info = prepare.wikitext_detokenizer, {"name": "wt", "source": "test", "split": "test"}
    meta = prepare.write_gpt2_dataset(str(tmp_path / "wt"), {"test": lines}, info, detokenizer=detok, block_size=1024)
    stream = [t for l in lines for t in gpt2_bpe.encode_ordinary(detok(l)) + [50256]]
    rows = np.fromfile(tmp_path / "wt" / "test.bin", dtype=np.uint16).reshape(-1, 1024)
    assert len(rows) == len(stream) // 1024 >= 2 and len(stream) % 1024 > 0  # tail dropped
    assert rows.ravel().tolist() == stream[:rows.size]
    assert meta["block_size"] == 1024 and meta["counts"] == {"test": rows.size}
    with pytest.raises(SystemExit, match="fewer than 1024 tokens"):
        prepare.write_gpt2_dataset(str(tmp_path / "tiny"), {"test": lines[:4]}, info, block_size=1024)


def test_zeroshot_sets_read_their_split(tmp_path, monkeypatch, gpt2_bpe):
    """WikiText-2's test split is WikiText-103's text, so wikitext2 reads its train split."""
    asked = []
    fake = types.ModuleType("datasets")  # the Hugging Face package, offline: each set one repeated row
    fake.Dataset = type("Dataset", (), {})
    fake.load_dataset = lambda repo, config, revision=None, split=None: (
        asked.append((config, split)) or [{"text": f" the {config} {split} text \n"}] * 400)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    for name in ("wikitext2", "wikitext2_test", "wikitext103"):
        prepare.main(["zeroshot", "--set", name, "--out_dir", str(tmp_path)])
    assert asked == [("wikitext-2-raw-v1", "train"), ("wikitext-2-raw-v1", "test"), ("wikitext-103-raw-v1", "test")]
    text = lambda name: read_splits(tmp_path / name, ("test",))[2]
    assert text("wikitext2").startswith(" the wikitext-2-raw-v1 train text\n<|endoftext|>")
    assert "train split" in prepare.load_meta(tmp_path / "wikitext2")["source"] and text("wikitext103") != text("wikitext2")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets installed")
@pytest.mark.parametrize("argv", [["owt"], ["zeroshot", "--set", "ptb"]])
def test_hub_commands_say_how_to_install_datasets(tmp_path, argv):
    with pytest.raises(SystemExit, match="pip install datasets"):
        prepare.main(argv + ["--out_dir", str(tmp_path)])


# ---------------------------------------------------------------- train.py


TINY_RUN = dict(dataset="tiny", block_size=32, batch_size=4, n_layer=2, n_head=2, n_embd=32, cond_dim=16,
                dropout=0.0, warmup_iters=2, learning_rate=1e-3, eval_batches=1, eval_n_t=2, sample_steps=4,
                dtype="float32", compile=False, device="cpu")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    prepare.main(["chars", "--src", str(root / "corpus.txt"), "--name", "tiny", "--out_dir", str(root)])
    return str(root)


def params(out_dir):
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=False)
    return torch.cat([p.flatten() for p in ckpt["model"].values()]), ckpt


def test_config_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown config key 'n_layers'.*'n_layer'"):
        train.load_config(["--n_layers=2"])
    with pytest.raises(SystemExit, match="n_layer in --n_layer=two must be int"):
        train.load_config(["--n_layer=two"])
    (tmp_path / "bad.py").write_text("learning_rat = 1e-3\n")
    with pytest.raises(SystemExit, match="unknown config key 'learning_rat'"):
        train.load_config([str(tmp_path / "bad.py")])
    assert train.load_config([str(HERE / "config" / "text8_tiny.py"), "--n_layer=3"])["n_layer"] == 3


def log_rows(out_dir):
    """log.csv without its timing columns (tokens/s, MFU)."""
    with open(os.path.join(out_dir, "log.csv")) as f:
        return [(r["iter"], r["train_bits_per_token"], r["lr"], r["val_bits_per_token"]) for r in csv.DictReader(f)]


def test_tiny_run_exact_resume_and_eval_only(tiny_data, tmp_path, capsys, float32):
    """A run stopped at an evaluation and resumed is the straight run, bit for bit: weights, EMA,
    AdamW state, the exported model, and log.csv (the resumed run does not evaluate again).
    Dropout is on, so its generator must be restored too. --eval_only then reproduces the last
    evaluation from the checkpoint's EMA weights."""
    def run(out_dir, **kw):
        cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(out_dir), "max_iters": 6,
               "eval_interval": 3, "log_interval": 3, "dropout": 0.2, **kw}
        train.train(cfg)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(straight)
    last_eval = capsys.readouterr().out.split("iter 6: val ELBO ")[1].split(" bits")[0]
    run(stopped, max_iters=3)
    run(stopped, init_from="resume")
    a, b = (torch.load(d / "ckpt.pt", weights_only=False) for d in (straight, stopped))
    assert a["iter_num"] == b["iter_num"] == 6
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert not torch.equal(a["model"]["blocks.0.attn_qkv.weight"], a["ema"]["blocks.0.attn_qkv.weight"])
    moments = lambda ckpt: [v for s in ckpt["optimizer"]["state"].values() for v in s.values()]
    assert all(torch.equal(x, y) for x, y in zip(moments(a), moments(b)))
    exported = [torch.load(d / "pytorch_model.bin") for d in (straight, stopped)]
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
    rows = log_rows(straight)
    assert rows == log_rows(stopped) and [r[0] for r in rows if r[3]] == ["0", "3", "6"]
    assert all((straight / f).exists() for f in ("config.json", "pytorch_model.bin", "meta.json", "log.csv"))
    assert SEDD.from_pretrained(str(straight)).graph_name == "absorb"  # the exported EMA weights load
    capsys.readouterr()
    run(straight, init_from="resume", eval_only=True)
    assert capsys.readouterr().out.strip().startswith(f"val ELBO {last_eval} bits per character")


def test_finetune_from_pretrained(tiny_data, tmp_path, monkeypatch, float32):
    """--init_from=pretrained:DIR trains in train mode with the configured dropout (from_pretrained
    returns an eval-mode model with the checkpoint's rate), with the checkpoint's shape and noise
    schedule (a geometric one's sigma_min and sigma_max), and exports that schedule again."""
    torch.manual_seed(0)
    pre = tmp_path / "pre"
    schedule = {"type": "geometric", "sigma_min": 1e-3, "sigma_max": 7.0}
    SEDD(SEDDConfig(vocab_size=29, n_embd=32, cond_dim=16, n_layer=1, n_head=2, block_size=32,
                    dropout=0.0)).save_pretrained(pre, "absorb", schedule)
    seen, real_loss_fn = [], train.loss_fn

    def spy(model, graph, noise, x0, **kw):
        rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        seen.append((model.training, rates, noise_config(noise)))
        return real_loss_fn(model, graph, noise, x0, **kw)
    monkeypatch.setattr(train, "loss_fn", spy)
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path / "ft"),
           "init_from": f"pretrained:{pre}", "dropout": 0.3, "max_iters": 2, "eval_interval": 2}
    train.train(cfg)
    assert seen == [(True, {0.3}, schedule)] * 2
    tuned = SEDD.from_pretrained(str(tmp_path / "ft"))
    assert tuned.config.n_layer == 1 and tuned.config.dropout == 0.3 and tuned.noise_config == schedule


class NoFloat64(TorchDispatchMode):
    """A device without float64, as Apple's MPS: every operation that makes a float64 tensor fails."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_leaves(out)):
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64")
        return out


def test_device_without_float64_trains_evaluates_and_samples(tiny_data, tmp_path, capsys, float32):
    with NoFloat64():
        with pytest.raises(TypeError):
            torch.zeros(1, dtype=torch.float64)  # the simulation works
        assert sampling.draw_dtype("cpu") is torch.float32
        cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path),
               "max_iters": 2, "eval_interval": 2}
        train.train(cfg)
        out = capsys.readouterr().out
        assert out.count("has no float64") == 1 and out.count("val ELBO") == 2 and out.count("sample:") == 2
        sampling.main(["--ckpt", str(tmp_path), "--steps", "4", "--batch_size", "2", "--device", "cpu"])
        assert "dtype float32" in capsys.readouterr().out


def test_throughput_counts_only_timed_iterations(tiny_data, tmp_path, monkeypatch, float32):
    """tokens/s = tokens of the iterations since the last log or evaluation / their time: with a
    clock that advances 1 s per training step and stands still otherwise, every row reads the
    tokens of one iteration, also when eval_interval is not a multiple of log_interval."""
    clock, real_step = [0.0], train.Trainer.step

    def step(self):
        clock[0] += 1.0
        return real_step(self)
    monkeypatch.setattr(train.Trainer, "step", step)
    monkeypatch.setattr(train.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(train, "peak_flops", lambda device, dtype: 1e12)
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path), "max_iters": 8,
           "eval_interval": 3, "log_interval": 2}
    train.train(cfg)
    with open(tmp_path / "log.csv") as f:
        speeds = [r["tokens_per_s"] for r in csv.DictReader(f) if r["tokens_per_s"]]
    assert speeds == [str(4 * 32)] * 4


def test_learning_rate_schedule():
    cfg = dict(learning_rate=1.0, warmup_iters=4, decay_lr=False, min_lr=0.1, max_iters=14)
    assert [train.lr_at(cfg, i) for i in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    cfg["decay_lr"] = True  # cosine from 1 at the end of warmup to min_lr at max_iters
    assert [train.lr_at(cfg, i) for i in (4, 9, 14, 20)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_trainer_step_ema_warmup_and_stratified_t(tiny_data, float32):
    """The EMA after n updates follows ema <- d ema + (1 - d) w with d = min(decay, (1+n)/(10+n));
    the t of a global batch of n sequences has one value in each of the n strata, shuffled."""
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "gradient_accumulation_steps": 2}
    torch.manual_seed(0)
    graph, noise, data = get_graph("absorb", 28), LogLinearNoise(), train.Data(cfg, "train")
    model = train.build_model(cfg, graph.dim)
    run = train.Trainer(cfg, model, graph, noise, data, torch.device("cpu"))
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(1, 4):
        run.step()
        d = min(cfg["ema_decay"], (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    assert all(torch.allclose(e, p, rtol=1e-5, atol=1e-7) for e, p in zip(expected, run.ema_model.parameters()))

    generator, orders = torch.Generator().manual_seed(0), set()
    for _ in range(20):
        _, t, _ = train.draw_step(cfg, data, graph, noise, generator)
        strata = ((t - cfg["sampling_eps"]) / (1 - cfg["sampling_eps"]) * 8).floor().long()
        assert sorted(strata.tolist()) == list(range(8))
        orders.add(tuple(strata.tolist()))
    assert len(orders) > 10  # shuffled differently each time


def test_random_windows_reach_the_last_token(tmp_path):
    meta = {"name": "count", "tokenizer": "chars", "chars": list("abcdefgh"), "n_tokens": 8, "split": "test"}
    prepare.write_dataset(str(tmp_path / "count"), {"train": [np.arange(6)], "val": [np.arange(4)],
                                                    "test": [np.arange(3)]}, meta)
    cfg = {**train.load_config([]), "data_dir": str(tmp_path), "dataset": "count", "block_size": 4}
    windows = train.Data(cfg, "train").random_batch(200, torch.Generator().manual_seed(0))
    assert set(windows[:, 0].tolist()) == {0, 1, 2} and (windows.diff(dim=1) == 1).all()
    assert train.Data(cfg, "val").random_batch(3, torch.Generator()).tolist() == [[0, 1, 2, 3]] * 3
    with pytest.raises(SystemExit, match="fewer than block_size = 4"):
        train.Data(cfg, "test")


def markov_dataset(root, length, n=100_000, seed=0):
    """A first-order Markov chain on 3 characters (prepare.markov_corpus). Returns its exact
    entropy per token in windows of `length`, and that of i.i.d. tokens with the same marginal
    (what a model ignoring the context reaches)."""
    P = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.45, 0.45, 0.1]])
    ids, h_first, h_rate = prepare.markov_corpus(P, n, seed)
    meta = {"name": "markov", "tokenizer": "chars", "chars": list("abc"), "n_tokens": 3, "split": "90/5/5",
            "entropy_first_bits": h_first, "entropy_rate_bits": h_rate}
    prepare.write_dataset(str(root / "markov"), char_splits(ids, proportional(n)), meta)
    return (h_first + (length - 1) * h_rate) / length, h_first


@pytest.mark.parametrize("graph", ["absorb", "uniform", "ar"])
def test_training_reaches_the_entropy_of_a_known_source(graph, tmp_path, float32):
    """300 steps on a Markov source drive the val ELBO (an upper bound on the model's NLL, and so
    on the source's entropy), or the twin's exact NLL, to within 0.1 bits per token of the exact
    entropy, far below what ignoring the context gives: the loss weighting, the bound and the
    optimiser step agree."""
    entropy, iid = markov_dataset(tmp_path, 16)
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": str(tmp_path), "dataset": "markov", "block_size": 16,
           "batch_size": 32, "graph": "absorb" if graph == "ar" else graph, "ar": graph == "ar",
           "learning_rate": 3e-3, "warmup_iters": 20, "ema_decay": 0.99, "max_iters": 300, "eval_interval": 300,
           "log_interval": 100, "eval_batches": 16, "eval_n_t": 16, "out_dir": str(tmp_path / "out")}
    train.train(cfg)
    assert (tmp_path / "out" / "loss.png").exists()  # the loss curves, drawn with matplotlib
    model = SEDD.from_pretrained(str(tmp_path / "out"))
    diffusion = None if graph == "ar" else get_graph(graph, 3)
    result = evaluation.evaluate(model, diffusion, LogLinearNoise(), train.Data(cfg, "val"), cfg,
                            torch.device("cpu"), contextlib.nullcontext())
    assert iid - entropy > 0.3 and entropy - 3 * result["bits_se"] < result["bits"] < entropy + 0.1
    assert f"the source's entropy {entropy:.4f}" in evaluation.report(result, train.Data(cfg, "val").meta, "val")


@pytest.mark.parametrize("args, message", [
    (["--graph=absorbing"], r"--graph=absorbing is not one of \['absorb', 'uniform'\]"),
    (["--noise=cosine"], "--noise=cosine is not one of"),
    (["--dtype=float16"], "loss scaling"),
    (["--n_head=5"], "must divide --n_embd=768"),
    (["--n_embd=96", "--n_head=32"], "heads of even size"),
    (["--batch_size=0"], "--batch_size must be at least 1"),
    (["--init_from=checkpoint"], "init_from must be"),
    (["--device=tpu"], "unknown device 'tpu'"),
    pytest.param(["--device=cuda"], "no CUDA GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA here")),
    (["--dataset=text8"], r"prepare the dataset first with `python prepare.py text8`"),
    (["--init_from=resume"], "ckpt.pt does not exist"),
])
def test_train_mistakes_end_in_one_line(args, message, tmp_path, tiny_data):
    data = tiny_data if "--init_from=resume" in args else str(tmp_path)
    with pytest.raises(SystemExit, match=message) as e:
        train.train(train.load_config([f"--data_dir={data}", "--dataset=tiny", f"--out_dir={tmp_path}", *args]))
    assert isinstance(e.value.code, str) and e.value.code.count("\n") < 3  # printed, exit status 1


def test_command_line_help_warnings_and_errors(tmp_path, tiny_data, capsys, float32):
    """--help lists every setting with its default and comment; mistakes end in one line on stderr
    with exit status 1 and no traceback (checked on real processes once), in every tool."""
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=120)
    done = run("train.py", "--help")
    assert done.returncode == 0 and all(f"--{key}=" in done.stdout for key in train.DEFAULTS)
    assert "--sampling_eps=0.001" in done.stdout and "t ~ U[sampling_eps, 1]" in done.stdout
    done = run("train.py", "config/text8_tiny.py", f"--data_dir={tmp_path}")
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "prepare.py text8" in done.stderr
    train.load_config(["--max_iters=10", "--warmup_iters=100"])
    assert "warning: max_iters=10 < warmup_iters=100" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "--rounds=5" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="prepare the dataset first"):
        bench.main([f"--data_dir={tmp_path}"])
    SEDD(tiny(vocab_size=29, block_size=16)).save_pretrained(tmp_path / "ckpt", "absorb", {"type": "loglinear"})
    shutil.copy(os.path.join(tiny_data, "tiny", "meta.json"), tmp_path / "ckpt")
    for bad, msg in [(["--steps", "0"], "--steps must be at least 1"), (["--batch_size", "0"], "--batch_size must be"),
                     (["--device", "tpu"], "unknown device 'tpu'")]:
        with pytest.raises(SystemExit, match=msg):
            sampling.main(["--ckpt", str(tmp_path / "ckpt"), *bad])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    train.save_atomic({"step": 1}, path)
    real_save = torch.save

    def crash(obj, f):  # half-written, then the process dies
        real_save(obj, f)
        with open(f, "r+b") as handle:
            handle.truncate(10)
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train.save_atomic({"step": 2}, path)
    assert torch.load(path)["step"] == 1


def test_torchrun_matches_single_process(tiny_data, tmp_path):
    """2 gloo processes with one micro-batch each = 1 process accumulating both micro-batches."""
    cfg = {**TINY_RUN, "data_dir": tiny_data, "max_iters": 4, "eval_interval": 100, "log_interval": 2,
           "gradient_accumulation_steps": 2}
    args = [f"--{k}={v}" for k, v in cfg.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *cmd: subprocess.run(cmd, cwd=HERE, env=env, check=True, capture_output=True, timeout=300)
    run(sys.executable, "train.py", *args, f"--out_dir={tmp_path / 'one'}")
    run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
        *args, f"--out_dir={tmp_path / 'two'}")
    a, b = params(tmp_path / "one")[0], params(tmp_path / "two")[0]
    assert (a - b).norm() / a.norm() < 1e-6


def test_evaluator_is_loss_fn_plus_prior(tiny_data, float32):
    """evaluation.evaluate = mean over sequences of loss_fn at elbo's stratified t (same RNG draws)
    plus the prior KL, in bits per token, with the standard error across sequences."""
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "eval_batches": 3, "eval_n_t": 4}
    torch.manual_seed(0)
    model = SEDD(SEDDConfig(vocab_size=29, n_embd=32, cond_dim=16, n_layer=1, n_head=2, block_size=32, dropout=0.0))
    with torch.no_grad():
        model.output_layer.linear.weight.normal_()  # a non-trivial score
    graph, noise, data = get_graph("absorb", 28), LogLinearNoise(), train.Data(cfg, "val")
    result = evaluation.evaluate(model, graph, noise, data, cfg, torch.device("cpu"), contextlib.nullcontext())
    torch.manual_seed(cfg["seed"])
    nats = []
    for x0 in data.eval_batches(3 * 4, 4):
        total = torch.zeros(len(x0), dtype=torch.float64)
        for k in range(4):
            total += loss_fn(model, graph, noise, x0, t=(k + 1 - torch.rand(len(x0))) / 4).double()
        nats.append(total / 4 + 32 * graph.prior_kl(noise(torch.tensor(1.0, dtype=torch.float64))[0]).item())
    nats = torch.cat(nats)
    # float32 network outputs, averaged in float32 (elbo) vs float64 here: agreement to ~1e-7
    assert result["n"] == 12 and result["bits"] == pytest.approx(nats.mean().item() / (32 * math.log(2)), rel=1e-6)
    assert result["bits_se"] == pytest.approx(nats.std().item() / math.sqrt(12) / (32 * math.log(2)), rel=1e-5)


# ---------------------------------------------------------------- EXERCISES.md


def test_every_exercise_grades_itself():
    """Each coding exercise's Check fails when the functions it names are empty (conftest.py's
    NANOSEDD_STUB replaces their bodies with raise NotImplementedError), so it selects tests that
    use them; those tests pass with the code as it is, in this same suite."""
    exercises = re.findall(r"^Implement: (.+)\nCheck: (.+)$", (HERE / "EXERCISES.md").read_text(), re.M)
    assert len(exercises) >= 8
    for implement, check in exercises:
        names = [item.strip() for item in implement.split(",")]
        for path, name in (item.split() for item in names):
            owner = importlib.import_module(path.removesuffix(".py"))
            for part in name.split("."):
                owner = getattr(owner, part)  # every named function exists
        command = shlex.split(check)
        assert command[:3] == ["python", "-m", "pytest"] and command[4] == "-k" and len(command) == 6
        assert command[3] in ("test_sedd.py", "test_pipeline.py")
        done = subprocess.run([sys.executable, *command[1:], "-x", "-q", "-p", "no:cacheprovider"], cwd=HERE,
                              env={**os.environ, "NANOSEDD_STUB": ",".join(names)}, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 1 and "your code goes here" in done.stdout, (implement, done.stdout[-1500:])


# ---------------------------------------------------------------- CUDA (python -m pytest -m cuda)


def on_cuda(test):
    """Marks a test `cuda` and skips it, saying why, where PyTorch sees no CUDA GPU."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    return pytest.mark.cuda(skip(test))


def cuda_step(model, x0, t, dtype):
    """The mean DWDSE of a batch at fixed t and x_t and its gradients, under autocast `dtype`."""
    graph, noise = Absorbing(model.config.vocab_size - 1), LogLinearNoise()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        loss = loss_fn(model, graph, noise, x0, t=t).mean()
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])


def cuda_model_and_batch(batch=8, length=256, seed=0):
    torch.manual_seed(seed)
    model = randomized(tiny(vocab_size=28, n_embd=256, n_head=4, n_layer=4, cond_dim=64, block_size=length), std=0.05)
    x0 = torch.randint(27, (batch, length), device="cuda")
    return model.cuda().train(), x0, torch.rand(batch, device="cuda").clamp(min=0.05)


@on_cuda
def test_cuda_bf16_step_matches_float32(float32):
    model, x0, t = cuda_model_and_batch()
    loss32, grad32 = cuda_step(model, x0, t, torch.float32)
    loss16, grad16 = cuda_step(model, x0, t, torch.bfloat16)
    assert abs(loss16 - loss32) < 2e-2 * abs(loss32)
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.99


@on_cuda
def test_cuda_compiled_step_matches_eager(float32):
    model, x0, t = cuda_model_and_batch()
    loss, grad = cuda_step(model, x0, t, torch.float32)
    loss_c, grad_c = cuda_step(torch.compile(model), x0, t, torch.float32)
    assert loss_c == pytest.approx(loss, rel=1e-4) and (grad_c - grad).norm() < 1e-3 * grad.norm()


@on_cuda
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_attention_matches_float32_softmax(causal, float32):
    """M.attention on CUDA in bf16 (FlashAttention when flash-attn is installed, else SDPA)
    against softmax(q k^T / sqrt(d)) v written out in float32."""
    torch.manual_seed(0)
    qkv = torch.randn(4, 128, 3, 8, 64, device="cuda")
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    logits = q @ k.transpose(-1, -2) / math.sqrt(64)
    if causal:
        logits = logits.masked_fill(torch.ones(128, 128, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
    ref = (logits.softmax(-1) @ v).transpose(1, 2).reshape(4, 128, 512)
    out = M.attention(qkv.bfloat16(), causal).float()
    assert (out - ref).abs().max() < 3e-2 * ref.abs().max()


@on_cuda
def test_cuda_sampling_draws_in_float64(float32):
    model = randomized(tiny(vocab_size=11), std=0.3).cuda()
    graph, noise = Absorbing(10), LogLinearNoise()
    assert sampling.draw_dtype(torch.device("cuda")) is torch.float64
    for predictor, steps in (("analytic", 16), ("first_hitting", None)):
        stats = {}
        x = sample(model, graph, noise, (4, 8), steps, predictor, prompt={2: 5}, device="cuda", stats=stats)
        assert x.is_cuda and (x < 10).all() and (x[:, 2] == 5).all()
    assert stats["network_evals"] == 7


@on_cuda
def test_cuda_resume_restores_the_cuda_generator(tiny_data, tmp_path, float32):
    """With dropout on, a resumed CUDA run follows the straight one (up to the float rounding of
    CUDA kernels): restoring only the CPU generator would change every dropout mask."""
    def run(out_dir, **kw):
        train.train({**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(out_dir),
                     "device": "cuda", "max_iters": 6, "eval_interval": 3, "log_interval": 3, "dropout": 0.2, **kw})
    run(tmp_path / "straight")
    run(tmp_path / "stopped", max_iters=3)
    run(tmp_path / "stopped", init_from="resume")
    a, b = params(tmp_path / "straight")[0], params(tmp_path / "stopped")[0]
    assert (a - b).norm() < 1e-5 * a.norm()


@on_cuda
def test_cuda_torchrun_nccl_trains(tiny_data, tmp_path):
    cfg = {**TINY_RUN, "device": "cuda", "data_dir": tiny_data, "max_iters": 2, "eval_interval": 2,
           "out_dir": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           "train.py", *[f"--{k}={v}" for k, v in cfg.items()]],
                          cwd=HERE, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert params(tmp_path)[1]["iter_num"] == 2


@on_cuda
def test_cuda_owt_small_step_fits_an_80gb_card(float32):
    """One bf16 training step at config/owt_small.py's per-GPU shape (32 x 1024 tokens, 50,258
    outputs): its peak memory, with the weights, EMA and AdamW state, leaves headroom on 80 GB."""
    cfg = train.load_config([str(HERE / "config" / "owt_small.py")])
    torch.cuda.reset_peak_memory_stats()
    model = train.build_model(cfg, 50258).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = copy.deepcopy(model).requires_grad_(False)  # held like train.py's: its memory counts
    x0 = torch.randint(50257, (cfg["batch_size"], cfg["block_size"]), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = loss_fn(model, Absorbing(50257), LogLinearNoise(), x0).mean()
    loss.backward()
    optimizer.step()
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"owt_small per-GPU step: peak {peak:.1f} GiB (batch {cfg['batch_size']} x {cfg['block_size']})")
    assert torch.isfinite(loss) and ema.training and peak < 70
