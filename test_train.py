"""The training loop: configs and their mistakes, exact resume (also of a killed run), fine-tuning,
a device without float64, throughput, limited unique data, training to a known entropy, the
command lines of train.py, bench.py and sampling.py, torchrun, the evaluator. The optimiser step
and its batch are tested in test_step.py, the CUDA path in test_device.py. Tiny models and the
tiny run TINY_RUN come from testing.py.
"""
import contextlib
import csv
import math
import os
import shutil
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

import bench
import checkpoint
import configurator
import device
import evaluation
import prepare
import sampling
import train
from graph import get_graph
from loss import loss_fn
from model import SEDD, SEDDConfig
from noise import LogLinearNoise, noise_config
from prepare import char_splits, proportional
from testing import TINY_RUN, tiny

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- train.py

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
    tiny = train.load_config([str(HERE / "config" / "text8_tiny.py"), "--n_layer=3"])
    assert tiny["n_layer"] == 3
    twin = train.load_config([str(HERE / "config" / "text8_tiny_ar.py")])  # include("text8_tiny.py") + 3 keys
    assert twin == {**tiny, "n_layer": 4, "ar": True, "out_dir": "out/text8_tiny_ar", "eval_interval": 100}


def log_rows(out_dir):
    """log.csv without its timing columns (tokens/s, MFU)."""
    with open(os.path.join(out_dir, "log.csv")) as f:
        return [(r["iter"], r["train_bits_per_token"], r["lr"], r["val_bits_per_token"])
                for r in csv.DictReader(f)]


def test_tiny_run_exact_resume_and_eval_only(tiny_data, tmp_path, capsys, float32):
    """A run stopped at an evaluation and resumed is the straight run, bit for bit: weights, EMA,
    AdamW state, the exported model, and log.csv (the resumed run does not evaluate again).
    Dropout is on, so its generator must be restored too. --eval_only then reproduces the last
    evaluation from the checkpoint's EMA weights. A second run from scratch into the same
    directory stops and changes nothing."""
    def run(out_dir, **kw):
        cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(out_dir),
               "max_iters": 6, "eval_interval": 3, "log_interval": 3, "dropout": 0.2, **kw}
        train.train(cfg)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(straight)
    last_eval = capsys.readouterr().out.split("iter 6: val ELBO ")[1].split(" bits")[0]
    before = {f: (straight / f).read_bytes() for f in ("ckpt.pt", "log.csv")}
    with pytest.raises(SystemExit, match="already holds a run .ckpt.pt, log.csv.: "
                                         "continue it with --init_from=resume"):
        run(straight)  # a second run from scratch would overwrite the first and append to its log
    assert before == {f: (straight / f).read_bytes() for f in before}
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
    assert checkpoint.load(str(straight))[1].name == "absorb"  # the exported EMA weights load
    capsys.readouterr()
    run(straight, init_from="resume", eval_only=True)
    assert capsys.readouterr().out.strip().startswith(f"val ELBO {last_eval} bits per character")


