"""SEDD beside its autoregressive twin: the paper's claims, measured on trained checkpoints.

    python train.py config/text8_tiny.py && python train.py config/text8_tiny_uniform.py \
        && python train.py config/text8_tiny_ar.py
    python compare.py                        # writes out/compare/results.md and out/compare/*.png
    python compare.py --judge out/text8_hour_ar --samples 64

The twin (train.py ar=True) is the same network, causal and without noise, trained on the exact
next-character likelihood with the same data, steps, batch and optimiser, so each difference
below is what diffusion changes. Three claims of the paper, each on text8's validation split:

1. Likelihood (Table 2): bits per character of SEDD Absorb, SEDD Uniform (an upper bound,
   the ELBO of Theorem 3.6) and the twin (exact), on the same windows, with the wall time of
   each training run; character n-gram models (add-0.1 counts of the training split) for scale.
2. Samples against compute (Figure 1; SEDD Uniform as in Figure 2): SEDD Absorb samples at
   several numbers of Tweedie tau-leaping steps (one network evaluation each; Euler is the same
   law for absorbing + log-linear noise) and by first hitting (exact, one evaluation per
   character), SEDD Uniform at one step per character, against the twin's samples at
   temperature 1 and with nucleus sampling (one evaluation per character), scored by generative
   perplexity under a judge twin (per character), unigram entropy and the share of real words.
   The judge scores its own samples too: those get an edge (at temperature 1 their expected
   score is the judge's own entropy).
3. Infilling (Table 5): held-out windows with a middle span removed; SEDD fills it seeing the
   prefix and the suffix (first hitting: the exact conditional for its score), the twin
   continues the prefix (it cannot see a suffix); the whole window is then scored the same way.

Where diffusion wins (`--curves`): the validation curves of any runs from their log.csv, against
training tokens (how the gap moves with compute) or, with --epochs, against passes over limited
unique data (train.py --train_tokens: the twin overfits unless regularised, and diffusion's masking
acts as augmentation, as --ar_input_mask does for the twin):

    python compare.py --curves out/text8_scarce out/text8_scarce_ar* --epochs --png assets/repeated_data.png

matplotlib draws the plots (pip install matplotlib); without it the tables are still written
(--curves prints its table, then stops).
"""
import argparse
import contextlib
import csv
import json
import os
import sys
import time

import numpy as np
import torch

import checkpoint
import evaluation
from device import pick_device, pick_dtype
from evaluation import dataset_words, real_word_rate, twin_perplexity, unigram_entropy
from prepare import Data, fail, get_tokenizer, load_meta
from progress import Progress, progress
from sampling import sample, sample_ar


