"""Training: Algorithm 1 in a nanoGPT-style loop, from a laptop CPU to a torchrun cluster.

    python train.py config/text8_tiny.py                      # one process, CPU/MPS/GPU
    python train.py config/text8_tiny.py --batch_size=32      # --key=value overrides
    torchrun --standalone --nproc_per_node=8 train.py config/owt_small.py

Every step draws a global batch of random data windows x0, a noise level t per sequence and
the noised x_t = sample_transition(x0, sigma_bar(t)), then minimises the DWDSE (loss.py;
Theorem 3.6) averaged over the batch. Settings follow the paper and its release (GUIDE 3b):
AdamW (0.9, 0.999), no weight decay, lr 3e-4 with linear warmup then constant, gradient
clipping at 1, an EMA of the weights (used for evaluation, samples and the exported model).

Reproducibility: all randomness of the data (windows, t, x_t) comes from one CPU generator,
identical on every rank; each rank keeps its slice of the global batch. So N processes and one
process with N times the accumulation see the same batch, and a resumed run continues exactly
(every RNG state is in the checkpoint). The output directory holds ckpt.pt (for resume),
config.json + pytorch_model.bin with the EMA weights (SEDD.from_pretrained / sampling.py
--ckpt read it), meta.json (the tokenizer) and log.csv (the loss curve).
"""
import ast
import copy
import csv
import difflib
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from graph import get_graph
from loss import bits_per_token, elbo, loss_fn, perplexity, prior_loss
from model import SEDD, SEDDConfig
from noise import get_noise
from prepare import get_tokenizer, load_meta
from sampling import sample

