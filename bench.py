"""Benchmark a config on this device: training throughput, MFU and memory; sampling speed.

    python bench.py                                  # config/text8_tiny.py, every variant
    python bench.py config/text8.py --batch_size=8   # any train.py config and --key=value overrides
    python bench.py --variants=fp32,bf16 --sample=False   # shorter (bench.py's own keys: BENCH)
    python bench.py --quality_iters=300              # also: val ELBO after 300 steps, fp32 vs default
    python bench.py --help                           # bench.py's settings

- Peak FLOP/s (MFU's denominator): on CPU a measured 2048^3 matmul in float32 and in bfloat16,
  the fastest of 10 timings (device.peak_flops, which train.py's MFU uses too); on CUDA the
  card's dense datasheet figure for each dtype (measured too for a card device.py does not know).
- Training: train.py's own step (train.Trainer.step: draw_step's batch, forward + loss_fn,
  backward, clipping, AdamW, EMA with its warm-up) of a fresh model per variant: float32 or bf16
  autocast, eager or torch.compile.
  Variants are timed round-robin (one window of each, `rounds` times), so the load of a shared
  machine hits all alike; tokens/s are medians over rounds, speed-ups medians of the per-round
  ratios to float32 eager. MFU = estimate_flops_per_token() * tokens/s / peak of its dtype.
  Memory: per variant on CUDA; on CPU the peak resident set of the whole process.
- Sampling: sampling.sample of the config's model, Tweedie tau-leaping at sample_steps x
  block_size steps and (absorbing graph) first hitting, or the twin's left-to-right sampler:
  tokens/s and network evaluations/s.
- Quality (--quality_iters=N): train.train N steps from the same seed in float32 eager and in
  train.py's path for the config, then the val ELBO of both (EMA weights, evaluation.evaluate in
  float32, the same t and x_t) and their difference.
"""
import ast
import io
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext, redirect_stdout

import torch

import checkpoint
import evaluation
import train
from configurator import load_config, set_key, settings_help
from device import draw_dtype, peak_flops, pick_compile, pick_device, pick_dtype
from graph import get_graph
from noise import get_noise
from prepare import TEXT8_CHARS, Data, fail
from sampling import sample, sample_ar

BENCH = dict(
    variants="fp32,bf16,fp32_compile,bf16_compile",  # any of these, comma-separated
    rounds=5,              # round-robin repetitions; medians over them
    window=1,              # training steps per timing window
    warmup=2,              # untimed steps per variant first (the first one compiles)
    sample=True,           # sampling benchmark
    sample_batch=8,
    sample_steps="1,4",    # step counts as multiples of block_size
    quality_iters=0,       # > 0: the val ELBO check after this many training steps
    world=1,               # processes the global batch is split over, for the host's share of a step
)

# The vocabularies of datasets that bench.py can stand in for with random tokens when they are not
# prepared: a step's speed does not depend on the text.
VOCABULARIES = {"text8": len(TEXT8_CHARS), "openwebtext": 50257}  # GPT-2's BPE and its end of text


def split_args(argv):
    """bench.py's own --key=value arguments (BENCH), and the rest for configurator.load_config."""
    bench, rest = dict(BENCH), []
    for arg in argv:
        key, eq, text = arg[2:].partition("=")
        if not (arg.startswith("--") and eq and key in BENCH):
            rest.append(arg)
            continue
        value = text
        if not isinstance(BENCH[key], str):  # as configurator.load_config: a Python literal
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                pass
        set_key(bench, key, value, arg)
    return bench, rest


def build_model(cfg, graph, **overrides):
    torch.manual_seed(cfg["seed"])  # the same initial weights in every variant
    return train.build_model({**cfg, **overrides}, graph.dim)


def make_step(cfg, data, graph, noise, device, dtype, compiled):
    """One variant's train.py step on a fresh model: returns step() and state_bytes() (its
    weights, EMA and AdamW moments: the memory that stays between steps)."""
    variant = {**cfg, "dtype": str(dtype)[6:], "compile": compiled}
    diffusion = None if cfg["ar"] else graph  # the twin: no noise at all
    run = train.Trainer(variant, build_model(cfg, graph), diffusion, noise, data, device)

    def state_bytes():
        opt_state = [v for s in run.optimizer.state.values() for v in s.values()]
        tensors = [*run.model.parameters(), *run.ema_model.parameters(), *opt_state]
        return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))
    return run.step, state_bytes


