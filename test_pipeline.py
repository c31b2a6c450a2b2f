"""The pipeline end to end on tiny runs: checkpoints, the sampling command line, sample
quality (evaluation.py), the autoregressive twin as a judge, and compare.py.

The proofs of the math are in test_sedd.py and test_sampling.py, the data in test_prepare.py, the
optimiser step in test_step.py, the training loop in test_train.py and the CUDA path in
test_device.py; tiny models and the tiny run come from testing.py. CPU only, no network.
"""
import io
import itertools
import json
import math
import os
import sys
import types
from xml.etree import ElementTree

import pytest
import torch

import checkpoint
import compare
import evaluation
import prepare
import progress
import sampling
import train
from model import SEDD, SEDDConfig
from noise import NOISES, GeometricNoise, noise_config
from sampling import text_prompt
from testing import TINY_RUN, batch, randomized, tiny


# ---------------------------------------------------------------- model.py: checkpoints

def official_config(c):
    """config.json as the official release writes it (its whole hydra config)."""
    return {"ngpus": 8, "tokens": c.vocab_size - 1,
            "graph": {"type": "absorb", "file": "data", "report_all": False},
            "training": {"batch_size": 512, "accum": 1, "n_iters": 1300001, "ema": 0.9999},
            "data": {"train": "openwebtext", "valid": "wikitext103", "cache_dir": "data"},
            "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
            "optim": {"lr": 3e-4, "warmup": 2500},
            "model": {"name": "small", "type": "ddit", "hidden_size": c.n_embd, "cond_dim": c.cond_dim,
                      "length": c.block_size, "n_blocks": c.n_layer, "n_heads": c.n_head,
                      "scale_by_sigma": c.scale_by_sigma, "dropout": c.dropout}}


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "save_pretrained"])
def test_checkpoint_round_trip(tmp_path, fmt, float32):
    """The official layout (written here) and save_pretrained load back bit-for-bit through
    checkpoint.load, with the checkpoint's graph and noise schedule (a geometric one's sigma_min
    and sigma_max too) and the tokenizer of its meta.json."""
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
            pytest.importorskip("safetensors.torch").save_file(m.state_dict(),
                                                               str(path / "model.safetensors"))
    n_tokens = json.loads((path / "config.json").read_text())["tokens"]
    (path / "meta.json").write_text(json.dumps({"name": "tiny", "tokenizer": "chars", "n_tokens": n_tokens,
                                                "chars": [chr(97 + i) for i in range(n_tokens)]}))
    m2, graph, noise, meta = checkpoint.load(str(path))
    assert ((graph.name, type(noise)) == (kinds[0], NOISES[kinds[1]["type"]]) and m2.config == c
            and not m2.training)
    assert vars(noise) == ({"eps": 1e-3} if fmt != "save_pretrained"
                           else {"sigma_min": 1e-3, "sigma_max": 5.0})
    assert meta["name"] == "tiny" and graph.n_tokens == n_tokens
    # official checkpoints have none: GPT-2 BPE, which does not fit this vocabulary
    (path / "meta.json").unlink()
    with pytest.raises(ValueError, match=f"has {n_tokens} tokens but the tokenizer of GPT-2 BPE has 50257"):
        checkpoint.load(str(path))
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


class Reads(torch.Tensor):
    """Token ids that count how often they are read on the host (.tolist(), .item())."""
    count = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.count += func in (torch.Tensor.tolist, torch.Tensor.item)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_watch_reads_the_tokens_only_when_it_draws():
    """A read on the host waits for the device, so Watch reads x only at the steps it draws: each
    of its `lines`, every step when live; the animation's frames stay tensors until sampling ends,
    and a progress line reads nothing."""
    decode = lambda ids: "".join("abc_"[i] for i in ids)
    x = torch.tensor([[3, 1, 3]]).as_subclass(Reads)
    for kw, reads in ((dict(lines=3), 3), (dict(lines=3, live=True), 20), (dict(lines=0, frames=[]), 0)):
        Reads.count = 0
        watch = sampling.Watch(decode, 3, 20, stream=io.StringIO(), **kw)
        for step in range(1, 21):
            watch(step, x)
        assert Reads.count == reads, f"{Reads.count} reads for {kw}, not {reads}"
    assert len(kw["frames"]) == 20


