"""train.py's optimiser step and its batch (train.Trainer.step, train.draw_step): the learning
rate, the EMA and its warm-up, the stratified t of a batch, a step that never reads a value on the
host (on a GPU it would wait for the device), the loss compiled with the network in one graph, the
skip of non-finite steps, each rank's share of the global batch, the twin's masked inputs,
gradient accumulation and the data windows. The whole loop is tested in test_train.py, the CUDA
path in test_device.py. Tiny models and the tiny run TINY_RUN come from testing.py.
"""
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import prepare
import train
from graph import get_graph
from loss import ar_nll
from noise import LogLinearNoise
from testing import TINY_RUN


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
    assert all(torch.allclose(e, p, rtol=1e-5, atol=1e-7)
               for e, p in zip(expected, run.ema_model.parameters()))
    # an EMA that joined the autograd graph would keep every step's tensors alive: memory grows
    assert not any(p.requires_grad or p.grad_fn for p in run.ema_model.parameters())

    generator, orders = torch.Generator().manual_seed(0), set()
    for _ in range(20):
        _, t, _ = train.draw_step(cfg, data, graph, noise, generator)
        strata = ((t - cfg["sampling_eps"]) / (1 - cfg["sampling_eps"]) * 8).floor().long()
        assert sorted(strata.tolist()) == list(range(8))
        orders.add(tuple(strata.tolist()))
    assert len(orders) > 10  # shuffled differently each time


class HostReads(TorchDispatchMode):
    """Records the operations that hand a tensor's value to Python (.item(), `if tensor`,
    torch.equal): on a GPU, each one waits until the device has computed it."""
    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
             torch.ops.aten.equal.default}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def tiny_trainer(tiny_data, graph, **overrides):
    """A Trainer of TINY_RUN for graph "absorb", "uniform" or "ar" (the twin), on the CPU."""
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "ar": graph == "ar",
           "graph": "absorb" if graph == "ar" else graph, **overrides}
    torch.manual_seed(0)
    diffusion = None if cfg["ar"] else get_graph(cfg["graph"], 28)
    model = train.build_model(cfg, 29 if cfg["ar"] else diffusion.dim)
    noise = None if cfg["ar"] else LogLinearNoise()
    return train.Trainer(cfg, model, diffusion, noise, train.Data(cfg, "train"), torch.device("cpu"))


@pytest.mark.parametrize("graph", ["absorb", "uniform", "ar"])
def test_trainer_step_never_reads_a_value(tiny_data, graph, float32):
    """A training step reads no tensor's value on the host (on a GPU it would wait for the device,
    and the next batch could not be drawn while the device computes), with gradient accumulation
    and with a skipped step alike."""
    run = tiny_trainer(tiny_data, graph, gradient_accumulation_steps=2)
    with HostReads() as mode:
        run.step()
    assert mode.reads == [], f"Trainer.step read values: {mode.reads}"
    real = run.net
    run.net = lambda *batch: real(*batch) * float("nan")
    with HostReads() as mode:
        run.step()
    assert mode.reads == [], f"a skipped Trainer.step read values: {mode.reads}"


@pytest.mark.parametrize("graph", ["absorb", "uniform", "ar"])
def test_compiled_step_holds_the_loss_in_one_graph(tiny_data, graph, monkeypatch, float32):
    """With compile on, torch.compile captures the network and its loss in one graph (fullgraph:
    no graph break), whose output is the loss of each sequence, not the network's [B, L, V]; the
    compiled bf16 steps give eager's losses. (A recording backend keeps this to seconds: inductor's
    CPU code generation takes a minute; the CUDA tests compile for real.)"""
    graphs, real_compile = [], torch.compile

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    monkeypatch.setattr(torch, "compile", lambda net: real_compile(net, backend=recording, fullgraph=True))
    losses = {}
    for compiled in (False, True):
        run = tiny_trainer(tiny_data, graph, dtype="bfloat16", compile=compiled)
        losses[compiled] = torch.stack([run.step()[0] for _ in range(2)])
    assert len(graphs) == 1, f"{len(graphs)} graphs: the loss was split from the network"
    (output,) = [n for n in graphs[0].graph.nodes if n.op == "output"]
    assert output.args[0][0].meta["example_value"].shape == (TINY_RUN["batch_size"],)
    assert torch.allclose(losses[True], losses[False], rtol=1e-3)


def test_a_step_with_non_finite_gradients_is_skipped_and_counted(tiny_data, float32):
    """Weights, EMA and AdamW's state stay as they were; the next finite step updates them all."""
    run = tiny_trainer(tiny_data, "absorb")
    run.step()
    state = lambda: [t.clone() for t in [*run.model.parameters(), *run.ema_model.parameters(),
                                         *[v for s in run.optimizer.state.values() for v in s.values()]]]
    before, real = state(), run.net
    run.net = lambda *batch: real(*batch) * float("nan")
    run.step()
    assert all(torch.equal(a, b) for a, b in zip(before, state()))
    assert (int(run.n_updates), int(run.n_skipped), run.iter_num) == (1, 1, 2)
    run.net = real
    run.step()
    flat = lambda tensors: torch.cat([t.flatten().float() for t in tensors])
    assert not torch.equal(flat(before), flat(state())) and int(run.n_updates) == 2
    assert {int(s["step"]) for s in run.optimizer.state.values()} == {2}


