"""How good is a model? Its likelihood, and the quality of its samples.

Likelihood (Theorem 3.6): evaluate() estimates the ELBO of fixed evaluation windows, an upper
bound on -log p(x0) (loss.elbo), or the autoregressive twin's exact NLL (loss.ar_nll), in
bits per character or perplexity; for a dataset whose entropy is known (prepare.py toy), that
entropy is reported beside it, as the floor both stay above.

Sample quality (Section 5.2): generative_perplexity scores decoded samples with a judge LM
(GPT-2 large by default, through the optional transformers package), twin_perplexity with a
trained autoregressive twin (the laptop-scale judge); unigram_entropy exposes samples that
flatter a judge by repetition; for character-level models real_word_rate is the plainer
reading: the share of sampled words that occur in the training text.

Over training: Log writes a run's log.csv, plot_losses draws it (the training loss and the
validation bound).

train.py, sampling.py, bench.py and compare.py call these; nothing here trains or samples.
"""
import csv
import math
import os
import statistics

import numpy as np
import torch

import checkpoint
from device import fork_rng
from loss import ar_nll, bits_per_token, elbo, perplexity, prior_loss
from prepare import get_tokenizer, gpt2_encoding, load_meta
from progress import progress


# -----------------------------------------------------------------------------
# likelihood

@torch.no_grad()
def evaluate(model, graph, noise, data, n_seqs, batch_size, n_t, seed, device, ctx):
    """ELBO (Thm 3.6) of fixed evaluation windows: mean and standard error across sequences.
    For the autoregressive twin (graph None) the exact NLL instead, with no prior term.

    data: a train.Data split; its fixed windows of data.L tokens (data.eval_batches), the first
    n_seqs of them (n_seqs <= 0: all), in batches of batch_size. n_t: stratified t per sequence
    (elbo). seed: of the draws of t and x_t, made in forked generators, so the caller's stream
    does not move. ctx: the autocast context (or a nullcontext) of the forward passes.

    The standard error is std / sqrt(n) over the per-sequence estimates, so it covers both the
    data and the Monte Carlo noise of t and x_t; the latter grows like log(1 / t_min) near
    t = 0, which the stratified t of elbo() keeps in check. Mean and std are taken in Python
    floats, so a device without float64 (Apple's MPS) needs none."""
    with fork_rng(device):
        torch.manual_seed(seed)
        nats = []
        for x in progress(data.eval_batches(n_seqs, batch_size), "evaluation batches"):
            with ctx:
                x = x.to(device)
                nats += (ar_nll(model, x, model.bos) if graph is None else
                         elbo(model, graph, noise, x, n_t=n_t)).tolist()
    L = data.L
    mean = statistics.fmean(nats)
    se = statistics.stdev(nats) / math.sqrt(len(nats)) if len(nats) > 1 else float("nan")
    return dict(nats=mean, se=se, bits=bits_per_token(mean, L), bits_se=bits_per_token(se, L), length=L,
                ppl=perplexity(mean, L), prior=None if graph is None else prior_loss(graph, noise, L),
                n=len(nats))


def source_entropy(meta, length):
    """The exact entropy in bits per token of windows of `length` tokens, for a dataset that
    records it (prepare.py toy: a stationary Markov chain), else None."""
    if "entropy_rate_bits" not in meta:
        return None
    return (meta["entropy_first_bits"] + (length - 1) * meta["entropy_rate_bits"]) / length


def report(result, meta, split):
    """One line: the ELBO (an upper bound: "<=") of a diffusion model, the exact NLL of the twin,
    and for a dataset of known entropy (prepare.py toy) that entropy, which both stay above."""
    bound, exact = result["prior"] is not None, result["prior"] is None
    what = "ELBO" if bound else "NLL (exact)"
    extra = f"prior term {result['prior']:.4f} nats/seq, " if bound else ""
    entropy = source_entropy(meta, result["length"])
    if entropy is not None:
        extra = f"the source's entropy {entropy:.4f}, gap {result['bits'] - entropy:+.4f}; " + extra
    if meta["tokenizer"] == "gpt2":
        return (f"{split} {what} {result['nats']:.2f} +- {result['se']:.2f} nats/seq, perplexity "
                f"{'=' if exact else '<='} {result['ppl']:.2f} ({extra}{result['n']} seqs)")
    return (f"{split} {what} {result['bits']:.4f} +- {result['bits_se']:.4f} bits per character "
            f"({extra}{result['n']} seqs)")