def test_cli_runs_the_network_in_autocast(tmp_path, monkeypatch, capsys, float32):
    """--dtype auto (the default): the network under bf16 autocast where the device has bf16 units
    (mocked, so that any CPU says yes or no), float32 where it has none; --dtype float32 and
    bfloat16 choose. The draws are float64 either way."""
    SEDD(tiny(vocab_size=4, block_size=8)).save_pretrained(tmp_path, "absorb", {"type": "loglinear"})
    meta = dict(name="abc", tokenizer="chars", chars="abc", n_tokens=3)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    seen, forward = [], SEDD.forward

    def recording(self, *args):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return forward(self, *args)
    monkeypatch.setattr(SEDD, "forward", recording)
    argv = ["--ckpt", str(tmp_path), "--steps", "2", "--batch_size", "1", "--device", "cpu"]
    for bf16_units, flags, expected in ((True, [], torch.bfloat16), (False, [], torch.float32),
                                        (True, ["--dtype", "float32"], torch.float32),
                                        (False, ["--dtype", "bfloat16"], torch.bfloat16)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16_units)
        seen.clear()
        sampling.main(argv + flags)
        assert seen == [expected] * 3, f"{flags} with bf16 units {bf16_units}: the network ran in {seen}"
        assert f"network in {str(expected)[6:]}, draws in dtype float64" in capsys.readouterr().out


class Terminal(io.StringIO):
    """stderr as a terminal, where progress lines are drawn."""
    def isatty(self):
        return True


def test_progress_line_redraws_on_a_terminal_and_stays_quiet_in_a_log(monkeypatch):
    """One line redrawn in place with the steps done, the time elapsed and the time left (at the
    pace so far), at most twice a second and not in the first second, cleared at the last step;
    nothing at all when stderr is not a terminal."""
    for stream, expected in ((Terminal(), "\rsteps: 2/8, elapsed 0:02, about 0:06 left\033[K"
                                          "\rsteps: 4/8, elapsed 1:10, about 1:10 left\033[K\r\033[K"),
                             (io.StringIO(), "")):
        monkeypatch.setattr(sys, "stderr", stream)
        now = [0.0]
        monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
        bar = progress.Progress(8, "steps")
        for done, t in ((1, 0.5), (2, 2.0), (3, 2.2), (4, 70.0), (8, 75.0)):
            now[0] = t
            bar(done, None)  # a sampler's callback(step, x)
        assert stream.getvalue() == expected
    assert list(progress.progress([3, 1, 2], "items")) == [3, 1, 2]


def test_text_prompt_and_cli(tmp_path, capsys, monkeypatch, float32):
    encode = lambda s: [ord(c) - ord("a") for c in s]
    assert text_prompt(encode, 6, "ab", "c", spans={3: "d"}) == {0: 0, 1: 1, 5: 2, 3: 3}
    with pytest.raises(ValueError, match="overlaps"):
        text_prompt(encode, 6, "abc", spans={2: "x"})
    chars = " abcdefghij"
    # the zero-initialised network: the exact score of uniform text, so masks fill in gradually
    SEDD(tiny(vocab_size=len(chars) + 1, block_size=16)).save_pretrained(tmp_path, "absorb",
                                                                         {"type": "loglinear"})
    meta = dict(name="tiny", tokenizer="chars", chars=chars, n_tokens=len(chars))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    argv = ["--ckpt", str(tmp_path), "--steps", "20", "--batch_size", "3", "--device", "cpu", "--seed", "1"]
    texts = sampling.main(argv + ["--prefix", "abc", "--suffix", "j ij", "--show_steps", "3"])
    out = capsys.readouterr().out
    assert len(texts) == 3 and all(len(t) == 16 and t.startswith("abc") and t.endswith("j ij") for t in texts)
    assert out.count("step ") == 3 and "_" in out and "21 network evaluations" in out
    sampling.main(argv + ["--watch"])  # not a terminal here: 8 lines instead of redrawing
    assert capsys.readouterr().out.count("step ") == 8
    monkeypatch.setattr(sys, "stderr", Terminal())
    clock = itertools.count()  # a second per reading
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    sampling.main(argv)  # nothing printed per step: a progress line on a terminal instead
    assert "sampling steps: " in sys.stderr.getvalue() and "step " not in capsys.readouterr().out
    sampling.main(argv + ["--animate", str(tmp_path / "a.svg"), "--predictor", "first_hitting"])
    frames = ElementTree.parse(tmp_path / "a.svg").getroot().findall("{http://www.w3.org/2000/svg}g")
    # a frame per token, held
    assert len(frames) == 16 and 'fill="freeze"' in (tmp_path / "a.svg").read_text()
    for bad, msg in [(["--prefix", "abcdefghij", "--suffix", "abcdefghij"],
                      r"20 tokens \(prefix 10, suffix 10\) .* 16"),
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
    judge = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32,
                                                                 n_positions=8))
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
    assert (evaluation.unigram_entropy(torch.tensor([[5, 5, 5, 5], [0, 1, 2, 3]]))
            == pytest.approx(math.log(4) / 2))
    assert evaluation.unigram_entropy([[5, 5, 5, 5], [0, 1, 2, 3]]) == pytest.approx(math.log(4) / 2)