def load_run(out_dir, device):
    """A training output directory: its EMA model (moved to `device`), graph and noise (None for
    the twin), dataset meta and the run's config, and its wall time and iterations from log.csv."""
    try:
        model, graph, noise, meta = checkpoint.load(out_dir)
        cfg = checkpoint.load_training_state(out_dir)["config"]
    except (OSError, ValueError, RuntimeError) as e:
        fail(f"{e} (train it first: see python compare.py --help)")
    with open(os.path.join(out_dir, "log.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["val_bits_per_token"]]
    return dict(model=model.to(device), graph=graph, noise=noise, cfg=cfg, meta=meta,
                name=os.path.basename(out_dir.rstrip("/")), minutes=float(rows[-1]["elapsed_s"]) / 60,
                iters=int(rows[-1]["iter"]))


def ngram_bits(data_dir, n, k=0.1):
    """Bits per character on the val split of an order-n character model: counts of the training
    split plus k for every character (add-k smoothing), the first n - 1 val characters left out."""
    meta = load_meta(data_dir)
    V = meta["n_tokens"]
    split = lambda s: np.fromfile(os.path.join(data_dir, f"{s}.bin"), dtype=meta["dtype"]).astype(np.int64)
    train_ids, val_ids = split("train"), split("val")

    def codes(ids):  # each window of n characters as one base-V number
        return sum(ids[i:len(ids) - n + 1 + i] * V ** (n - 1 - i) for i in range(n))
    counts = np.bincount(codes(train_ids), minlength=V ** n).reshape(-1, V) + k
    val = codes(val_ids)
    p = counts[val // V, val % V] / counts.sum(1)[val // V]
    return -np.log2(p).mean()


def real_words(texts, vocabulary):
    try:
        return real_word_rate(texts, vocabulary)
    except ValueError:  # not one whole word (a sample's first and last are not counted)
        return float("nan")


def score(texts, token_rows, judge, vocabulary, device):
    return dict(ppl=twin_perplexity(texts, judge, device=device), entropy=unigram_entropy(token_rows),
                words=real_words(texts, vocabulary))


def parse_args(argv):
    """The settings of the three experiments (--help prints this module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--absorb", default="out/text8_tiny")
    parser.add_argument("--uniform", default="out/text8_tiny_uniform",
                        help="SEDD Uniform ('' to leave it out)")
    parser.add_argument("--ar", default="out/text8_tiny_ar")
    parser.add_argument("--judge", help="the judge twin (default: --ar)")
    parser.add_argument("--data", default="data/text8")
    parser.add_argument("--out", default="out/compare")
    parser.add_argument("--eval_seqs", type=int, default=256, help="val windows for the likelihood")
    parser.add_argument("--eval_n_t", type=int, default=32, help="t samples per window for the ELBO")
    parser.add_argument("--samples", type=int, default=32, help="samples per setting")
    parser.add_argument("--steps", default="16,32,64,128,256,1024", help="SEDD sampling steps")
    parser.add_argument("--top_p", type=float, default=0.9, help="the twin's nucleus setting")
    parser.add_argument("--span", type=int, default=64,
                        help="characters removed from the middle for infilling")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="the networks' autocast dtype for the likelihood and the samples, as in "
                             "training (auto: bfloat16 where the device has bf16 units); the judge runs in "
                             "float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curves", nargs="+", metavar="OUT_DIR",
                        help="instead of the three claims: the validation curves of these runs from their "
                             "log.csv, in one plot (--png) and a table")
    parser.add_argument("--epochs", action="store_true",
                        help="--curves against epochs over the unique training data, not training tokens")
    parser.add_argument("--png", help="--curves: the plot's file (default: --out/curves.png)")
    return parser.parse_args(argv)


def likelihood(args, runs, data, device, ctx):
    """Claim 1 (Table 2): each model's val bits per character on the same windows (SEDD: the ELBO,
    an upper bound; the twin: exact), then character n-gram models for scale. Table lines."""
    lines = ["## Likelihood", "", "| model | val bits per character | steps | training wall time |",
             "|---|---|---|---|"]
    for name, run in runs.items():
        batch_size = run["cfg"]["batch_size"]
        n_seqs = args.eval_seqs // batch_size * batch_size  # whole batches of the run's size
        result = evaluation.evaluate(run["model"], run["graph"], run["noise"], data, n_seqs, batch_size,
                                     args.eval_n_t, run["cfg"]["seed"], device, ctx)
        kind = "<=" if run["graph"] is not None else "="
        lines.append(f"| {name} | {kind} {result['bits']:.3f} +- {result['bits_se']:.3f} | "
                     f"{run['iters']:,} | {run['minutes']:.1f} min |")
        print(lines[-1], flush=True)
    for n in (3, 4, 5):
        start = time.perf_counter()
        bits = ngram_bits(args.data, n)
        lines.append(f"| character {n}-gram (add-0.1) | = {bits:.3f} (whole val split) | - | "
                     f"{time.perf_counter() - start:.0f} s |")
        print(lines[-1], flush=True)
    return lines


def samplers(args, runs, shape, device):
    """{label: (updates, draw)} for claim 2, draw(stats, callback) -> samples: SEDD Absorb by
    Tweedie tau-leaping at each of --steps and by first hitting, SEDD Uniform at one step per
    character, the twin at temperature 1 and with nucleus sampling; `updates` is how many times
    draw calls back (the progress line's total)."""
    absorb, twin, L = runs["SEDD Absorb"], runs["autoregressive twin"], shape[1]
    draws = {f"SEDD Absorb {steps} steps": (steps, lambda stats, callback, steps=steps: sample(
        absorb["model"], absorb["graph"], absorb["noise"], shape, steps, device=device, callback=callback,
        stats=stats)) for steps in [int(s) for s in args.steps.split(",")]}
    draws["SEDD Absorb first hitting (exact)"] = (L, lambda stats, callback: sample(
        absorb["model"], absorb["graph"], absorb["noise"], shape, None, "first_hitting", device=device,
        callback=callback, stats=stats))
    if "SEDD Uniform" in runs:  # as many steps as characters: the compute of first hitting and the twin
        uniform = runs["SEDD Uniform"]
        draws[f"SEDD Uniform {L} steps"] = (L, lambda stats, callback: sample(
            uniform["model"], uniform["graph"], uniform["noise"], shape, L, device=device, callback=callback,
            stats=stats))
    for top_p in (1.0, args.top_p):
        label = "twin, temperature 1" if top_p == 1 else f"twin, nucleus {top_p}"
        draws[label] = (L, lambda stats, callback, top_p=top_p: sample_ar(
            twin["model"], shape, top_p=top_p, device=device, callback=callback, stats=stats))
    return draws


def samples_against_compute(args, runs, windows, judge, vocabulary, decode, device, ctx):
    """Claim 2 (Figure 1): each sampler's samples, from the same seed, scored by the judge, against
    their network evaluations; held-out windows scored the same way for scale. Returns the table
    lines and the points (label, network evaluations per sample, seconds, scores) for the plot."""
    L = runs["SEDD Absorb"]["cfg"]["block_size"]
    points = []
    for label, (updates, draw) in samplers(args, runs, (args.samples, L), device).items():
        torch.manual_seed(args.seed)
        stats, start = {}, time.perf_counter()
        with ctx:
            x = draw(stats, Progress(updates, label))
        seconds = time.perf_counter() - start
        points.append((label, stats["network_evals"], seconds,
                       score([decode(r) for r in x.tolist()], x, judge, vocabulary, device)))
        print(points[-1], flush=True)
    lines = ["", f"## Samples against compute ({args.samples} samples of {L} characters each)", "",
             "| sampler | network evaluations | seconds | judge perplexity per character "
             "| unigram entropy (nats) | real words |", "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {evals} | {sec:.0f} | {s['ppl']:.2f} | {s['entropy']:.3f} | {s['words']:.1%} |"
              for label, evals, sec, s in points]
    s = score([decode(w.tolist()) for w in windows], windows, judge, vocabulary, device)
    lines.append(f"| real val text | - | - | {s['ppl']:.2f} | {s['entropy']:.3f} | {s['words']:.1%} |")
    return lines, points


def infilling(args, runs, windows, judge, vocabulary, decode, device, ctx):
    """Claim 3 (Table 5): the middle --span characters of held-out windows removed; SEDD Absorb
    fills them seeing both sides (first hitting), the twin continues the prefix; every window is
    then scored whole by the judge, the span by its real words. Table lines."""
    absorb, twin, L = runs["SEDD Absorb"], runs["autoregressive twin"], windows.shape[1]
    lo, hi = (L - args.span) // 2, (L + args.span) // 2
    torch.manual_seed(args.seed)
    given = [i for i in range(L) if not lo <= i < hi]  # first hitting: one network call per missing one
    with ctx:
        filled = torch.stack([sample(absorb["model"], absorb["graph"], absorb["noise"], (1, L), None,
                                     "first_hitting", prompt={i: int(w[i]) for i in given}, device=device)[0]
                              for w in progress(windows, "SEDD infilling, windows")])
    torch.manual_seed(args.seed)
    continued = windows.clone()  # the twin's span after the true prefix, then the true suffix it cannot see
    with ctx:
        for row, w in progress(list(zip(continued, windows)), "twin continuations, windows"):
            prefix = {i: int(w[i]) for i in range(lo)}
            row[:hi] = sample_ar(twin["model"], (1, hi), prompt=prefix, device=device)[0]
    lines = ["", f"## Infilling ({args.samples} val windows, characters {lo}-{hi - 1} removed)", "",
             "| model | sees | judge perplexity per character of the window | real words in the span |",
             "|---|---|---|---|"]
    for label, sees, x in (("SEDD Absorb, first hitting", "prefix + suffix", filled),
                           ("autoregressive twin", "prefix", continued), ("the removed text", "-", windows)):
        texts = [decode(r) for r in x.tolist()]
        spans = [decode(r[lo:hi]) for r in x.tolist()]
        lines.append(f"| {label} | {sees} | {twin_perplexity(texts, judge, device=device):.2f} | "
                     f"{real_words(spans, vocabulary):.1%} |")
        print(lines[-1], flush=True)
    return lines + ["", "Sample (first window, SEDD):", "", "    " + decode(filled[0].tolist()), ""]


def read_curve(out_dir):
    """A run's validation rows from out_dir/log.csv as arrays (tokens, epochs, val_bits_per_token,
    val_se), its label (the directory's name, with the model's kind where the exported config.json
    says it) and whether it is the twin."""
    path = os.path.join(out_dir, "log.csv")
    try:
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r.get("val_bits_per_token")]
    except OSError as e:
        fail(f"{path}: {e.strerror} (train the run first)")
    if not rows or "epochs" not in rows[0]:
        fail(f"{path} has no evaluations with tokens and epochs (an older train.py's log: train the run "
             f"again)")
    columns = ("tokens", "epochs", "val_bits_per_token", "val_se")
    curve = {c: np.array([float(r[c]) for r in rows]) for c in columns}
    curve.update(label=os.path.basename(out_dir.rstrip("/")), twin=False)
    with contextlib.suppress(OSError):
        with open(os.path.join(out_dir, "config.json")) as f:
            config = json.load(f)
        curve["twin"] = config["model"]["causal"]
        curve["label"] += " (twin)" if curve["twin"] else f" (SEDD {config['graph']['type']})"
    return curve


def curves(args):
    """--curves: each run's validation bits per token (per character on text8; SEDD: its bound)
    against training tokens (log scale) or epochs, with a band of one standard error, in one plot;
    and a table of each run's last and best evaluation."""
    x = "epochs" if args.epochs else "tokens"
    runs = [read_curve(d) for d in args.curves]
    at = (lambda v: f"{v:.1f}") if args.epochs else (lambda v: f"{v / 1e6:.2f}M")
    lines = [f"| run | last val bits | at {x} | best val bits | at {x} |", "|---|---|---|---|---|"]
    for c in runs:
        bits, se = c["val_bits_per_token"], c["val_se"]
        best = bits.argmin()
        lines += [f"| {c['label']} | {bits[-1]:.3f} +- {se[-1]:.3f} | {at(c[x][-1])} | "
                  f"{bits[best]:.3f} +- {se[best]:.3f} | {at(c[x][best])} |"]
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("no plot: pip install matplotlib")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in runs:
        keep = (c[x] > 0) | args.epochs  # a log scale has no 0
        bits, se = c["val_bits_per_token"][keep], c["val_se"][keep]
        line, = ax.plot(c[x][keep], bits, ".--" if c["twin"] else ".-", label=c["label"])
        ax.fill_between(c[x][keep], bits - se, bits + se, color=line.get_color(), alpha=0.2)
    if x == "tokens":
        ax.set_xscale("log")
    ax.set_xlabel("epochs over the unique training data" if args.epochs else
                  "training tokens (characters on text8)")
    ax.set_ylabel("val bits per token (SEDD: upper bound)")
    ax.legend()
    fig.tight_layout()
    png = args.png or os.path.join(args.out, "curves.png")
    os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")


def main(argv=None):
    args = parse_args(argv)
    if args.curves:
        return curves(args)
    judge = args.judge or args.ar
    try:
        device = pick_device(args.device)
    except ValueError as e:
        fail(e)
    network = pick_dtype(args.dtype, device)
    ctx = torch.autocast(device.type, dtype=network, enabled=network != torch.float32)  # as in training
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # float32 matmuls (the judge) in TF32
    dirs = {"SEDD Absorb": args.absorb, "SEDD Uniform": args.uniform, "autoregressive twin": args.ar}
    runs = {name: load_run(out_dir, device) for name, out_dir in dirs.items() if out_dir}
    os.makedirs(args.out, exist_ok=True)
    data_dir, dataset = os.path.split(args.data.rstrip("/"))
    data = Data({**runs["SEDD Absorb"]["cfg"], "data_dir": data_dir, "dataset": dataset}, "val")
    command = " ".join(["python compare.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"# SEDD beside its autoregressive twin ({data.meta['name']}, val split)", "",
             f"Command: `{command}`; checkpoints {', '.join(r['name'] for r in runs.values())}; "
             f"judge {judge}; device {device}, networks in {str(network)[6:]}, torch {torch.__version__}.",
             ""]
    lines += likelihood(args, runs, data, device, ctx)
    vocabulary = set(dataset_words(args.data))
    _, decode = get_tokenizer(runs["SEDD Absorb"]["meta"])
    windows = data.eval_batches(args.samples, args.samples)[0]  # held-out text, evenly spread over val
    table, points = samples_against_compute(args, runs, windows, judge, vocabulary, decode, device, ctx)
    lines += table + infilling(args, runs, windows, judge, vocabulary, decode, device, ctx)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(points, judge, os.path.join(args.out, "samples_vs_compute.png"))
    print(f"wrote {args.out}/results.md")


def plot(points, judge, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: pip install matplotlib")
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    # Tweedie at several step counts is the line; the other samplers are points
    tweedie = lambda label: label.startswith("SEDD Absorb") and label.endswith(" steps")
    judge_name = os.path.basename(judge.rstrip("/"))
    for ax, key, ylabel in ((axes[0], "ppl", f"perplexity per character under {judge_name}"),
                            (axes[1], "words", "real words")):
        line = [(e, s[key]) for label, e, _, s in points if tweedie(label)]
        ax.plot(*zip(*line), "o-", label="SEDD Absorb, Tweedie")
        for label, e, _, s in points:
            if not tweedie(label):
                ax.plot(e, s[key], "*" if label.startswith("SEDD") else "s", markersize=10, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(ylabel)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