def test_killed_run_resumes_as_the_straight_run(tiny_data, tmp_path):
    """A run killed (SIGKILL) between checkpoints, with more log rows past its checkpoint than a
    file buffer holds, then resumed, is the straight run: log.csv row for row (no repeated or cut
    rows) and the weights bit for bit."""
    cfg = {**TINY_RUN, "data_dir": tiny_data, "n_layer": 1, "block_size": 16, "max_iters": 600,
           "eval_interval": 300, "log_interval": 1}
    command = [sys.executable, "train.py", *[f"--{k}={v}" for k, v in cfg.items()]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # same threads; lines at once
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    start = lambda out_dir, *args, **kw: subprocess.Popen([*command, f"--out_dir={out_dir}", *args], cwd=HERE,
                                                          env=env, **kw)
    straight_run = start(straight, stdout=subprocess.DEVNULL)
    with start(killed, stdout=subprocess.PIPE, text=True) as run:  # meanwhile, the same run, killed
        for line in run.stdout:
            if line.startswith("iter 550:"):  # 250 rows (10 KB) past the checkpoint at 300
                run.kill()
                break
    assert straight_run.wait(timeout=300) == 0
    assert params(killed)[1]["iter_num"] == 300 and int(log_rows(killed)[-1][0]) >= 549  # no row lost
    assert start(killed, "--init_from=resume", stdout=subprocess.DEVNULL).wait(timeout=300) == 0
    assert log_rows(killed) == log_rows(straight) and len(log_rows(straight)) == 600 + 3
    assert torch.equal(params(killed)[0], params(straight)[0])


def test_resume_from_a_checkpoint_between_evaluations(tiny_data, tmp_path, monkeypatch, float32):
    """--ckpt_interval also checkpoints between evaluations. A run stopped after such a checkpoint
    resumes there as the straight run, without an evaluation there, and its log drops the rows
    past the checkpoint."""
    def run(out_dir, **kw):
        train.train({**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(out_dir),
                     "max_iters": 8, "eval_interval": 4, "ckpt_interval": 3, "log_interval": 1, **kw})
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(straight)
    real_step = train.Trainer.step

    def step(self):  # the process dies during iteration 8, after logging iteration 7
        if self.iter_num == 7:
            raise KeyboardInterrupt
        return real_step(self)
    monkeypatch.setattr(train.Trainer, "step", step)
    with pytest.raises(KeyboardInterrupt):
        run(stopped)
    monkeypatch.undo()
    assert params(stopped)[1]["iter_num"] == 6 and log_rows(stopped)[-1][0] == "7"
    run(stopped, init_from="resume")
    rows = log_rows(straight)
    assert rows == log_rows(stopped) and [r[0] for r in rows if r[3]] == ["0", "4", "8"]
    assert torch.equal(params(straight)[0], params(stopped)[0])


def test_damaged_checkpoint_ends_in_one_line(tiny_data, tmp_path, float32):
    """A ckpt.pt cut short stops a resume with one line naming the file and the way on (the EMA
    weights exported beside it can start a new run), and changes nothing."""
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path)}
    train.train({**cfg, "max_iters": 0})  # a real checkpoint: the evaluation at iteration 0
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:4096])
    before = {f: f.read_bytes() for f in tmp_path.iterdir()}
    with pytest.raises(SystemExit) as e:
        train.train({**cfg, "init_from": "resume"})
    assert isinstance(e.value.code, str) and "\n" not in e.value.code  # printed, exit status 1
    assert f"{ckpt} is damaged (PytorchStreamReader failed reading zip archive" in e.value.code
    assert e.value.code.endswith(f"in another --out_dir with --init_from=pretrained:{tmp_path}")
    assert before == {f: f.read_bytes() for f in tmp_path.iterdir()}


def test_train_tokens_keeps_every_window_in_the_first_tokens(tmp_path, capsys, float32):
    """--train_tokens=N: every training window lies inside the first N tokens of the train split
    (repeated data), and the log says how many epochs of them a run has seen."""
    (tmp_path / "ab.txt").write_text("a" * 3000 + "b" * 7000)  # train split: 3,000 a, then 6,000 b
    prepare.main(["chars", "--src", str(tmp_path / "ab.txt"), "--name", "ab", "--out_dir", str(tmp_path)])
    cfg = {**train.load_config([]), "data_dir": str(tmp_path), "dataset": "ab", "block_size": 16}
    a = prepare.load_meta(str(tmp_path / "ab"))["chars"].index("a")
    generator = torch.Generator().manual_seed(0)
    limited = prepare.Data({**cfg, "train_tokens": 3000}, "train")
    limited = limited.windows(limited.random_starts(20_000, generator))
    assert (limited == a).all(), "a window reached past the first 3,000 tokens"
    everything = prepare.Data(cfg, "train")
    everything = everything.windows(everything.random_starts(100, generator))
    assert not (everything == a).all(), "without train_tokens, windows come from the whole split"
    train.train({**cfg, **TINY_RUN, "dataset": "ab", "block_size": 16, "train_tokens": 3000,
                 "out_dir": str(tmp_path / "run"), "max_iters": 4, "log_interval": 2, "eval_interval": 4})
    assert "0.09 epochs of 3,000 tokens" in capsys.readouterr().out
    with open(tmp_path / "run" / "log.csv") as f:  # each row: its tokens (4 x 16 per step) and epochs
        rows = [(r["iter"], r["tokens"], r["epochs"]) for r in csv.DictReader(f)]
    assert rows == [("0", "0", "0.0000"), ("2", "128", "0.0427"), ("4", "256", "0.0853"),
                    ("4", "256", "0.0853")]  # the last step's training row and its evaluation
    with pytest.raises(SystemExit, match="holds no window of block_size=16"):
        train.load_config(["--train_tokens=8", "--block_size=16"])


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
    tuned, _, tuned_noise, _ = checkpoint.load(str(tmp_path / "ft"))
    assert tuned.config.n_layer == 1 and tuned.config.dropout == 0.3 and noise_config(tuned_noise) == schedule