def test_real_word_rate_and_cli(tmp_path, capsys, float32):
    (tmp_path / "mat.txt").write_text("the cat sat on the mat " * 100)  # train: the first 90 copies
    prepare.main(["chars", "--src", str(tmp_path / "mat.txt"), "--out_dir", str(tmp_path)])
    words = evaluation.dataset_words(str(tmp_path / "mat"))
    assert words == "the cat sat on the mat".split() * 90
    vocabulary = set(words)
    # counted: the dog sat | (none) | cat mat on: 5 real of 6 (each sample's first and last are cut)
    assert (evaluation.real_word_rate(["xx the dog sat yy", "a b", " cut cat mat on cut "], vocabulary)
            == 5 / 6)
    with pytest.raises(ValueError, match="no word to check"):
        evaluation.real_word_rate(["a b", "c"], vocabulary)
    (tmp_path / "bpe").mkdir()
    (tmp_path / "bpe" / "meta.json").write_text(json.dumps(dict(name="bpe", tokenizer="gpt2",
                                                                n_tokens=50257)))
    with pytest.raises(ValueError, match="character-level"):
        evaluation.dataset_words(str(tmp_path / "bpe"))

    chars = " abcdefghijklmnopqrstuvwxyz"
    SEDD(tiny(vocab_size=len(chars) + 1, block_size=24)).save_pretrained(tmp_path / "ckpt", "absorb",
                                                                         {"type": "loglinear"})
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
    (tmp_path / "meta.json").write_text(json.dumps(dict(name="tiny", tokenizer="chars", chars=chars,
                                                        n_tokens=len(chars))))
    judge = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32,
                                                                 n_positions=16))
    asked = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda name: asked.append(name) or judge)
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
    (tmp_path / "judge" / "meta.json").write_text(json.dumps(dict(name="ab", tokenizer="chars", chars=chars,
                                                                  n_tokens=3)))
    texts = ["ab a", "bb  ba"]
    ids = [chars.index(c) for t in texts for c in t]
    expected = math.exp(-sum(math.log(q[i]) for i in ids) / len(ids))
    assert evaluation.twin_perplexity(texts, str(tmp_path / "judge")) == pytest.approx(expected, rel=1e-5)
    SEDD(tiny(vocab_size=4, block_size=16)).save_pretrained(tmp_path / "sedd", "absorb",
                                                            {"type": "loglinear"})
    (tmp_path / "sedd" / "meta.json").write_text((tmp_path / "judge" / "meta.json").read_text())
    with pytest.raises(ValueError, match="judge must be an autoregressive twin"):
        evaluation.twin_perplexity(texts, str(tmp_path / "sedd"))
    # the CLI: the twin samples (a prefix, nucleus); a diffusion model is judged by it
    texts = sampling.main(["--ckpt", str(tmp_path / "judge"), "--batch_size", "3", "--prefix", "ab",
                           "--top_p", "0.9"])
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
        train.train({**train.load_config([]), **TINY_RUN, "data_dir": tiny_data,
                     "out_dir": str(tmp_path / name), "max_iters": 2, "eval_interval": 2, **kw})
    compare.main(["--absorb", str(tmp_path / "absorb"), "--uniform", str(tmp_path / "uniform"),
                  "--ar", str(tmp_path / "ar"), "--data", os.path.join(tiny_data, "tiny"),
                  "--out", str(tmp_path / "cmp"), "--eval_seqs", "8", "--eval_n_t", "2", "--samples", "3",
                  "--steps", "2,4", "--span", "8", "--device", "cpu"])
    results = (tmp_path / "cmp" / "results.md").read_text()
    for row in ("| SEDD Absorb | <= ", "| SEDD Uniform | <= ", "| autoregressive twin | = ",
                "character 5-gram", "| SEDD Absorb 4 steps | 5 |",
                "| SEDD Absorb first hitting (exact) | 32 |", "| SEDD Uniform 32 steps | 33 |",
                "| twin, temperature 1 | 32 |", "| twin, nucleus 0.9 | 32 |", "| real val text | - | - |",
                "| SEDD Absorb, first hitting | prefix + suffix |", "| the removed text |"):
        assert row in results
    with pytest.raises(SystemExit, match="train it first"):
        compare.main(["--absorb", str(tmp_path / "missing")])
    compare.main(["--absorb", str(tmp_path / "absorb"), "--uniform", "", "--ar", str(tmp_path / "ar"),
                  "--data", os.path.join(tiny_data, "tiny"), "--out", str(tmp_path / "two"),
                  "--eval_seqs", "4", "--eval_n_t", "1", "--samples", "2", "--steps", "2", "--span", "8",
                  "--device", "cpu"])
    assert "SEDD Uniform" not in (tmp_path / "two" / "results.md").read_text()  # left out with --uniform ''


