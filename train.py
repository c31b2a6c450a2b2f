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

Reproducibility: all randomness of the data (windows, t, x_t) comes from one CPU generator,
identical on every rank; each rank keeps its slice of the global batch. So N processes and one
process accumulating N micro-batches train on the same batches and agree up to float rounding
(the order of the gradient sums differs). The checkpoint holds the data generator and every
rank's own generators (CPU, and CUDA or MPS: dropout), so a resumed run with the same number
of processes continues exactly where the device's kernels are deterministic (on the CPU with
the same thread count: bit for bit); with another number of processes, dropout restarts.
The output directory holds ckpt.pt (for resume), config.json + pytorch_model.bin with the EMA
weights (SEDD.from_pretrained / sampling.py --ckpt read it), meta.json (the tokenizer),
log.csv (the loss curve, with the run's wall time: training and evaluation, across resumes) and,
with matplotlib, loss.png.
"""
import ast
import copy
import csv
import difflib
import importlib.util
import math
import os
import re
import shutil
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from evaluation import evaluate, fork_rng, report, source_entropy
from graph import GRAPHS, get_graph
from loss import ar_nll, bits_per_token, loss_fn, stratified_t
from model import SEDD, SEDDConfig, pick_device
from noise import NOISES, noise_config, noise_from_config
from prepare import fail, get_tokenizer, load_meta
from sampling import draw_dtype, sample, sample_ar

DEFAULTS = dict(
    # I/O
    out_dir="out",
    init_from="scratch",   # "scratch" | "resume" (out_dir/ckpt.pt) | "pretrained:<hub id or dir>"
    eval_interval=500,     # evaluate, print a sample and checkpoint every this many iterations
    ckpt_interval=0,       # also checkpoint every this many iterations; 0: only at evaluations
    eval_only=False,       # evaluate the ELBO once (EMA weights) and exit
    eval_split="val",      # "val" or "test"
    eval_batches=8,        # sequences evaluated = eval_batches * batch_size, spread over the split; 0: all
    eval_n_t=8,            # stratified t samples per sequence for the ELBO (the paper uses 1000)
    sample_steps=128,      # sampling steps of the sample printed at each evaluation
    log_interval=10,
    # data: data_dir/dataset/{train,val,test}.bin from prepare.py
    dataset="text8",
    data_dir="data",
    block_size=256,
    batch_size=16,         # sequences per micro-batch per process
    gradient_accumulation_steps=1,  # global: split across processes under torchrun
    # diffusion
    graph="absorb",        # "absorb" | "uniform"
    noise="loglinear",     # "loglinear" | "geometric"
    sampling_eps=1e-3,     # t ~ U[sampling_eps, 1]
    # model (the paper's small model; fine-tuning takes the pretrained model's shape)
    n_layer=12,
    n_head=12,
    n_embd=768,
    cond_dim=128,
    dropout=0.1,           # also replaces a pretrained model's rate when fine-tuning
    ar=False,              # True: the autoregressive twin: causal attention, no noise, next-token loss
    # optimiser (paper / release)
    learning_rate=3e-4,
    max_iters=400_000,
    warmup_iters=2500,
    decay_lr=False,        # the paper keeps lr constant after warmup; short runs gain from a cosine decay
    min_lr=3e-5,           # floor of the cosine decay (reached at max_iters)
    beta1=0.9,
    beta2=0.999,
    weight_decay=0.0,
    grad_clip=1.0,
    ema_decay=0.9999,
    # system
    device="auto",         # "auto" | "cpu" | "cuda" | "mps" (auto: cuda, then mps, then cpu)
    dtype="auto",          # "auto" | "float32" | "bfloat16" (autocast); auto: bfloat16 on CUDA and bf16-capable CPUs
    compile="auto",        # "auto" | True | False; auto: on for CUDA
    seed=1337,
)
MODEL_KEYS = ("ar", "graph", "noise", "n_layer", "n_head", "n_embd", "cond_dim")


def settings_help(path, name):
    """Every setting of the `name = dict(...)` block in the file `path` as --key=default and its
    comment, read from the source so that the help and the defaults cannot disagree."""
    source = open(path).read()
    block = source[source.index(f"{name} = dict(\n"):].split("\n)\n", 1)[0].splitlines()[1:]
    lines = []
    for line in block:
        line = line.strip()
        key_value = re.match(r"(\w+)=(.*?),\s*(#.*)?$", line)
        if key_value:
            key, value, comment = key_value.groups()
            lines.append(f"  --{key}={ast.literal_eval(value)!s:<14} {comment or ''}".rstrip())
        else:
            lines.append(line.lstrip("# "))
    return "\n".join(lines)


def set_key(cfg, key, value, origin):
    if key not in cfg:
        close = difflib.get_close_matches(key, cfg, n=1)
        fail(f"unknown config key {key!r} in {origin}" + (f" (did you mean {close[0]!r}?)" if close else "")
             + "; python train.py --help lists them")
    default = cfg[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if default is not None and type(value) is not type(default) and not (key == "compile" and isinstance(value, bool)):
        fail(f"{key} in {origin} must be {type(default).__name__}, got {value!r}")
    cfg[key] = value


def load_config(argv):
    """DEFAULTS, then each argument in order: a config file (plain Python assignments) or
    --key=value; checked as a whole (check_config). -h / --help prints every setting. A config
    file may start from another with include("other.py") (a file in the same folder)."""
    if "-h" in argv or "--help" in argv:
        print("usage: python train.py [config/NAME.py ...] [--key=value ...]   (torchrun for several processes)\n"
              "Config files and overrides apply in order, over these defaults:\n" + settings_help(__file__, "DEFAULTS"))
        raise SystemExit(0)
    cfg = dict(DEFAULTS)
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                fail(f"write overrides as --key=value, not {arg!r}")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string such as --dataset=text8
            set_key(cfg, key, value, arg)
        else:
            if not os.path.isfile(arg):
                fail(f"config file {arg!r} not found (see config/)")
            namespace = {}
            namespace["include"] = lambda name: exec(open(os.path.join(os.path.dirname(arg), name)).read(), namespace)
            exec(open(arg).read(), namespace)
            for key, value in namespace.items():
                if not key.startswith("_") and key != "include":
                    set_key(cfg, key, value, arg)
    check_config(cfg)
    return cfg


def check_config(cfg):
    """The settings that would otherwise fail deep inside a run (or silently), as one line each."""
    choices = dict(graph=sorted(GRAPHS), noise=sorted(NOISES), eval_split=["val", "test"],
                   dtype=["auto", "float32", "bfloat16"], compile=["auto", True, False])
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            hint = " (float16 would need loss scaling, which this loop does not do)" if cfg[key] == "float16" else ""
            fail(f"--{key}={cfg[key]} is not one of {allowed}{hint}")
    if not (cfg["init_from"] in ("scratch", "resume") or cfg["init_from"].startswith("pretrained:")):
        fail(f"init_from must be 'scratch', 'resume' or 'pretrained:<hub id or dir>', not {cfg['init_from']!r}")
    for key in ("block_size", "batch_size", "gradient_accumulation_steps", "eval_interval", "log_interval",
                "eval_n_t", "sample_steps", "n_layer", "n_head", "n_embd", "cond_dim"):
        if cfg[key] < 1:
            fail(f"--{key} must be at least 1, not {cfg[key]}")
    if cfg["ckpt_interval"] < 0:
        fail(f"--ckpt_interval must be 0 (checkpoint at evaluations only) or more, not {cfg['ckpt_interval']}")
    if cfg["n_embd"] % cfg["n_head"] or (cfg["n_embd"] // cfg["n_head"]) % 2:
        fail(f"--n_head={cfg['n_head']} must divide --n_embd={cfg['n_embd']} into heads of even size "
             f"(rotary embeddings rotate pairs)")
    if cfg["max_iters"] < cfg["warmup_iters"] and cfg["init_from"] != "resume" and not cfg["eval_only"]:
        print(f"warning: max_iters={cfg['max_iters']} < warmup_iters={cfg['warmup_iters']}: the learning rate "
              f"never reaches {cfg['learning_rate']}")


def lr_at(cfg, it):
    """Linear warmup to learning_rate, then constant (the paper) or a cosine down to min_lr."""
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    progress = min(1.0, (it - cfg["warmup_iters"]) / max(1, cfg["max_iters"] - cfg["warmup_iters"]))
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg["learning_rate"] - cfg["min_lr"])


def update_ema(ema_model, model, n_updates, decay):
    """ema <- d ema + (1 - d) weights after the n-th update, d = min(decay, (1 + n) / (10 + n)):
    the warm-up lets the EMA of a short run follow the weights instead of its initial value."""
    d = min(decay, (1 + n_updates) / (10 + n_updates))
    torch._foreach_lerp_(list(ema_model.parameters()), list(model.parameters()), 1 - d)


def peak_flops(device, dtype, n=2048, repeats=10):
    """Peak FLOP/s for MFU: the vendor's dense bf16 figure on CUDA; on CPU (or MPS) the measured
    throughput of an n x n matmul in `dtype`: the FASTEST of `repeats` timings after a warm-up,
    since another load on the machine only ever slows a timing down (a median swings with it).
    bench.py uses this same function."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12, "4090": 165e12}
        return next((v for k, v in table.items() if k in name), 312e12)
    # ones, not random numbers: a matmul's speed does not depend on the values, and the run's
    # generators stay untouched (a resumed run's dropout must continue exactly)
    a = torch.ones(n, n, device=device, dtype=dtype)
    b = torch.ones(n, n, device=device, dtype=dtype)
    for _ in range(2):
        (a @ b).sum().item()  # warm-up: the first calls of a dtype set up its kernels and threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        (a @ b).sum().item()  # .item() waits for an asynchronous device (MPS)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def pick_compile(setting, device):
    """torch.compile or not: "auto" compiles on CUDA only."""
    return device.type == "cuda" if setting == "auto" else setting


def pick_dtype(name, device):
    if name == "auto":
        bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else (
            device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        name = "bfloat16" if bf16 else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def build_model(cfg, vocab_size):
    """A new SEDD of the config's shape, for a graph with vocab_size = graph.dim states; or its
    autoregressive twin (cfg["ar"]): the same network, causal, with no sigma, over the tokens
    and BOS (vocab_size = n_tokens + 1)."""
    return SEDD(SEDDConfig(vocab_size=vocab_size, n_embd=cfg["n_embd"], cond_dim=cfg["cond_dim"],
                           n_layer=cfg["n_layer"], n_head=cfg["n_head"], block_size=cfg["block_size"],
                           dropout=cfg["dropout"], scale_by_sigma=cfg["graph"] == "absorb" and not cfg["ar"],
                           causal=cfg["ar"]))


class Data:
    """Random windows of block_size tokens from a uint16/uint32 token memmap (prepare.py)."""

    def __init__(self, cfg, split):
        self.dir = os.path.join(cfg["data_dir"], cfg["dataset"])
        try:
            self.meta = load_meta(self.dir)
        except FileNotFoundError as e:
            fail(e)
        self.path = os.path.join(self.dir, f"{split}.bin")
        if not os.path.exists(self.path):
            fail(f"{self.path} not found: prepare the {split} split with prepare.py")
        self.dtype, self.L = np.dtype(self.meta["dtype"]), cfg["block_size"]
        self.n = os.path.getsize(self.path) // self.dtype.itemsize
        if self.n < self.L:
            fail(f"{self.path} has {self.n} tokens, fewer than block_size = {self.L}")

    def windows(self, starts):
        data = np.memmap(self.path, dtype=self.dtype, mode="r")  # reopened per batch: no memory growth
        return torch.from_numpy(np.stack([data[s:s + self.L].astype(np.int64) for s in starts.tolist()]))

    def random_batch(self, n, generator):
        # n - L + 1 possible starts: the last window ends at the last token
        return self.windows(torch.randint(self.n - self.L + 1, (n,), generator=generator))

    def eval_batches(self, n_seq, batch_size):
        """Fixed windows aligned to multiples of block_size (the rows of zero-shot sets), spread
        evenly over the split, so every evaluation sees the same sequences."""
        rows = self.n // self.L
        n_seq = rows if n_seq <= 0 else min(n_seq, rows)
        starts = torch.arange(n_seq) * (rows // n_seq) * self.L
        return [self.windows(starts[i:i + batch_size]) for i in range(0, n_seq, batch_size)]


def draw_step(cfg, data, graph, noise, generator):
    """One optimiser step's global batch: windows x0, noise times t stratified over the whole
    global batch (loss.stratified_t), noised x_t, all on CPU; the autoregressive twin (graph
    None) needs only x0."""
    n = cfg["batch_size"] * cfg["gradient_accumulation_steps"]
    x0 = data.random_batch(n, generator)
    if graph is None:
        return x0, None, None
    t = stratified_t(n, cfg["sampling_eps"], generator)
    sigma, _ = noise(t)
    x_t = graph.sample_transition(x0, sigma[:, None], generator=generator)
    return x0, t, x_t


class Trainer:
    """A run's state (model, its EMA, AdamW, the data generator, counters) and its optimiser
    step. train.py's loop and bench.py run this same step."""

    def __init__(self, cfg, model, graph, noise, data, device, ddp=False, rank=0, world=1):
        self.cfg, self.model, self.graph, self.noise, self.data = cfg, model, graph, noise, data
        self.rank, self.micro_steps = rank, cfg["gradient_accumulation_steps"] // world
        self.dtype = pick_dtype(cfg["dtype"], device)
        self.ctx = torch.autocast(device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        self.device = device
        model.to(device).train()  # train mode: dropout on (a pretrained model arrives in eval mode)
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.bos = model.config.vocab_size - 1  # the autoregressive twin's start token
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], eps=1e-8,
                                           betas=(cfg["beta1"], cfg["beta2"]), weight_decay=cfg["weight_decay"])
        net = torch.compile(model) if pick_compile(cfg["compile"], device) else model  # checkpoints use `model`
        self.net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if ddp else net
        self.generator = torch.Generator().manual_seed(cfg["seed"])  # data randomness: the same on every rank
        self.iter_num = self.n_updates = self.n_skipped = 0

    def step(self):
        """One optimiser step; returns (this rank's mean loss of the batch, a tensor: the DWDSE, or
        the twin's NLL, in nats per sequence; the lr)."""
        cfg = self.cfg
        lr = lr_at(cfg, self.iter_num)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x0, t, x_t = draw_step(cfg, self.data, self.graph, self.noise, self.generator)
        n = self.micro_steps * cfg["batch_size"]
        mine = slice(self.rank * n, (self.rank + 1) * n)
        x0 = x0[mine].to(self.device)
        if not cfg["ar"]:
            t, x_t = t[mine].to(self.device), x_t[mine].to(self.device)
        loss_sum = 0.0
        for micro, rows in enumerate(torch.arange(n).split(cfg["batch_size"])):
            last = micro == self.micro_steps - 1  # DDP averages the gradients across ranks only then
            with (nullcontext() if last or not isinstance(self.net, DDP) else self.net.no_sync()), self.ctx:
                if cfg["ar"]:  # the twin: the exact likelihood of the clean data, no noise at all
                    loss = ar_nll(self.net, x0[rows], self.bos)
                else:  # diffusion: the DWDSE at one noise level per sequence (Algorithm 1)
                    loss = loss_fn(self.net, self.graph, self.noise, x0[rows], t=t[rows], x_t=x_t[rows])
                loss = loss.mean() / self.micro_steps
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"])
        if torch.isfinite(grad_norm):
            self.optimizer.step()
            self.n_updates += 1
            update_ema(self.ema_model, self.model, self.n_updates, cfg["ema_decay"])
        else:
            self.n_skipped += 1  # non-finite gradients: skip the update, keep the count
        self.optimizer.zero_grad(set_to_none=True)
        self.iter_num += 1
        return loss_sum, lr

    def state_dict(self):
        return dict(model=self.model.state_dict(), ema=self.ema_model.state_dict(),
                    optimizer=self.optimizer.state_dict(), iter_num=self.iter_num, n_updates=self.n_updates,
                    n_skipped=self.n_skipped, data_rng=self.generator.get_state())

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iter_num, self.n_updates, self.n_skipped = state["iter_num"], state["n_updates"], state["n_skipped"]
        self.generator.set_state(state["data_rng"])


def rng_state(device):
    """This process's own generators: the CPU's, and the device's (dropout on CUDA or MPS)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


def gather(obj, ddp, world):
    """[obj of rank 0, obj of rank 1, ...] on every rank (a list of one without torchrun)."""
    if not ddp:
        return [obj]
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return objs


def plot_losses(out_dir, tokens_per_iter, meta, length):
    """out_dir/loss.png from log.csv: the training loss and the validation bound (the twin: its
    exact NLL) in bits per token against tokens seen, with the source's entropy when it is known
    (prepare.py toy). Needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    with open(os.path.join(out_dir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("train_bits_per_token", "training loss"), ("val_bits_per_token", "validation")):
        points = [(int(r["iter"]) * tokens_per_iter, float(r[key])) for r in rows if r[key]]
        if points:
            ax.plot(*zip(*points), marker="." if key.startswith("val") else None, label=label)
    if source_entropy(meta, length) is not None:
        ax.axhline(source_entropy(meta, length), color="gray", linestyle="--", label="the source's entropy")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("bits per token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss.png"), dpi=100)
    plt.close(fig)


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash before this line leaves the previous file intact


def trim_log(path, iter_num):
    """Keep the rows of log.csv up to the checkpoint's iteration iter_num: a run killed after
    it had logged further rows (the last perhaps cut in the middle) repeats those iterations when
    it resumes, so its log then reads as the uninterrupted run's. Swapped in whole: a crash here
    leaves the old log."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= iter_num]
    with open(path + ".tmp", "w", newline="") as f:
        csv.writer(f).writerows(rows[:1] + kept)
    os.replace(path + ".tmp", path)


def save_checkpoint(run, cfg, noise, rngs, elapsed, meta_dir):
    """ckpt.pt to resume from, and beside it the EMA weights, which can start a new run should
    ckpt.pt ever be lost."""
    save_atomic(dict(run.state_dict(), config=cfg, noise=noise_config(noise) if noise else None, rng=rngs,
                     elapsed=elapsed), os.path.join(cfg["out_dir"], "ckpt.pt"))
    export(run.ema_model, cfg, noise, meta_dir)


def export(ema_model, cfg, noise, meta_dir):
    """The EMA weights in the from_pretrained layout, plus meta.json for the tokenizer."""
    out = cfg["out_dir"]
    tmp = os.path.join(out, ".export")
    if cfg["ar"]:
        ema_model.save_pretrained(tmp)
    else:
        ema_model.save_pretrained(tmp, cfg["graph"], noise_config(noise))
    shutil.copy(os.path.join(meta_dir, "meta.json"), os.path.join(tmp, "meta.json"))
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    os.rmdir(tmp)


def init_model(cfg, meta):
    """The model, graph and noise of the run, by init_from; cfg takes the model's shape when the
    model comes from a checkpoint. Returns (model, graph, noise, checkpoint or None); graph and
    noise are None for the autoregressive twin. A diffusion model keeps the schedule it was
    trained with (a geometric one's sigma_min and sigma_max too)."""
    ckpt, model, schedule = None, None, {"type": cfg["noise"]}
    if cfg["init_from"] == "resume":
        path = os.path.join(cfg["out_dir"], "ckpt.pt")
        if not os.path.exists(path):
            fail(f"init_from='resume' but {path} does not exist")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a cut or corrupted file fails in many ways: zip, pickle, end of file
            reason = str(e).split("\n")[0].split(". ")[0] or type(e).__name__  # not torch's advice after it
            fail(f"{path} is damaged ({reason}); nothing was changed. The EMA weights exported with it "
                 f"(config.json, pytorch_model.bin) can start a new run in another --out_dir with "
                 f"--init_from=pretrained:{cfg['out_dir']}")
        changed = [f"{k}={ckpt['config'][k]} (not {cfg[k]})" for k in MODEL_KEYS if ckpt["config"][k] != cfg[k]]
        if changed:
            print(f"resuming the model of {path}: {', '.join(changed)}")
        cfg.update({k: ckpt["config"][k] for k in MODEL_KEYS})
        schedule = ckpt["noise"]
    elif cfg["init_from"].startswith("pretrained:"):
        try:
            model = SEDD.from_pretrained(cfg["init_from"].split(":", 1)[1], dropout=cfg["dropout"])
        except (OSError, ValueError, RuntimeError, ImportError) as e:
            fail(e)
        c, schedule = model.config, model.noise_config
        cfg.update(ar=c.causal, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, cond_dim=c.cond_dim)
        if not c.causal:
            cfg.update(graph=model.graph_name, noise=schedule["type"])
    graph = None if cfg["ar"] else get_graph(cfg["graph"], meta["n_tokens"])
    try:
        noise = None if cfg["ar"] else noise_from_config(schedule)
    except (TypeError, ValueError) as e:
        fail(f"the checkpoint's noise schedule {schedule}: {e}")
    vocab_size = meta["n_tokens"] + 1 if cfg["ar"] else graph.dim  # + BOS for the twin
    if model is None:
        model = build_model(cfg, vocab_size)
    elif model.config.vocab_size != vocab_size:
        fail(f"the pretrained model has {model.config.vocab_size} token ids but {cfg['dataset']} needs {vocab_size}")
    return model, graph, noise, ckpt


def train(cfg):
    ddp = "RANK" in os.environ
    rank, world, local_rank = 0, 1, 0
    if ddp:
        local_rank = int(os.environ["LOCAL_RANK"])
    try:
        device = pick_device(cfg["device"], local_rank)
    except ValueError as e:
        fail(e)
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            torch.cuda.set_device(device)
    master = rank == 0
    if cfg["gradient_accumulation_steps"] % world:
        fail(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be a multiple of the {world} processes")
    torch.manual_seed(cfg["seed"] + rank)  # dropout differs between ranks

    eval_data = Data(cfg, cfg["eval_split"] if cfg["eval_only"] else "val")
    train_data = Data(cfg, "train") if not cfg["eval_only"] else None
    if not cfg["eval_only"] and cfg["init_from"] != "resume":  # a new run never writes over an old one
        taken = [f for f in ("ckpt.pt", "log.csv") if os.path.exists(os.path.join(cfg["out_dir"], f))]
        if taken:
            fail(f"{cfg['out_dir']} already holds a run ({', '.join(taken)}): continue it with --init_from=resume "
                 f"or start this one with another --out_dir (nothing was changed)")
    meta = eval_data.meta
    model, graph, noise, ckpt = init_model(cfg, meta)
    run = Trainer(cfg, model, graph, noise, train_data, device, ddp, rank, world)
    if ckpt is not None:
        run.load_state_dict(ckpt)
        if len(ckpt["rng"]) == world:  # same number of processes: dropout continues exactly
            set_rng_state(ckpt["rng"][rank], device)
        elif master:
            print(f"note: {len(ckpt['rng'])} process(es) wrote the checkpoint, {world} resume it: dropout restarts")
    draws = draw_dtype(device)
    if master and draws != torch.float64:
        print(f"note: {device} has no float64, so evaluation samples are drawn in float32 "
              "(a slightly lower effective temperature: see sampling.sample_categorical)")

    if cfg["eval_only"]:
        if master:
            print(report(evaluate(run.ema_model, graph, noise, eval_data, cfg, device, run.ctx), meta, cfg["eval_split"]))
        if ddp:
            dist.destroy_process_group()
        return

    tokens_per_iter = cfg["batch_size"] * cfg["gradient_accumulation_steps"] * cfg["block_size"]
    flops_per_token = model.estimate_flops_per_token()
    peak = peak_flops(device, run.dtype) if master else 1.0
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        print(f"{model.num_params():,} parameters ({model.num_params(non_embedding=True):,} non-embedding) on {device}, "
              f"{run.dtype}, {world} process(es), {tokens_per_iter:,} tokens per iteration")
        log_path = os.path.join(cfg["out_dir"], "log.csv")
        if ckpt is not None and os.path.exists(log_path):
            trim_log(log_path, run.iter_num)
        log = open(log_path, "a", newline="", buffering=1)  # line-buffered: a killed run loses no row
        writer = csv.writer(log)
        if log.tell() == 0:
            writer.writerow(["iter", "train_bits_per_token", "lr", "tokens_per_s", "mfu", "val_bits_per_token", "val_se",
                             "elapsed_s"])
    _, decode = get_tokenizer(meta)
    can_plot = importlib.util.find_spec("matplotlib") is not None
    if not can_plot and master:
        print("note: pip install matplotlib to get loss.png, the loss curves, in out_dir at each evaluation")
    resumed_at = run.iter_num if ckpt is not None else None  # checkpointed there, after any evaluation
    t_last, it_last, loss_sum, loss_iters = time.perf_counter(), run.iter_num, 0.0, 0
    start = t_last - (ckpt["elapsed"] if ckpt is not None else 0.0)  # the run's wall time goes on

    while True:
        it = run.iter_num
        evaluating = (it % cfg["eval_interval"] == 0 or it == cfg["max_iters"]) and it != resumed_at
        saving = evaluating or (cfg["ckpt_interval"] and it % cfg["ckpt_interval"] == 0 and it != resumed_at)
        if saving:
            rngs = gather(rng_state(device), ddp, world)  # before any evaluation draws
            if master and evaluating:
                result = evaluate(run.ema_model, graph, noise, eval_data, cfg, device, run.ctx)
                print(f"iter {it}: {report(result, meta, 'val')}")
                with fork_rng(device):
                    torch.manual_seed(it)
                    with run.ctx:
                        shape = (1, cfg["block_size"])
                        x = (sample_ar(run.ema_model, shape, dtype=draws, device=device) if cfg["ar"] else
                             sample(run.ema_model, graph, noise, shape, cfg["sample_steps"], dtype=draws, device=device))
                    text = decode(x[0].tolist())
                print(f"sample: {text[:300]!r}")
                elapsed = time.perf_counter() - start
                writer.writerow([it, "", "", "", "", f"{result['bits']:.5f}", f"{result['bits_se']:.5f}", f"{elapsed:.1f}"])
                if can_plot:
                    plot_losses(cfg["out_dir"], tokens_per_iter, meta, cfg["block_size"])
            if master:  # after the log rows up to `it`, which the line-buffered log has saved
                save_checkpoint(run, cfg, noise, rngs, time.perf_counter() - start, eval_data.dir)
            t_last, it_last = time.perf_counter(), it  # evaluations and checkpoints are not training time
        if it >= cfg["max_iters"]:
            break

        loss, lr = run.step()
        loss_sum, loss_iters = loss_sum + loss, loss_iters + 1
        if master and run.iter_num % cfg["log_interval"] == 0:
            tokens_per_s = tokens_per_iter * (run.iter_num - it_last) / (time.perf_counter() - t_last)
            mfu = flops_per_token * tokens_per_s / world / peak
            train_bits = bits_per_token(loss_sum.item() / loss_iters, cfg["block_size"])
            print(f"iter {run.iter_num}: loss {train_bits:.4f} bits/token, lr {lr:.2e}, {tokens_per_s:,.0f} tok/s, "
                  f"mfu {100 * mfu:.1f}%" + (f", {run.n_skipped} skipped steps" if run.n_skipped else ""))
            writer.writerow([run.iter_num, f"{train_bits:.5f}", f"{lr:.3e}", f"{tokens_per_s:.0f}", f"{mfu:.4f}", "", "",
                             f"{time.perf_counter() - start:.1f}"])
            t_last, it_last, loss_sum, loss_iters = time.perf_counter(), run.iter_num, 0.0, 0
    if master:
        log.close()
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    train(load_config(sys.argv[1:]))