class NoFloat64(TorchDispatchMode):
    """A device without float64, as Apple's MPS: every operation that makes a float64 tensor fails."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_leaves(out)):
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework "
                            "doesn't support float64")
        return out


def test_device_without_float64_trains_evaluates_and_samples(tiny_data, tmp_path, capsys, float32):
    with NoFloat64():
        with pytest.raises(TypeError):
            torch.zeros(1, dtype=torch.float64)  # the simulation works
        assert device.draw_dtype("cpu") is torch.float32
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
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path),
           "max_iters": 8, "eval_interval": 3, "log_interval": 2}
    train.train(cfg)
    with open(tmp_path / "log.csv") as f:
        speeds = [r["tokens_per_s"] for r in csv.DictReader(f) if r["tokens_per_s"]]
    assert speeds == [str(4 * 32)] * 4


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
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": str(tmp_path), "dataset": "markov",
           "block_size": 16, "batch_size": 32, "graph": "absorb" if graph == "ar" else graph,
           "ar": graph == "ar", "learning_rate": 3e-3, "warmup_iters": 20, "ema_decay": 0.99,
           "max_iters": 300, "eval_interval": 300, "log_interval": 100, "eval_batches": 16, "eval_n_t": 16,
           "out_dir": str(tmp_path / "out")}
    train.train(cfg)
    assert (tmp_path / "out" / "loss.png").exists()  # the loss curves, drawn with matplotlib
    model = SEDD.from_pretrained(str(tmp_path / "out"))
    diffusion = None if graph == "ar" else get_graph(graph, 3)
    result = evaluation.evaluate(model, diffusion, LogLinearNoise(), train.Data(cfg, "val"),
                                 cfg["eval_batches"] * cfg["batch_size"], cfg["batch_size"], cfg["eval_n_t"],
                                 cfg["seed"], torch.device("cpu"), contextlib.nullcontext())
    assert iid - entropy > 0.3 and entropy - 3 * result["bits_se"] < result["bits"] < entropy + 0.1
    assert (f"the source's entropy {entropy:.4f}"
            in evaluation.report(result, train.Data(cfg, "val").meta, "val"))


@pytest.mark.parametrize("args, message", [
    (["--graph=absorbing"], r"--graph=absorbing is not one of \['absorb', 'uniform'\]"),
    (["--noise=cosine"], "--noise=cosine is not one of"),
    (["--dtype=float16"], "loss scaling"),
    (["--n_head=5"], "must divide --n_embd=768"),
    (["--n_embd=96", "--n_head=32"], "heads of even size"),
    (["--batch_size=0"], "--batch_size must be at least 1"),
    (["--init_from=checkpoint"], "init_from must be"),
    (["--ar_input_mask=0.2"], r"is for the autoregressive twin \(--ar=True\)"),
    (["--ar=True", "--ar_input_mask=1.0"], r"--ar_input_mask=1.0 must be in \[0, 1\)"),
    (["--device=tpu"], "unknown device 'tpu'"),
    pytest.param(["--device=cuda"], "no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA here")),
    (["--dataset=text8"], r"prepare the dataset first with `python prepare.py text8`"),
    (["--init_from=resume"], "ckpt.pt does not exist"),
])
def test_train_mistakes_end_in_one_line(args, message, tmp_path, tiny_data):
    data = tiny_data if "--init_from=resume" in args else str(tmp_path)
    with pytest.raises(SystemExit, match=message) as e:
        train.train(train.load_config([f"--data_dir={data}", "--dataset=tiny", f"--out_dir={tmp_path}",
                                       *args]))
    assert isinstance(e.value.code, str) and e.value.code.count("\n") < 3  # printed, exit status 1


def test_command_line_help_warnings_and_errors(tmp_path, tiny_data, capsys, float32):
    """--help lists every setting with its default and comment; mistakes end in one line on stderr
    with exit status 1 and no traceback (checked on real processes once), in every tool."""
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True,
                                       timeout=120)
    done = run("train.py", "--help")
    assert done.returncode == 0 and all(f"--{key}=" in done.stdout for key in configurator.DEFAULTS)
    assert "--sampling_eps=0.001" in done.stdout and "t ~ U[sampling_eps, 1]" in done.stdout
    done = run("train.py", "config/text8_tiny.py", f"--data_dir={tmp_path}", f"--out_dir={tmp_path}")
    assert (done.returncode == 1 and "Traceback" not in done.stderr
            and len(done.stderr.strip().splitlines()) == 1)
    assert "prepare.py text8" in done.stderr
    train.load_config(["--max_iters=10", "--warmup_iters=100"])
    assert "warning: max_iters=10 < warmup_iters=100" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "--rounds=5" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="prepare the dataset first"):
        bench.main([f"--data_dir={tmp_path}", "--dataset=mine"])
    SEDD(tiny(vocab_size=29, block_size=16)).save_pretrained(tmp_path / "ckpt", "absorb",
                                                             {"type": "loglinear"})
    shutil.copy(os.path.join(tiny_data, "tiny", "meta.json"), tmp_path / "ckpt")
    for bad, msg in [(["--steps", "0"], "--steps must be at least 1"),
                     (["--batch_size", "0"], "--batch_size must be"),
                     (["--device", "tpu"], "unknown device 'tpu'")]:
        with pytest.raises(SystemExit, match=msg):
            sampling.main(["--ckpt", str(tmp_path / "ckpt"), *bad])


def test_bench_runs_without_a_prepared_dataset(tmp_path, monkeypatch, capsys, float32):
    """bench.py on a known dataset that is not prepared trains on random tokens of its vocabulary,
    says so in one line, and prints the host's share of a step for one of `world` processes."""
    monkeypatch.setattr(bench, "peak_flops", lambda device, dtype, repeats: 1e12)
    tiny_model = ["--n_layer=1", "--n_embd=32", "--n_head=2", "--cond_dim=16", "--block_size=32", "--batch_size=1",
                  "--gradient_accumulation_steps=8"]
    bench.main(["config/owt_small.py", f"--data_dir={tmp_path}", "--device=cpu", "--variants=fp32", "--rounds=1",
                "--warmup=1", "--sample=False", "--world=8", *tiny_model])
    out = capsys.readouterr().out
    assert "openwebtext is not prepared: training on random tokens of its vocabulary (50,257)" in out
    assert "host share: one of 8 processes prepares its 32 tokens" in out
    with pytest.raises(SystemExit, match="--quality_iters trains and evaluates on text8: prepare it"):
        bench.main([f"--data_dir={tmp_path}", "--quality_iters=10"])


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

    def run(*cmd):
        done = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(cmd[:6])} ...: exit {done.returncode}\n{done.stderr[-3000:]}"
    run(sys.executable, "train.py", *args, f"--out_dir={tmp_path / 'one'}")
    run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
        *args, f"--out_dir={tmp_path / 'two'}")
    a, b = params(tmp_path / "one")[0], params(tmp_path / "two")[0]
    assert (a - b).norm() / a.norm() < 1e-6