DEFAULTS = dict(
    # I/O
    out_dir="out",
    init_from="scratch",   # "scratch" | "resume" (out_dir/ckpt.pt) | "pretrained:<hub id or dir>"
    eval_interval=500,     # evaluate, print a sample and checkpoint every this many iterations
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
    # model (GUIDE 2; the paper's small model)
    n_layer=12,
    n_head=12,
    n_embd=768,
    cond_dim=128,
    dropout=0.1,
    cond_sigma=True,       # False: sigma-free network (absorbing only), which samplers can cache
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
MODEL_KEYS = ("graph", "noise", "n_layer", "n_head", "n_embd", "cond_dim", "cond_sigma", "block_size")


def fail(msg):
    raise SystemExit(f"train.py: {msg}")


def set_key(cfg, key, value, origin):
    if key not in cfg:
        close = difflib.get_close_matches(key, cfg, n=1)
        fail(f"unknown config key {key!r} in {origin}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    default = cfg[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if default is not None and type(value) is not type(default) and not (key == "compile" and isinstance(value, bool)):
        fail(f"{key} in {origin} must be {type(default).__name__}, got {value!r}")
    cfg[key] = value


def load_config(argv):
    """DEFAULTS, then each argument in order: a config file (plain Python assignments) or --key=value."""
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
            exec(open(arg).read(), namespace)
            for key, value in namespace.items():
                if not key.startswith("_"):
                    set_key(cfg, key, value, arg)
    return cfg


def lr_at(cfg, it):
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    progress = min(1.0, (it - cfg["warmup_iters"]) / max(1, cfg["max_iters"] - cfg["warmup_iters"]))
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg["learning_rate"] - cfg["min_lr"])


def peak_flops(device, dtype, n=2048, repeats=5):
    """Peak FLOP/s for MFU: the vendor's dense bf16 figure on CUDA; on CPU (or MPS) the measured
    throughput of an n x n matmul in `dtype`, median of `repeats` after one warm-up (bench.py
    uses this same function)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12, "4090": 165e12}
        return next((v for k, v in table.items() if k in name), 312e12)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: the first call of a dtype sets up its kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        (a @ b).sum().item()  # .item() waits for an asynchronous device (MPS)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / sorted(times)[len(times) // 2]


def pick_device(name, local_rank):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def pick_compile(setting, device):
    """torch.compile or not: "auto" compiles on CUDA only."""
    return device.type == "cuda" if setting == "auto" else setting


def pick_dtype(name, device):
    if name == "auto":
        bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else (
            device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        name = "bfloat16" if bf16 else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class Data:
    """Random windows of a uint16/uint32 token memmap (GUIDE 4)."""

    def __init__(self, cfg, split):
        self.dir = os.path.join(cfg["data_dir"], cfg["dataset"])
        self.meta = load_meta(self.dir)
        self.path = os.path.join(self.dir, f"{split}.bin")
        if not os.path.exists(self.path):
            fail(f"{self.path} not found: prepare the {split} split with prepare.py")
        self.dtype, self.L = np.dtype(self.meta["dtype"]), cfg["block_size"]
        self.n = os.path.getsize(self.path) // self.dtype.itemsize
        if self.n <= self.L:
            fail(f"{self.path} has {self.n} tokens, fewer than block_size + 1 = {self.L + 1}")

    def windows(self, starts):
        data = np.memmap(self.path, dtype=self.dtype, mode="r")  # reopened per batch: no memory growth
        return torch.from_numpy(np.stack([data[s:s + self.L].astype(np.int64) for s in starts.tolist()]))

    def random_batch(self, n, generator):
        return self.windows(torch.randint(self.n - self.L, (n,), generator=generator))

    def eval_batches(self, n_seq, batch_size):
        """Fixed windows aligned to multiples of block_size (the rows of zero-shot sets), spread
        evenly over the split, so every evaluation sees the same sequences."""
        rows = self.n // self.L
        n_seq = rows if n_seq <= 0 else min(n_seq, rows)
        starts = torch.arange(n_seq) * (rows // n_seq) * self.L
        return [self.windows(starts[i:i + batch_size]) for i in range(0, n_seq, batch_size)]


def draw_step(cfg, data, graph, noise, generator):
    """One optimiser step's global batch: windows x0, stratified t, noised x_t (all on CPU).

    t is stratified over the global batch: one uniform offset u and t_i = (u + i) / n mod 1,
    shuffled, then mapped into [sampling_eps, 1]. Each t_i is still U[sampling_eps, 1] (the loss
    stays unbiased) while the batch covers the whole range evenly, which lowers the variance.
    """
    n = cfg["batch_size"] * cfg["gradient_accumulation_steps"]
    x0 = data.random_batch(n, generator)
    u = (torch.rand(1, generator=generator) + torch.arange(n) / n) % 1
    t = cfg["sampling_eps"] + (1 - cfg["sampling_eps"]) * u[torch.randperm(n, generator=generator)]
    sigma, _ = noise(t)
    x_t = graph.sample_transition(x0, sigma[:, None], generator=generator)
    return x0, t, x_t


@torch.no_grad()
def evaluate(model, graph, noise, data, cfg, device, ctx):
    """ELBO (Thm 3.6) of fixed evaluation windows: mean and standard error across sequences.

    The standard error is std / sqrt(n) over the per-sequence estimates, so it covers both the
    data and the Monte Carlo noise of t and x_t; the latter grows like log(1 / t_min) near
    t = 0, which the stratified t of elbo() keeps in check."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg["seed"])
        nats = torch.cat([elbo_batch(model, graph, noise, x.to(device), cfg, ctx)
                          for x in data.eval_batches(cfg["eval_batches"] * cfg["batch_size"], cfg["batch_size"])])
    L = cfg["block_size"]
    mean, se = nats.mean().item(), (nats.std().item() / math.sqrt(len(nats)) if len(nats) > 1 else float("nan"))
    return dict(nats=mean, se=se, bits=bits_per_token(mean, L), bits_se=bits_per_token(se, L),
                ppl=perplexity(mean, L), prior=prior_loss(graph, noise, L), n=len(nats))


def elbo_batch(model, graph, noise, x0, cfg, ctx):
    with ctx:
        return elbo(model, graph, noise, x0, n_t=cfg["eval_n_t"]).cpu()


def report(result, meta, split):
    if meta["tokenizer"] == "gpt2":
        return (f"{split} ELBO {result['nats']:.2f} +- {result['se']:.2f} nats/seq, perplexity <= "
                f"{result['ppl']:.2f} (prior term {result['prior']:.4f} nats/seq, {result['n']} seqs)")
    return (f"{split} ELBO {result['bits']:.4f} +- {result['bits_se']:.4f} bits per character "
            f"(prior term {result['prior']:.4f} nats/seq, {result['n']} seqs)")


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash before this line leaves the previous file intact


def export(ema_model, cfg, meta_dir):
    """The EMA weights in the from_pretrained layout, plus meta.json for the tokenizer."""
    out = cfg["out_dir"]
    tmp = os.path.join(out, ".export")
    ema_model.save_pretrained(tmp, cfg["graph"], cfg["noise"])
    shutil.copy(os.path.join(meta_dir, "meta.json"), os.path.join(tmp, "meta.json"))
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    os.rmdir(tmp)


def train(cfg):
    ddp = "RANK" in os.environ
    if ddp:
        local_rank = int(os.environ["LOCAL_RANK"])
        device = pick_device(cfg["device"], local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
        device = pick_device(cfg["device"], 0)
    master = rank == 0
    if cfg["gradient_accumulation_steps"] % world:
        fail(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be a multiple of the {world} processes")
    micro_steps = cfg["gradient_accumulation_steps"] // world
    dtype = pick_dtype(cfg["dtype"], device)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    torch.manual_seed(cfg["seed"] + rank)  # dropout differs between ranks
    generator = torch.Generator().manual_seed(cfg["seed"])  # data randomness: the same on every rank

    ckpt = None
    if cfg["init_from"] == "resume":
        path = os.path.join(cfg["out_dir"], "ckpt.pt")
        if not os.path.exists(path):
            fail(f"init_from='resume' but {path} does not exist")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        changed = [k for k in MODEL_KEYS if ckpt["config"][k] != cfg[k]]
        if changed:
            fail(f"{path} was trained with different {changed}; resume with the same config")
    if cfg["init_from"].startswith("pretrained:"):
        model = SEDD.from_pretrained(cfg["init_from"].split(":", 1)[1])
        c = model.config
        cfg.update(graph=model.graph_name, noise=model.noise_name, n_layer=c.n_layer, n_head=c.n_head,
                   n_embd=c.n_embd, cond_dim=c.cond_dim, cond_sigma=c.cond_sigma)
    elif cfg["init_from"] not in ("scratch", "resume"):
        fail(f"init_from must be 'scratch', 'resume' or 'pretrained:<name or dir>', not {cfg['init_from']!r}")

    train_data = Data(cfg, "train") if not cfg["eval_only"] else None
    eval_data = Data(cfg, cfg["eval_split"] if cfg["eval_only"] else "val")
    meta = eval_data.meta
    graph, noise = get_graph(cfg["graph"], meta["n_tokens"]), get_noise(cfg["noise"])
    if cfg["init_from"].startswith("pretrained:"):
        if model.config.vocab_size != graph.dim:
            fail(f"the pretrained model has {model.config.vocab_size} outputs but {cfg['dataset']} needs {graph.dim}")
    else:
        model = SEDD(SEDDConfig(vocab_size=graph.dim, n_embd=cfg["n_embd"], cond_dim=cfg["cond_dim"],
                                n_layer=cfg["n_layer"], n_head=cfg["n_head"], block_size=cfg["block_size"],
                                dropout=cfg["dropout"], scale_by_sigma=cfg["graph"] == "absorb",
                                cond_sigma=cfg["cond_sigma"]))
    model.to(device)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]),
                                  eps=1e-8, weight_decay=cfg["weight_decay"])
    iter_num, n_updates, n_skipped = 0, 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema_model.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num, n_updates, n_skipped = ckpt["iter_num"], ckpt["n_updates"], ckpt["n_skipped"]
        generator.set_state(ckpt["rng"]["data"])
        if len(ckpt["rng"]["torch"]) == world:  # same number of processes: dropout continues exactly
            torch.set_rng_state(ckpt["rng"]["torch"][rank])

    if cfg["eval_only"]:
        if master:
            print(report(evaluate(ema_model, graph, noise, eval_data, cfg, device, ctx), meta, cfg["eval_split"]))
        if ddp:
            dist.destroy_process_group()
        return

    use_compile = pick_compile(cfg["compile"], device)
    net = torch.compile(model) if use_compile else model  # checkpoints always use `model`: no _orig_mod.
    if ddp:
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    tokens_per_iter = cfg["batch_size"] * cfg["gradient_accumulation_steps"] * cfg["block_size"]
    flops_per_token = model.estimate_flops_per_token()
    peak = peak_flops(device, dtype) if master else 1.0
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        print(f"{model.num_params():,} parameters ({model.num_params(non_embedding=True):,} non-embedding) on {device}, "
              f"{dtype}, {world} process(es), {tokens_per_iter:,} tokens per iteration")
        log = open(os.path.join(cfg["out_dir"], "log.csv"), "a", newline="")
        writer = csv.writer(log)
        if log.tell() == 0:
            writer.writerow(["iter", "train_bits_per_token", "lr", "tokens_per_s", "mfu", "val_bits_per_token", "val_se"])
    _, decode = get_tokenizer(meta)
    t_last, loss_sum = time.perf_counter(), 0.0

    while True:
        if iter_num % cfg["eval_interval"] == 0 or iter_num == cfg["max_iters"]:
            rng = {"data": generator.get_state(), "torch": gather_rng(ddp, world)}
        if master and (iter_num % cfg["eval_interval"] == 0 or iter_num == cfg["max_iters"]):
            result = evaluate(ema_model, graph, noise, eval_data, cfg, device, ctx)
            print(f"iter {iter_num}: {report(result, meta, 'val')}")
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(iter_num)
                with ctx:
                    text = decode(sample(ema_model, graph, noise, (1, cfg["block_size"]), cfg["sample_steps"],
                                         device=device)[0].tolist())
            print(f"sample: {text[:300]!r}")
            writer.writerow([iter_num, "", "", "", "", f"{result['bits']:.5f}", f"{result['bits_se']:.5f}"])
            log.flush()
            save_atomic(dict(model=model.state_dict(), ema=ema_model.state_dict(), optimizer=optimizer.state_dict(),
                             iter_num=iter_num, n_updates=n_updates, n_skipped=n_skipped, config=cfg, rng=rng),
                        os.path.join(cfg["out_dir"], "ckpt.pt"))
            export(ema_model, cfg, eval_data.dir)
            t_last = time.perf_counter()
        if iter_num >= cfg["max_iters"]:
            break

        lr = lr_at(cfg, iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x0, t, x_t = draw_step(cfg, train_data, graph, noise, generator)
        mine = slice(rank * micro_steps * cfg["batch_size"], (rank + 1) * micro_steps * cfg["batch_size"])
        x0, t, x_t = x0[mine].to(device), t[mine].to(device), x_t[mine].to(device)
        for micro, rows in enumerate(torch.arange(len(x0)).split(cfg["batch_size"])):
            sync = nullcontext() if not ddp or micro == micro_steps - 1 else net.no_sync()
            with sync, ctx:
                loss = loss_fn(net, graph, noise, x0[rows], t=t[rows], x_t=x_t[rows]).mean() / micro_steps
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        if torch.isfinite(grad_norm):
            optimizer.step()
            n_updates += 1
            decay = min(cfg["ema_decay"], (1 + n_updates) / (10 + n_updates))  # warm-up: early EMA follows the weights
            torch._foreach_lerp_(list(ema_model.parameters()), list(model.parameters()), 1 - decay)
        else:
            n_skipped += 1  # non-finite gradients: skip the update, keep the count
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1

        if master and iter_num % cfg["log_interval"] == 0:
            elapsed = time.perf_counter() - t_last
            tokens_per_s = tokens_per_iter * cfg["log_interval"] / elapsed
            mfu = flops_per_token * tokens_per_s / world / peak
            train_bits = bits_per_token(loss_sum.item() / cfg["log_interval"], cfg["block_size"])
            print(f"iter {iter_num}: loss {train_bits:.4f} bits/token, lr {lr:.2e}, {tokens_per_s:,.0f} tok/s, "
                  f"mfu {100 * mfu:.1f}%" + (f", {n_skipped} skipped steps" if n_skipped else ""))
            writer.writerow([iter_num, f"{train_bits:.5f}", f"{lr:.3e}", f"{tokens_per_s:.0f}", f"{mfu:.4f}", "", ""])
            t_last, loss_sum = time.perf_counter(), 0.0
    if master:
        log.close()
    if ddp:
        dist.destroy_process_group()


def gather_rng(ddp, world):
    """Every rank's torch RNG state (dropout), so a resumed DDP run continues exactly too."""
    state = torch.get_rng_state()
    if not ddp:
        return [state]
    states = [None] * world
    dist.all_gather_object(states, state)
    return states


if __name__ == "__main__":
    train(load_config(sys.argv[1:]))
