"""Training: Algorithm 1 in a nanoGPT-style loop, from a laptop CPU to a torchrun cluster.

    python train.py config/text8_tiny.py                      # one process, CPU/MPS/GPU
    python train.py config/text8_tiny.py --batch_size=32      # --key=value overrides
    python train.py --help                                    # every setting, its default and meaning
    torchrun --standalone --nproc_per_node=8 train.py config/owt_small.py

Every step draws a global batch of random data windows x0, a noise level t per sequence and
the noised x_t = sample_transition(x0, sigma_bar(t)), then minimises the DWDSE (loss.py;
Theorem 3.6) averaged over the batch. Settings follow the paper and its official release:
AdamW (0.9, 0.999), no weight decay, lr 3e-4 with linear warmup then constant, gradient
clipping at 1, an EMA of the weights (used for evaluation, samples and the exported model).
With ar=True the same loop trains the autoregressive twin: the same network, causal and without
noise, on the exact next-token likelihood (loss.ar_nll); the few lines where the two differ
are what diffusion changes.

Reproducibility: every random choice of the global batch (its windows, t, a seed per sequence
for x_t) comes from one CPU generator, identical on every rank; each rank reads and noises only
its own slice. So N processes and one process accumulating N micro-batches train on the same
batches and agree up to float rounding
(the order of the gradient sums differs). The checkpoint holds the data generator and every
rank's own generators (CPU, and CUDA or MPS: dropout), so a resumed run with the same number
of processes continues exactly where the device's kernels are deterministic (on the CPU with
the same thread count: bit for bit); with another number of processes, dropout restarts.
The output directory holds ckpt.pt (for resume), config.json + pytorch_model.bin with the EMA
weights (checkpoint.load / sampling.py --ckpt read it), meta.json (the tokenizer),
log.csv (the loss curve, with the run's wall time: training and evaluation, across resumes) and,
with matplotlib, loss.png.
"""
import copy
import importlib.util
import math
import os
import sys
import time
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import export, load, load_training_state, save_atomic
from configurator import load_config
from device import (draw_dtype, fork_rng, peak_flops, pick_compile, pick_device, pick_dtype, rng_state,
                    set_rng_state)
from evaluation import Log, evaluate, plot_losses, report
from graph import Absorbing, get_graph
from loss import ar_nll, bits_per_token, loss_fn, noised_batch, stratified_t
from model import SEDD, SEDDConfig
from noise import noise_config, noise_from_config
from prepare import Data, fail, get_tokenizer
from sampling import sample, sample_ar

MODEL_KEYS = ("ar", "graph", "noise", "n_layer", "n_head", "n_embd", "cond_dim")


def lr_at(cfg, it):
    """Linear warmup to learning_rate, then constant (the paper) or a cosine down to min_lr."""
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    progress = min(1.0, (it - cfg["warmup_iters"]) / max(1, cfg["max_iters"] - cfg["warmup_iters"]))
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg["learning_rate"] - cfg["min_lr"])


@torch.no_grad()  # the EMA is no function of the weights to differentiate: no graph across steps
def update_ema(ema_model, model, n_updates, applied, decay):
    """ema <- d ema + (1 - d) weights after the n-th update, d = min(decay, (1 + n) / (10 + n)):
    the warm-up lets the EMA of a short run follow the weights instead of its initial value.
    n_updates and applied (1, or 0 where the step was skipped: the EMA stays) are tensors on the
    weights' device, so that the update never waits for the device to report them."""
    weight = (1 - torch.clamp((1 + n_updates) / (10 + n_updates), max=decay)) * applied
    ema, weights = list(ema_model.parameters()), list(model.parameters())
    torch._foreach_add_(ema, torch._foreach_mul(torch._foreach_sub(weights, ema), weight))


def build_model(cfg, vocab_size):
    """A new SEDD of the config's shape, for a graph with vocab_size = graph.dim states; or its
    autoregressive twin (cfg["ar"]): the same network, causal, with no sigma, over the tokens
    and BOS (vocab_size = n_tokens + 1)."""
    return SEDD(SEDDConfig(vocab_size=vocab_size, n_embd=cfg["n_embd"], cond_dim=cfg["cond_dim"],
                           n_layer=cfg["n_layer"], n_head=cfg["n_head"], block_size=cfg["block_size"],
                           dropout=cfg["dropout"], scale_by_sigma=cfg["graph"] == "absorb" and not cfg["ar"],
                           causal=cfg["ar"]))