def test_rank_states_go_through_a_group_that_ends_with_the_run(tiny_data, tmp_path, monkeypatch, float32):
    """DDP holds its process group to the end of the process, and a gloo thread that frees a Python
    object after the interpreter began to exit aborts it (2-process runs died so, 3 in 197): the
    generator states and the last barrier go through a group of their own, freed with the run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in dict(RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port).items():
        monkeypatch.setenv(name, str(value))
    used = []  # weak references: the spy must not keep a group alive
    for name in ("all_gather_object", "barrier"):
        def spy(*args, group=None, real=getattr(dist, name), **kw):
            used.append((weakref.ref(group) if group is not None else None, group is dist.group.WORLD))
            return real(*args, group=group, **kw)
        monkeypatch.setattr(dist, name, spy)
    cfg = {**TINY_RUN, "data_dir": tiny_data, "max_iters": 2, "eval_interval": 100, "out_dir": str(tmp_path)}
    train.train({**train.load_config([]), **cfg})
    assert len(used) == 3  # the states at iterations 0 and 2, the barrier
    assert all(ref is not None and not world for ref, world in used)
    assert all(ref() is None for ref, _ in used)


def test_evaluator_is_loss_fn_plus_prior(tiny_data, float32):
    """evaluation.evaluate = mean over sequences of loss_fn at elbo's stratified t (same RNG draws)
    plus the prior KL, in bits per token, with the standard error across sequences."""
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "eval_batches": 3, "eval_n_t": 4}
    torch.manual_seed(0)
    model = SEDD(SEDDConfig(vocab_size=29, n_embd=32, cond_dim=16, n_layer=1, n_head=2, block_size=32,
                            dropout=0.0))
    with torch.no_grad():
        model.output_layer.linear.weight.normal_()  # a non-trivial score
    graph, noise, data = get_graph("absorb", 28), LogLinearNoise(), train.Data(cfg, "val")
    result = evaluation.evaluate(model, graph, noise, data, n_seqs=3 * 4, batch_size=4, n_t=4,
                                 seed=cfg["seed"], device=torch.device("cpu"), ctx=contextlib.nullcontext())
    torch.manual_seed(cfg["seed"])
    nats = []
    for x0 in data.eval_batches(3 * 4, 4):
        total = torch.zeros(len(x0), dtype=torch.float64)
        for k in range(4):
            total += loss_fn(model, graph, noise, x0, t=(k + 1 - torch.rand(len(x0))) / 4).double()
        nats.append(total / 4 + 32 * graph.prior_kl(noise(torch.tensor(1.0, dtype=torch.float64))[0]).item())
    nats = torch.cat(nats)
    # float32 network outputs, averaged in float32 (elbo) vs float64 here: agreement to ~1e-7
    assert (result["n"] == 12
            and result["bits"] == pytest.approx(nats.mean().item() / (32 * math.log(2)), rel=1e-6))
    assert result["bits_se"] == pytest.approx(nats.std().item() / math.sqrt(12) / (32 * math.log(2)),
                                              rel=1e-5)