@pytest.mark.parametrize("graph", ["absorb", "ar"])
def test_each_rank_reads_and_noises_only_its_rows(tiny_data, graph, monkeypatch):
    """draw_step for rank r of 8 reads exactly its eighth of the global batch's windows (counted)
    and returns its rows of what one process draws; the data generator moves alike in all."""
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "gradient_accumulation_steps": 8}
    data, diffusion = train.Data(cfg, "train"), None if graph == "ar" else get_graph("absorb", 28)
    read, real_windows = [], data.windows
    monkeypatch.setattr(data, "windows", lambda starts: read.append(len(starts)) or real_windows(starts))
    draw = lambda rank, world, g: train.draw_step(cfg, data, diffusion, LogLinearNoise(), g, rank, world)
    one_generator = torch.Generator().manual_seed(5)
    whole = draw(0, 1, one_generator)
    assert read == [32]
    read.clear()
    parts = []
    for rank in range(8):
        generator = torch.Generator().manual_seed(5)
        parts.append(draw(rank, 8, generator))
        assert torch.equal(generator.get_state(), one_generator.get_state())
    assert read == [4] * 8
    for k, got in enumerate(zip(*parts)):
        assert (whole[k] is None and got == (None,) * 8) or torch.equal(torch.cat(got), whole[k])


def test_twin_with_masked_inputs(tiny_data):
    """ar_input_mask: the twin reads its windows with each token replaced by BOS (MASK's id in the
    absorbing graph) at that rate, and is scored on the clean tokens; at 0 it is the twin as ever:
    its batch and its data generator's moves are the unmasked twin's."""
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "ar": True, "batch_size": 128,
           "ar_input_mask": 0.5}
    data, bos = train.Data(cfg, "train"), 28
    x0, t, seen = train.draw_step(cfg, data, None, None, torch.Generator().manual_seed(0))
    masked = seen != x0
    assert t is None and (seen[masked] == bos).all() and (x0 != bos).all()
    assert abs(masked.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / masked.numel())
    logits = torch.randn(bos + 1, bos + 1, generator=torch.Generator().manual_seed(1))
    chain = lambda inputs: logits[inputs]  # the law of each token given the one it reads before it
    before = torch.cat([torch.full_like(seen[:, :1], bos), seen[:, :-1]], 1)
    expected = -logits[before][..., :bos].log_softmax(-1).gather(-1, x0[..., None]).squeeze(-1).sum(-1)
    assert torch.allclose(ar_nll(chain, x0, bos, seen=seen), expected)  # read masked, scored clean
    twin = type("Chain", (torch.nn.Module,), dict(bos=bos, forward=lambda self, inputs: chain(inputs)))()
    assert torch.allclose(train.Objective(twin, None, None)(x0, None, seen), expected)  # what training does
    generator, clean = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x0, t, seen = train.draw_step({**cfg, "ar_input_mask": 0.0}, data, None, None, generator)
    assert seen is None and torch.equal(x0, data.windows(data.random_starts(128, clean)))
    assert torch.equal(generator.get_state(), clean.get_state())


def test_gradient_accumulation_matches_one_large_batch(tiny_data, float32):
    """Two micro-batches of 4 accumulated = one batch of 8: draw_step draws the same 8 windows, t
    and x_t for both, so the losses of 4 steps and the weights after them agree. Summing the
    micro-batch losses instead of averaging them doubles the loss returned (and logged); the
    weights hardly show it, as AdamW ignores the gradient's scale (clipping aside)."""
    def train_steps(batch_size, accumulation):
        cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "batch_size": batch_size,
               "gradient_accumulation_steps": accumulation}
        torch.manual_seed(0)
        graph = get_graph("absorb", 28)
        model = train.build_model(cfg, graph.dim)
        trainer = train.Trainer(cfg, model, graph, LogLinearNoise(), train.Data(cfg, "train"),
                                torch.device("cpu"))
        losses = torch.stack([trainer.step()[0] for _ in range(4)])
        return losses, torch.cat([p.detach().flatten() for p in model.parameters()])
    (one_loss, one), (two_loss, two) = train_steps(8, 1), train_steps(4, 2)
    assert torch.allclose(two_loss, one_loss, rtol=1e-6), f"losses {two_loss} accumulated, {one_loss} at once"
    assert (two - one).norm() / one.norm() < 1e-6


def test_random_windows_reach_the_last_token(tmp_path):
    meta = {"name": "count", "tokenizer": "chars", "chars": list("abcdefgh"), "n_tokens": 8, "split": "test"}
    prepare.write_dataset(str(tmp_path / "count"), {"train": [np.arange(6)], "val": [np.arange(4)],
                                                    "test": [np.arange(3)]}, meta)
    cfg = {**train.load_config([]), "data_dir": str(tmp_path), "dataset": "count", "block_size": 4}
    random_windows = lambda data, n: data.windows(data.random_starts(n, torch.Generator().manual_seed(0)))
    windows = random_windows(train.Data(cfg, "train"), 200)
    assert set(windows[:, 0].tolist()) == {0, 1, 2} and (windows.diff(dim=1) == 1).all()
    assert random_windows(train.Data(cfg, "val"), 3).tolist() == [[0, 1, 2, 3]] * 3
    with pytest.raises(SystemExit, match="fewer than block_size = 4"):
        train.Data(cfg, "test")