class Objective(nn.Module):
    """The training loss of a batch, per sequence, as one module around the network: DDP wraps it
    (averaging its gradients over the processes) and torch.compile compiles it whole, so the
    full-vocabulary loss runs inside the compiled graph with the network."""

    def __init__(self, model, graph, noise):
        super().__init__()
        self.model, self.graph, self.noise = model, graph, noise

    def forward(self, x0, t=None, x_t=None):
        if self.graph is None:  # the twin: the exact likelihood of the clean data (x_t: masked inputs)
            return ar_nll(self.model, x0, self.model.bos, seen=x_t)
        return loss_fn(self.model, self.graph, self.noise, x0, t=t, x_t=x_t)  # the DWDSE (Algorithm 1)


def draw_step(cfg, data, graph, noise, generator, rank=0, world=1):
    """This process's share of one optimiser step's global batch, on the CPU: its windows x0 and,
    for diffusion, Algorithm 1's noise times t and noised x_t (the autoregressive twin, graph None,
    needs only x0; with ar_input_mask its x_t is x0 masked at that rate, read in place of x0).
    Every random choice of the global batch comes from the one data generator, which every process
    holds in the same state: the windows' starts, the stratified times (loss.stratified_t) and a
    seed per sequence for its x_t (loss.noised_batch). So a process reads and noises only its own
    rows, yet N processes train on the batches of one process accumulating N micro-batches, and
    the generator moves the same way in every process."""
    n = cfg["batch_size"] * cfg["gradient_accumulation_steps"]  # the global batch
    starts = data.random_starts(n, generator)
    mine = slice(rank * n // world, (rank + 1) * n // world)
    x0 = data.windows(starts[mine])
    if graph is None and not cfg["ar_input_mask"]:
        return x0, None, None
    if graph is None:  # MASK of the absorbing graph is the twin's BOS id; masked with probability p
        sigma = torch.full((n,), -math.log1p(-cfg["ar_input_mask"]))  # 1 - e^-sigma = p
        graph, t = Absorbing(data.meta["n_tokens"]), None
    else:
        t = stratified_t(n, cfg["sampling_eps"], generator)
        sigma = noise(t)[0]
        t = t[mine]
    seeds = torch.randint(2**62, (n,), generator=generator)[mine]
    return x0, t, noised_batch(graph, x0, sigma[mine], seeds)


def to_device(x, device):
    """A CPU batch (or None) on `device`; to a GPU from pinned memory, without waiting for the copy."""
    if x is None or device.type == "cpu":
        return x
    if device.type == "cuda":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


class Trainer:
    """A run's state (model, its EMA, AdamW, the data generator, counters) and its optimiser
    step. train.py's loop and bench.py run this same step.

    The step never waits for the device (a GPU): it reads no tensor's value (no .item(), no `if`
    on a tensor), copies its batch from pinned memory without blocking, and skips a step whose
    gradients are not finite on the device itself. So while the device computes one step, the CPU
    already draws and sends the next batch."""

    def __init__(self, cfg, model, graph, noise, data, device, ddp=False, rank=0, world=1):
        self.cfg, self.model, self.graph, self.noise, self.data = cfg, model, graph, noise, data
        self.device, self.rank, self.world = device, rank, world
        self.micro_steps = cfg["gradient_accumulation_steps"] // world
        self.dtype = pick_dtype(cfg["dtype"], device)
        bf16 = self.dtype != torch.float32
        self.ctx = torch.autocast(device.type, dtype=self.dtype) if bf16 else nullcontext()
        model.to(device).train()  # train mode: dropout on (a pretrained model arrives in eval mode)
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        # fused: one kernel for all parameters, which can skip a step on the device (found_inf below)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], eps=1e-8,
                                           betas=(cfg["beta1"], cfg["beta2"]),
                                           weight_decay=cfg["weight_decay"], fused=True)
        # DDP first, then torch.compile: the compiled graph is split at DDP's gradient buckets, so
        # each bucket's all-reduce overlaps the rest of the backward pass. Checkpoints save `model`,
        # so no wrapper's prefix (module., _orig_mod.) reaches them.
        net = Objective(model, graph, noise)
        if ddp:
            net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
        self.no_sync = net.no_sync if ddp else nullcontext  # DDP averages gradients only when needed
        # The ranks' generator states are Python objects, gathered in a gloo group of their own: DDP
        # holds its group to the end of the process, and a gloo thread that frees a Python object
        # after the interpreter began to exit aborts it (SIGABRT); this group, with its threads, goes
        # when the Trainer does
        self.objects = dist.new_group(backend="gloo") if ddp else None
        self.net = torch.compile(net) if pick_compile(cfg["compile"], device) else net
        self.generator = torch.Generator().manual_seed(cfg["seed"])  # data randomness: the same on every rank
        self.iter_num = 0
        self.n_updates = torch.zeros((), device=device)  # counted on the device: never read in a step
        self.n_skipped = torch.zeros((), device=device)

    def step(self):
        """One optimiser step; returns (this rank's mean loss of the batch, a tensor: the DWDSE, or
        the twin's NLL, in nats per sequence; the lr)."""
        cfg = self.cfg
        lr = lr_at(cfg, self.iter_num)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = draw_step(cfg, self.data, self.graph, self.noise, self.generator, self.rank, self.world)
        batch = [to_device(x, self.device) for x in batch]
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.micro_steps):
            rows = slice(micro * cfg["batch_size"], (micro + 1) * cfg["batch_size"])
            last = micro == self.micro_steps - 1  # DDP averages the gradients across ranks only then
            with (nullcontext() if last else self.no_sync()), self.ctx:
                loss = self.net(*[x if x is None else x[rows] for x in batch]).mean() / self.micro_steps
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"])
        # Non-finite gradients: skip the update and count it, decided on the device. The fused
        # AdamW leaves weights, moments and step count as they are where found_inf is 1 (the
        # attribute through which torch.amp.GradScaler hands it the same decision).
        found_inf = (~torch.isfinite(grad_norm)).float()
        self.optimizer.found_inf = found_inf
        self.optimizer.step()
        applied = 1 - found_inf
        self.n_updates += applied
        self.n_skipped += found_inf
        update_ema(self.ema_model, self.model, self.n_updates, applied, cfg["ema_decay"])
        self.optimizer.zero_grad(set_to_none=True)
        self.iter_num += 1
        return loss_sum, lr

    def state_dict(self):
        return dict(model=self.model.state_dict(), ema=self.ema_model.state_dict(),
                    optimizer=self.optimizer.state_dict(), iter_num=self.iter_num,
                    n_updates=int(self.n_updates), n_skipped=int(self.n_skipped),
                    data_rng=self.generator.get_state())

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iter_num = state["iter_num"]
        self.n_updates.fill_(state["n_updates"])
        self.n_skipped.fill_(state["n_skipped"])
        self.generator.set_state(state["data_rng"])