class RandomTokens:
    """Stands in for an unprepared dataset in the training benchmark: windows of uniformly random
    tokens of its vocabulary, with Data's interface."""

    def __init__(self, n_tokens, block_size):
        self.n_tokens, self.L = n_tokens, block_size

    def random_starts(self, n, generator):
        return torch.randint(1, (n,), generator=generator)  # moves the generator as Data does

    def windows(self, starts):
        return torch.randint(self.n_tokens, (len(starts), self.L))


def time_host_share(cfg, bench, data, graph, noise, device, repeats=10):
    """(seconds, tokens): what one of bench["world"] processes spends preparing its share of a
    step's global batch on the CPU (train.draw_step: reading its windows, its t and x_t; then
    train.to_device), the median of `repeats`: the work that must hide behind the device's step;
    and the tokens of that share."""
    times, generator = [], torch.Generator().manual_seed(cfg["seed"])
    for _ in range(repeats):
        start = time.perf_counter()
        batch = train.draw_step(cfg, data, None if cfg["ar"] else graph, noise, generator, 0, bench["world"])
        batch = [train.to_device(x, device) for x in batch]
        times.append(time.perf_counter() - start)
    return statistics.median(times), batch[0].numel()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up_variants(cfg, bench, data, graph, noise, device, peaks):
    """Each variant named in bench["variants"] built on a fresh model and warmed up: {name: (step,
    state_bytes)} (make_step), and a note per variant: its warm-up time, or why it was skipped or failed."""
    variants, info = {}, {}
    for name in bench["variants"].split(","):
        dtype = torch.bfloat16 if name.startswith("bf16") else torch.float32
        if dtype not in peaks:
            info[name] = "skipped: no bf16 on this device"
            continue
        try:
            step, state_bytes = make_step(cfg, data, graph, noise, device, dtype, name.endswith("compile"))
            start = time.perf_counter()
            for _ in range(bench["warmup"]):
                step()
            sync(device)
            variants[name] = step, state_bytes
            info[name] = f"warm-up {time.perf_counter() - start:.1f}s"
        except Exception as e:  # e.g. torch.compile without a working C++ compiler
            first_line = (str(e).strip().splitlines() or [""])[0][:100]
            info[name] = f"failed: {type(e).__name__}: {first_line}"
    return variants, info