# -----------------------------------------------------------------------------
# sample quality

@torch.no_grad()
def generative_perplexity(texts, judge="gpt2-large", device="cpu", batch_size=8):
    """Token-level perplexity of decoded samples under a judge causal LM (paper Sec. 5.2).

    Convention: each text is retokenised with GPT-2's BPE (prepare.gpt2_encoding; the GPT-2
    judges of every size share it, so no transformers tokenizer is downloaded) and the result is
    exp(mean NLL over all predicted tokens of all texts). A text's first token has no context
    and is not scored; a text longer than the judge's context is split into consecutive chunks
    of that length, each scored on its own (so each chunk's first token is not scored either).
    judge: a Hugging Face model id (downloaded by transformers) or a built causal LM, called as
        judge(input_ids=..., attention_mask=...).logits, with config.n_positions (or
        max_position_embeddings) as its context.
    """
    if isinstance(judge, str):
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            raise ImportError("generative perplexity needs a judge model from the transformers package: "
                              "pip install transformers") from None
        judge = AutoModelForCausalLM.from_pretrained(judge)
    judge = judge.to(device).eval()
    context = getattr(judge.config, "n_positions", None) or judge.config.max_position_embeddings
    enc = gpt2_encoding()
    chunks = [ids[i:i + context] for text in texts
              for ids in [enc.encode(text, allowed_special={"<|endoftext|>"})]
              for i in range(0, len(ids), context)]
    chunks = [c for c in chunks if len(c) > 1]  # a lone token predicts nothing
    if not chunks:
        raise ValueError("the texts have no token to score (each needs at least 2 GPT-2 tokens)")
    nll, count = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        batch = chunks[i:i + batch_size]
        T = max(len(c) for c in batch)
        ids = torch.tensor([c + [0] * (T - len(c)) for c in batch], device=device)  # right padding
        mask = torch.tensor([[1] * len(c) + [0] * (T - len(c)) for c in batch], device=device)
        logits = judge(input_ids=ids, attention_mask=mask).logits[:, :-1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least float32
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        scored = mask[:, 1:].bool()  # position j predicts token j + 1, if that one is real
        nll += token_nll[scored].double().sum().item()
        count += scored.sum().item()
    return math.exp(nll / count)


@torch.no_grad()
def twin_perplexity(texts, judge_dir, device="cpu"):
    """Perplexity per token of texts under a trained autoregressive twin (train.py --ar=True),
    the laptop-scale stand-in for the paper's GPT-2 large judge: exp of the mean NLL per token
    over all texts, every token scored (the first from BOS), each text tokenised with the
    twin's own meta.json."""
    judge, _, _, meta = checkpoint.load(judge_dir)
    judge = judge.to(device)
    if not judge.config.causal:
        raise ValueError(f"{judge_dir} holds a diffusion model; a judge must be an autoregressive twin "
                         f"(train.py --ar=True, e.g. config/text8_tiny_ar.py)")
    encode, _ = get_tokenizer(meta)
    nll, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([encode(text)], device=device)
        nll += ar_nll(judge, ids, judge.bos).item()
        count += ids.shape[1]
    return math.exp(nll / count)


def unigram_entropy(token_ids):
    """Entropy in nats of the empirical token distribution of a sample: -sum_v p_v log p_v with
    p_v the frequency of token v in it. For a batch (a 2-D tensor or a list of lists) the mean
    over samples of each one's entropy. Repetitive samples (low-temperature artefacts, which
    also flatter generative perplexity) have a low entropy."""
    rows = token_ids.tolist() if torch.is_tensor(token_ids) else list(token_ids)
    if rows and not isinstance(rows[0], (list, tuple)) and not torch.is_tensor(rows[0]):
        rows = [rows]
    entropies = []
    for row in rows:
        _, counts = torch.unique(torch.as_tensor(row), return_counts=True)
        p = counts.double() / counts.sum()
        entropies.append(-(p * p.log()).sum().item())
    return sum(entropies) / len(entropies)


def dataset_words(data_dir, split="train"):
    """The space-separated words of a split of a character-level dataset (prepare.py), in order,
    all held in memory at once."""
    meta = load_meta(data_dir)
    if meta["tokenizer"] != "chars":
        raise ValueError(f"{data_dir} is tokenized with {meta['tokenizer']!r}; real words are counted "
                         f"in character-level datasets (prepare.py text8 or chars)")
    ids = np.fromfile(os.path.join(data_dir, split + ".bin"), dtype=meta["dtype"])
    codepoints = np.array([ord(c) for c in meta["chars"]], dtype="<u4")  # decode all ids at once
    return codepoints[ids].tobytes().decode("utf-32-le").split()


def real_word_rate(texts, vocabulary):
    """The fraction of the samples' words found in `vocabulary`, e.g. set(dataset_words(...)):
    sample quality of a character-level model read directly, where a judge LM does not apply.
    Each sample's first and last word are not counted, since the window may cut them. Real text
    falls short of 100% too (validation words the training text lacks): for scale, score held-out
    text the same way (compare.py's "real val text" row)."""
    words = [w for text in texts for w in text.split()[1:-1]]
    if not words:
        raise ValueError("the samples have no word to check (a sample needs 3 words: its first and "
                         "last are not counted)")
    return sum(w in vocabulary for w in words) / len(words)


class Log:
    """log.csv, the loss curve: a row every log_interval iterations (training loss, lr, speed) and
    one per evaluation (the validation bound), each on the disk as soon as it is written (line
    buffering), so that a killed run loses no row. Every row says how far training had gone in
    iterations, in tokens (tokens_per_iter each) and in epochs (passes over the unique_tokens
    that training draws from), so that runs of different batches and data compare (compare.py)."""
    COLUMNS = ["iter", "tokens", "epochs", "train_bits_per_token", "lr", "tokens_per_s", "mfu",
               "val_bits_per_token", "val_se", "elapsed_s"]

    def __init__(self, out_dir, tokens_per_iter, unique_tokens, resumed_at=None):
        self.path = os.path.join(out_dir, "log.csv")
        self.tokens_per_iter, self.unique_tokens = tokens_per_iter, unique_tokens
        if resumed_at is not None and os.path.exists(self.path):
            self.trim(resumed_at)
        self.file = open(self.path, "a", newline="", buffering=1)
        self.writer = csv.writer(self.file)
        if self.file.tell() == 0:
            self.writer.writerow(self.COLUMNS)

    def trim(self, iter_num):
        """Keep the rows up to iter_num, the checkpoint's iteration: a run killed after it had
        logged further rows (the last perhaps cut in the middle) repeats those iterations when it
        resumes, so its log then reads as the uninterrupted run's. The kept rows are rewritten in
        COLUMNS by name, so a log begun by an older train.py (without tokens and epochs) goes on in
        one layout. Swapped in whole: a crash here leaves the old log."""
        with open(self.path, newline="") as f:
            header, *rows = list(csv.reader(f)) or [[]]  # empty: killed before its header
        kept = [dict(zip(header, r)) for r in rows
                if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= iter_num]
        with open(self.path + ".tmp", "w", newline="") as f:
            csv.writer(f).writerows([self.COLUMNS] + [self.row(int(r["iter"]), r) for r in kept])
        os.replace(self.path + ".tmp", self.path)

    def row(self, it, values):
        """Iteration `it` as a row of COLUMNS: tokens and epochs follow from it unless `values`, a
        dict of (formatted) columns, has them; a column neither gives stays empty."""
        tokens = it * self.tokens_per_iter
        derived = {"iter": it, "tokens": tokens, "epochs": f"{tokens / self.unique_tokens:.4f}"}
        return [values.get(c) or derived.get(c, "") for c in self.COLUMNS]

    def write(self, it, elapsed, **values):
        """One row: iteration `it`, the given columns (already formatted), the wall time so far."""
        self.writer.writerow(self.row(it, {**values, "elapsed_s": f"{elapsed:.1f}"}))


def plot_losses(out_dir, meta, length):
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
        points = [(int(r["tokens"]), float(r[key])) for r in rows if r[key]]
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