def gather(obj, group, world):
    """[obj of rank 0, obj of rank 1, ...] on every rank of group (a list of one without torchrun)."""
    if group is None:
        return [obj]
    objs = [None] * world
    dist.all_gather_object(objs, obj, group=group)
    return objs


def save_checkpoint(run, rngs, elapsed, meta_dir):
    """ckpt.pt to resume from, and beside it the EMA weights, which can start a new run should
    ckpt.pt ever be lost."""
    cfg, noise = run.cfg, run.noise
    save_atomic(dict(run.state_dict(), config=cfg, noise=noise_config(noise) if noise else None, rng=rngs,
                     elapsed=elapsed), os.path.join(cfg["out_dir"], "ckpt.pt"))
    export(run.ema_model, cfg["out_dir"], run.graph, noise, meta_dir)


def init_model(cfg, meta):
    """The model, graph and noise of the run, by init_from; cfg takes the model's shape when the
    model comes from a checkpoint. Returns (model, graph, noise, checkpoint or None); graph and
    noise are None for the autoregressive twin. A diffusion model keeps the schedule it was
    trained with (a geometric one's sigma_min and sigma_max too)."""
    ckpt, model, schedule = None, None, {"type": cfg["noise"]}
    if cfg["init_from"] == "resume":
        try:
            ckpt = load_training_state(cfg["out_dir"])
        except (FileNotFoundError, ValueError) as e:
            fail(e)
        saved = ckpt["config"]
        changed = [f"{k}={saved[k]} (not {cfg[k]})" for k in MODEL_KEYS if saved[k] != cfg[k]]
        if changed:
            print(f"resuming the model of {cfg['out_dir']}/ckpt.pt: {', '.join(changed)}")
        cfg.update({k: saved[k] for k in MODEL_KEYS})
        schedule = ckpt["noise"]
    elif cfg["init_from"].startswith("pretrained:"):
        try:
            model, graph, noise, _ = load(cfg["init_from"].split(":", 1)[1], cfg["dropout"], tokenizer=False)
        except (OSError, ValueError, RuntimeError, ImportError) as e:
            fail(e)
        c = model.config
        cfg.update(ar=c.causal, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, cond_dim=c.cond_dim)
        if not c.causal:
            schedule = noise_config(noise)
            cfg.update(graph=graph.name, noise=schedule["type"])
    graph = None if cfg["ar"] else get_graph(cfg["graph"], meta["n_tokens"])
    try:
        noise = None if cfg["ar"] else noise_from_config(schedule)
    except (TypeError, ValueError) as e:
        fail(f"the checkpoint's noise schedule {schedule}: {e}")
    vocab_size = meta["n_tokens"] + 1 if cfg["ar"] else graph.dim  # + BOS for the twin
    if model is None:
        model = build_model(cfg, vocab_size)
    elif model.config.vocab_size != vocab_size:
        fail(f"the pretrained model has {model.config.vocab_size} token ids but {cfg['dataset']} needs "
             f"{vocab_size}")
    return model, graph, noise, ckpt