def time_round_robin(variants, bench, device):
    """Seconds of each variant's window of bench["window"] steps in each of bench["rounds"] rounds
    (one window of every variant per round), and on CUDA each variant's peak memory."""
    times, memory = {name: [] for name in variants}, dict.fromkeys(variants, 0)
    for _ in range(bench["rounds"]):
        for name, (step, state_bytes) in variants.items():
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            for _ in range(bench["window"]):
                step()
            sync(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":  # this variant's own state + its peak above what was resident
                peak = torch.cuda.max_memory_allocated(device) - resident
                memory[name] = max(memory[name], state_bytes() + peak)
    return times, memory


def bench_training(cfg, bench, device, graph, noise, peaks, data):
    """The training table: tokens/s, speed-up over fp32, MFU and memory of each variant; then the
    host's share of a step."""
    L = cfg["block_size"]
    tokens = cfg["batch_size"] * cfg["gradient_accumulation_steps"] * L
    flops = build_model(cfg, graph).estimate_flops_per_token()
    path = (pick_dtype(cfg["dtype"], device), pick_compile(cfg["compile"], device))
    print(f"\ntraining: {tokens:,} tokens per step (batch {cfg['batch_size']} x "
          f"{cfg['gradient_accumulation_steps']} x {L}), {flops / 1e6:.1f} MFLOP per token; "
          f"{bench['rounds']} rounds of {bench['window']} step(s) per variant, round-robin; medians")
    variants, info = warm_up_variants(cfg, bench, data, graph, noise, device, peaks)
    times, memory = time_round_robin(variants, bench, device)
    base = times.get("fp32")
    print(f"{'variant':<14}{'tokens/s':>10}{'vs fp32':>9}{'MFU':>8}{'peak mem':>11}  notes")
    for name in info:
        if name not in variants:
            print(f"{name:<14}{'-':>10}{'':>9}{'':>8}{'':>11}  {info[name]}")
            continue
        dtype = torch.bfloat16 if name.startswith("bf16") else torch.float32
        tps = bench["window"] * tokens / statistics.median(times[name])
        ratio = f"{statistics.median(b / t for b, t in zip(base, times[name])):.2f}x" if base else "-"
        mem = f"{memory[name] / 2**20:,.0f} MiB" if device.type == "cuda" else "-"
        default = "  <- train.py's path for this config" if (dtype, name.endswith("compile")) == path else ""
        mfu = 100 * flops * tps / peaks[dtype]
        print(f"{name:<14}{tps:>10,.0f}{ratio:>9}{mfu:>7.1f}%{mem:>11}  {info[name]}{default}")
    print("vs fp32: median over rounds of the ratio to fp32 in the same round. MFU: of the dtype's peak.")
    if device.type == "cuda":
        print("peak mem: the variant's weights, EMA and AdamW state + its peak allocation during a step")
    else:
        import resource  # Unix; ru_maxrss is in KiB on Linux, bytes on macOS
        unit = 2**20 if sys.platform == "darwin" else 2**10
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit
        print(f"peak mem on CPU: the resident set of the whole process (all variants together, ru_maxrss): "
              f"{rss:,.0f} MiB")
    if bench["world"] <= cfg["gradient_accumulation_steps"] and cfg["gradient_accumulation_steps"] % bench["world"] == 0:
        host, share = time_host_share(cfg, bench, data, graph, noise, device)
        print(f"host share: one of {bench['world']} processes prepares its {share:,} tokens of "
              f"the step in {1e3 * host:.1f} ms on the CPU (median of 10; with {torch.get_num_threads()} "
              "threads), while the device computes the step before")
    else:
        print(f"host share: not measured, world={bench['world']} does not divide gradient_accumulation_steps="
              f"{cfg['gradient_accumulation_steps']}")


def bench_sampling(cfg, bench, device, graph, noise):
    B, L = bench["sample_batch"], cfg["block_size"]
    dtype, draws = pick_dtype(cfg["dtype"], device), draw_dtype(device)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    model = build_model(cfg, graph, dropout=0.0).to(device).eval()
    print(f"\nsampling: batch {B} x {L} tokens, {str(dtype)[6:]}, eager, untrained weights (a sampler's cost "
          "does not depend on them)")
    print(f"{'sampler':<28}{'seconds':>9}{'tokens/s':>10}{'evals/s':>9}{'evals':>7}")
    if cfg["ar"]:
        runs = {"twin, left to right":
                lambda stats: sample_ar(model, (B, L), dtype=draws, device=device, stats=stats)}
    else:
        def diffusion(steps, predictor="analytic"):  # one sampler run, timed below
            return lambda stats: sample(model, graph, noise, (B, L), steps, predictor, dtype=draws, device=device,
                                        stats=stats)
        runs = {f"Tweedie, {m * L} steps": diffusion(m * L)
                for m in sorted(int(m) for m in str(bench["sample_steps"]).split(","))}
        if cfg["graph"] == "absorb":
            runs["first hitting (exact)"] = diffusion(None, "first_hitting")
    for name, run in runs.items():
        stats = {}
        torch.manual_seed(cfg["seed"])
        sync(device)
        start = time.perf_counter()
        with ctx:
            run(stats)
        sync(device)
        sec = time.perf_counter() - start
        evals = stats["network_evals"]
        print(f"{name:<28}{sec:>9.2f}{B * L / sec:>10,.0f}{evals / sec:>9.1f}{evals:>7}")
    print("evals: network forward passes of the batch")


def check_quality(cfg, iters, device, graph, noise):
    """Val ELBO after `iters` train.py steps: float32 eager vs train.py's path, same seed and eval."""
    dtype, compiled = pick_dtype(cfg["dtype"], device), pick_compile(cfg["compile"], device)
    runs = {"float32 eager": dict(dtype="float32", compile=False),
            f"train.py's path ({str(dtype)[6:]}{', compiled' if compiled else ', eager'})": dict()}
    eval_data = Data(cfg, "val")
    unit = "bits per character" if eval_data.meta["tokenizer"] == "chars" else "bits per token"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(runs.items()):
            out = os.path.join(tmp, str(i))
            run = {**cfg, **overrides, "out_dir": out, "init_from": "scratch", "max_iters": iters,
                   "eval_interval": iters, "eval_batches": 1, "eval_n_t": 1, "sample_steps": 1}
            start, log = time.perf_counter(), io.StringIO()
            with redirect_stdout(log):  # train.py's progress lines; shown only if it fails
                try:
                    train.train(run)
                except BaseException:
                    sys.stdout.write(log.getvalue())
                    raise
            model = checkpoint.load(out)[0].to(device)  # the EMA weights, as train.py exports them
            n_seqs = cfg["eval_batches"] * cfg["batch_size"]
            results[name] = evaluation.evaluate(model, graph, noise, eval_data, n_seqs, cfg["batch_size"],
                                                cfg["eval_n_t"], cfg["seed"], device, nullcontext())
            print(f"{name:<36} val ELBO {results[name]['bits']:.4f} +- {results[name]['bits_se']:.4f} {unit} "
                  f"({time.perf_counter() - start:.0f}s)")
    (a, b) = results.values()
    print(f"difference: {b['bits'] - a['bits']:+.4f} {unit}; the same {a['n']} val sequences and the same t "
          f"and x_t ({cfg['eval_n_t']} per sequence) for both, evaluated in float32")


def measure_peaks(device):
    """{dtype: peak FLOP/s} (device.peak_flops) of float32 and, where train.py would use it, bfloat16;
    printed."""
    peaks = {torch.float32: peak_flops(device, torch.float32, repeats=10)}
    if pick_dtype("auto", device) == torch.bfloat16:
        peaks[torch.bfloat16] = peak_flops(device, torch.bfloat16, repeats=10)
    what = ("the card's dense datasheet figures" if device.type == "cuda" else
            "measured 2048^3 matmul, fastest of 10")
    print("peak FLOP/s (" + what + "): "
          + ", ".join(f"{str(k)[6:]} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items()))
    return peaks


def main(argv):
    if "-h" in argv or "--help" in argv:
        print(__doc__ + "\nbench.py's own settings (any other --key=value is train.py's: "
              "python train.py --help):\n" + settings_help(__file__, "BENCH"))
        raise SystemExit(0)
    bench, rest = split_args(argv)
    if all(arg.startswith("--") for arg in rest):  # no config file named: the default one
        rest = ["config/text8_tiny.py"] + rest
    for name in bench["variants"].split(","):
        if name not in BENCH["variants"].split(","):
            fail(f"unknown variant {name!r}; choose from {BENCH['variants']}")
    cfg = load_config(rest)
    try:
        device = pick_device(cfg["device"])
    except ValueError as e:
        fail(e)
    prepared = os.path.exists(os.path.join(cfg["data_dir"], cfg["dataset"], "meta.json"))
    if prepared or cfg["dataset"] not in VOCABULARIES:  # Data says how to prepare one that is not
        data = Data(cfg, "train")
        n_tokens = data.meta["n_tokens"]
    else:
        if bench["quality_iters"] > 0:
            fail(f"--quality_iters trains and evaluates on {cfg['dataset']}: prepare it with prepare.py first")
        n_tokens = VOCABULARIES[cfg["dataset"]]
        data = RandomTokens(n_tokens, cfg["block_size"])
        print(f"note: {cfg['data_dir']}/{cfg['dataset']} is not prepared: training on random tokens of its "
              f"vocabulary ({n_tokens:,}); a step's speed does not depend on the text")
    graph, noise = get_graph(cfg["graph"], n_tokens), get_noise(cfg["noise"])
    model = build_model(cfg, graph)
    print(f"bench.py {' '.join(argv)}\n{cfg['dataset']}: {cfg['n_layer']} layers, {cfg['n_embd']} hidden, "
          f"{cfg['n_head']} heads, length {cfg['block_size']}; {model.num_params():,} parameters; "
          f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                f", {torch.get_num_threads()} threads") + f"; torch {torch.__version__}")
    peaks = measure_peaks(device)
    start = time.perf_counter()
    bench_training(cfg, bench, device, graph, noise, peaks, data)
    print(f"({time.perf_counter() - start:.0f}s)")
    if bench["sample"]:
        start = time.perf_counter()
        bench_sampling(cfg, bench, device, graph, noise)
        print(f"({time.perf_counter() - start:.0f}s)")
    if bench["quality_iters"] > 0:
        print(f"\nquality: val ELBO after {bench['quality_iters']} steps of train.py, same seed")
        check_quality(cfg, bench["quality_iters"], device, graph, noise)


if __name__ == "__main__":
    main(sys.argv[1:])