def test_curves_from_log_csv(tmp_path, capsys):
    """compare.py --curves reads each run's validation rows from log.csv (tokens, epochs, the bound
    and its standard error), tables the last and best of each and draws them against tokens or
    epochs; a log without those columns ends in one line."""
    header = ",".join(evaluation.Log.COLUMNS)
    runs = {"sedd": [(0, 4.75), (1000, 3.2), (2000, 2.9)], "twin": [(0, 4.75), (1000, 2.1), (2000, 2.6)]}
    for name, evals in runs.items():
        (tmp_path / name).mkdir()
        rows = [f"{it},{it * 2048},{it * 2048 / 1e6:.4f},,,,,{bits},0.02,{it / 10}" for it, bits in evals]
        training_row = "500,1024000,1.0240,3.5,1e-3,900,0.1,,,50"  # no validation: not on the curve
        (tmp_path / name / "log.csv").write_text("\n".join([header, training_row, *rows]))
    (tmp_path / "twin" / "config.json").write_text(json.dumps({"model": {"causal": True}}))
    for flag, png in (([], "tokens.png"), (["--epochs"], "epochs.png")):
        compare.main(["--curves", str(tmp_path / "sedd"), str(tmp_path / "twin"), "--png", str(tmp_path / png),
                      *flag])
        assert (tmp_path / png).stat().st_size > 10_000
    out = capsys.readouterr().out.splitlines()
    assert "| sedd | 2.900 +- 0.020 | 4.10M | 2.900 +- 0.020 | 4.10M |" in out
    assert "| twin (twin) | 2.600 +- 0.020 | 4.10M | 2.100 +- 0.020 | 2.05M |" in out
    assert "| twin (twin) | 2.600 +- 0.020 | 4.1 | 2.100 +- 0.020 | 2.0 |" in out  # against epochs
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "log.csv").write_text("iter,val_bits_per_token,val_se\n0,4.75,0.02\n")
    with pytest.raises(SystemExit, match="no evaluations with tokens and epochs"):
        compare.main(["--curves", str(tmp_path / "old")])


def test_log_resumed_from_an_older_layout(tmp_path):
    """A resumed run's Log keeps the rows up to the checkpoint's iteration (a row cut mid-write
    goes) and rewrites them in the current columns by name: a log begun by an older train.py,
    without tokens and epochs, gets them from its iterations, and the new rows share its layout;
    rows that have them keep them."""
    (tmp_path / "log.csv").write_text("iter,train_bits_per_token,lr,tokens_per_s,mfu,val_bits_per_token,val_se,"
                                      "elapsed_s\n0,,,,,4.75,0.02,1.0\n10,3.1,1e-3,900,0.1,,,2.0\n"
                                      "20,2.9,1e-3,900,0.1,,,3.0\n30,2.8,1e-3,900,0.1,,,4.0\n4")
    evaluation.Log(tmp_path, tokens_per_iter=64, unique_tokens=320, resumed_at=20).write(
        30, 4.5, train_bits_per_token="2.85")
    header, *rows = (tmp_path / "log.csv").read_text().splitlines()
    assert header.split(",") == evaluation.Log.COLUMNS
    assert rows == ["0,0,0.0000,,,,,4.75,0.02,1.0", "10,640,2.0000,3.1,1e-3,900,0.1,,,2.0",
                    "20,1280,4.0000,2.9,1e-3,900,0.1,,,3.0", "30,1920,6.0000,2.85,,,,,,4.5"]
    evaluation.Log(tmp_path, tokens_per_iter=128, unique_tokens=320, resumed_at=30)  # a doubled batch from here
    assert (tmp_path / "log.csv").read_text().splitlines()[1:] == rows  # kept rows keep their tokens
    (tmp_path / "log.csv").write_text("")  # killed before its header
    evaluation.Log(tmp_path, tokens_per_iter=64, unique_tokens=320, resumed_at=0)
    assert (tmp_path / "log.csv").read_text().splitlines() == [header]