def setup_processes(cfg):
    """This process's device, whether it is one of torchrun's processes (NCCL on CUDA, gloo
    elsewhere), its rank and their number; seeds its own generator (dropout differs by rank)."""
    ddp = "RANK" in os.environ
    try:
        device = pick_device(cfg["device"], int(os.environ["LOCAL_RANK"]) if ddp else None)
    except ValueError as e:
        fail(e)
    rank, world = 0, 1
    if ddp:
        # rank 0 alone evaluates, samples and writes the checkpoint (GBs at GPT-2 scale) while the
        # others wait in their next all-reduce: NCCL's default 10 minutes could end the job then
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            torch.cuda.set_device(device)
    if cfg["gradient_accumulation_steps"] % world:
        fail(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be a multiple of the "
             f"{world} processes")
    torch.manual_seed(cfg["seed"] + rank)
    return device, ddp, rank, world


def refuse_to_overwrite(out_dir):
    """A new run never writes over an old one."""
    taken = [f for f in ("ckpt.pt", "log.csv") if os.path.exists(os.path.join(out_dir, f))]
    if taken:
        fail(f"{out_dir} already holds a run ({', '.join(taken)}): continue it with --init_from=resume "
             f"or start this one with another --out_dir (nothing was changed)")


def restore(run, ckpt, rank, world):
    """A checkpoint's state; and this process's dropout generators, if as many processes wrote it."""
    run.load_state_dict(ckpt)
    if len(ckpt["rng"]) == world:  # same number of processes: dropout continues exactly
        set_rng_state(ckpt["rng"][rank], run.device)
    elif rank == 0:
        print(f"note: {len(ckpt['rng'])} process(es) wrote the checkpoint, {world} resume it: "
              "dropout restarts")


def evaluate_and_log(run, eval_data, log, it, start):
    """An evaluation: the bound of the EMA weights (the twin: its exact NLL) on the fixed validation
    windows, one sample drawn from its own seed (the training's generators are left as they were),
    the log row and loss.png."""
    cfg, device, meta = run.cfg, run.device, eval_data.meta
    result = evaluate(run.ema_model, run.graph, run.noise, eval_data, cfg["eval_batches"] * cfg["batch_size"],
                      cfg["batch_size"], cfg["eval_n_t"], cfg["seed"], device, run.ctx)
    print(f"iter {it}: {report(result, meta, 'val')}")
    with fork_rng(device):
        torch.manual_seed(it)
        with run.ctx:
            shape, draws = (1, cfg["block_size"]), draw_dtype(device)
            if cfg["ar"]:
                x = sample_ar(run.ema_model, shape, dtype=draws, device=device)
            else:
                x = sample(run.ema_model, run.graph, run.noise, shape, cfg["sample_steps"], dtype=draws,
                           device=device)
        text = get_tokenizer(meta)[1](x[0].tolist())
    print(f"sample: {text[:300]!r}")
    log.write(it, time.perf_counter() - start, val_bits_per_token=f"{result['bits']:.5f}",
              val_se=f"{result['bits_se']:.5f}")
    if importlib.util.find_spec("matplotlib") is not None:
        plot_losses(cfg["out_dir"], meta, cfg["block_size"])


def tokens_per_iter(cfg):
    return cfg["batch_size"] * cfg["gradient_accumulation_steps"] * cfg["block_size"]


def train_loop(run, eval_data, ckpt):
    """Steps until max_iters; an evaluation every eval_interval iterations and at the end, a
    checkpoint at each evaluation and every ckpt_interval iterations, a log row every log_interval."""
    cfg, device, master, world = run.cfg, run.device, run.rank == 0, run.world
    peak = peak_flops(device, run.dtype) if master else 1.0
    log = None
    resumed_at = run.iter_num if ckpt is not None else None  # checkpointed there, after any evaluation
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        model = run.model
        print(f"{model.num_params():,} parameters ({model.num_params(non_embedding=True):,} non-embedding) "
              f"on {device}, {run.dtype}, {world} process(es), {tokens_per_iter(cfg):,} tokens per iteration")
        log = Log(cfg["out_dir"], tokens_per_iter(cfg), run.data.n, resumed_at)
        if importlib.util.find_spec("matplotlib") is None:
            print("note: pip install matplotlib to get loss.png, the loss curves, in out_dir at each "
                  "evaluation")
    t_last, it_last, loss_sum, loss_iters = time.perf_counter(), run.iter_num, 0.0, 0
    start = t_last - (ckpt["elapsed"] if ckpt is not None else 0.0)  # the run's wall time goes on
    while True:
        it = run.iter_num
        evaluating = (it % cfg["eval_interval"] == 0 or it == cfg["max_iters"]) and it != resumed_at
        saving = evaluating or (cfg["ckpt_interval"] and it % cfg["ckpt_interval"] == 0 and it != resumed_at)
        if saving:
            rngs = gather(rng_state(device), run.objects, world)  # before any evaluation draws
            if master and evaluating:
                evaluate_and_log(run, eval_data, log, it, start)
            if master:  # after the log rows up to `it`, which the line-buffered log has saved
                save_checkpoint(run, rngs, time.perf_counter() - start, eval_data.dir)
            t_last, it_last = time.perf_counter(), it  # evaluations and checkpoints are not training time
        if it >= cfg["max_iters"]:
            break
        loss, lr = run.step()
        loss_sum, loss_iters = loss_sum + loss, loss_iters + 1
        if master and run.iter_num % cfg["log_interval"] == 0:
            tokens_per_s = tokens_per_iter(cfg) * (run.iter_num - it_last) / (time.perf_counter() - t_last)
            mfu = run.model.estimate_flops_per_token() * tokens_per_s / world / peak
            train_bits = bits_per_token(loss_sum.item() / loss_iters, cfg["block_size"])
            n_skipped = int(run.n_skipped)
            skipped = f", {n_skipped} skipped steps" if n_skipped else ""
            epochs = run.iter_num * tokens_per_iter(cfg) / run.data.n  # passes over the unique data
            repeats = f", {epochs:.2f} epochs of {run.data.n:,} tokens" if cfg["train_tokens"] else ""
            print(f"iter {run.iter_num}: loss {train_bits:.4f} bits/token, lr {lr:.2e}, "
                  f"{tokens_per_s:,.0f} tok/s, mfu {100 * mfu:.1f}%{skipped}{repeats}")
            log.write(run.iter_num, time.perf_counter() - start, train_bits_per_token=f"{train_bits:.5f}",
                      lr=f"{lr:.3e}", tokens_per_s=f"{tokens_per_s:.0f}", mfu=f"{mfu:.4f}")
            t_last, it_last, loss_sum, loss_iters = time.perf_counter(), run.iter_num, 0.0, 0
    if master:
        log.file.close()


def train(cfg):
    device, ddp, rank, world = setup_processes(cfg)
    eval_data = Data(cfg, cfg["eval_split"] if cfg["eval_only"] else "val")
    train_data = Data(cfg, "train") if not cfg["eval_only"] else None
    if not cfg["eval_only"] and cfg["init_from"] != "resume":
        refuse_to_overwrite(cfg["out_dir"])
    model, graph, noise, ckpt = init_model(cfg, eval_data.meta)
    run = Trainer(cfg, model, graph, noise, train_data, device, ddp, rank, world)
    if ckpt is not None:
        restore(run, ckpt, rank, world)
    if rank == 0 and draw_dtype(device) != torch.float64:
        print(f"note: {device} has no float64, so evaluation samples are drawn in float32 "
              "(a slightly lower effective temperature: see sampling.sample_categorical)")
    if cfg["eval_only"]:
        if rank == 0:
            result = evaluate(run.ema_model, graph, noise, eval_data, cfg["eval_batches"] * cfg["batch_size"],
                              cfg["batch_size"], cfg["eval_n_t"], cfg["seed"], device, run.ctx)
            print(report(result, eval_data.meta, cfg["eval_split"]))
    else:
        train_loop(run, eval_data, ckpt)
    if ddp:
        dist.barrier(group=run.objects)  # rank 0 may still be writing the last checkpoint
        dist.destroy_process_group()


if __name__ == "__main__":
    train(load_config(sys.argv[1:]))
