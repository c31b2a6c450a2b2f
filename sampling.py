"""Sampling: simulate the reverse CTMC with the learned concrete score (paper Section 4).

The forward process noises every token independently (graph.py); its time reversal has rates
Q_t(y, x) p_t(y) / p_t(x) (Def. 3.5), and p_t(y) / p_t(x) is exactly what the network learned
(the concrete score s_theta, model.py). We start at the base distribution at t = 1 (all MASK
for the absorbing graph, uniform tokens for the uniform one) and step t down to eps on the
grid linspace(1, eps, steps + 1), updating EVERY position at once in each step (tau-leaping):

- Euler, Eq. 17: x^i moves to y with probability dsigma(t) dt Q[x^i, y] s_{i,y}.
- Tweedie ("analytic"), Eq. 19: p(y) = (exp(-delta_sigma Q) s_i)_y exp(delta_sigma Q)[x^i, y],
  with delta_sigma = sigma_bar(t) - sigma_bar(t - dt). With the true score it is the best
  tau-leaping step there is (Thm 4.2); for absorbing + log-linear noise the two coincide.
- A final Tweedie step from t = eps to noise 0 (Thm 4.1) removes the leftover noise; for the
  absorbing graph it cannot output MASK.

Infilling (Algorithm 3): the score is unconditional, but by Bayes' rule its ratios between
sequences that agree on the prompt are the conditional ones (Section 4.2), so clamping the
prompt tokens after every update samples the free positions conditionally. For the absorbing
graph this is exact in the limit of small steps (a noised prompt token is itself or MASK, so a
clean one conditions on exactly the clean value); for the uniform graph the truly noised
prompt would have moved, and clamping clean tokens is an approximation.

For the absorbing graph, first_hitting simulates the reverse process exactly instead: no time
grid, one unmasking per network call at the time the schedule's law draws (the next unmasking
time has a closed form), so L network calls make a sample of L tokens, with no discretisation
error. Tau-leaping with more steps than tokens spends most calls on steps that reveal nothing.

    python sampling.py --ckpt out/text8_tiny --steps 256 --prefix "the king" --show_steps 4
    python sampling.py --ckpt louaaron/sedd-small --length 128 --suffix " the end."
    python sampling.py --ckpt louaaron/sedd-small --steps 1024 --batch_size 8 --gen_ppl gpt2-large
    python sampling.py --ckpt out/text8_hour --steps 256 --batch_size 32 --real_words data/text8

Sample quality (Section 5.2): generative_perplexity scores samples with a judge LM (GPT-2 large
by default, through the optional transformers package); unigram_entropy exposes samples that
flatter it by repetition. For character-level models real_word_rate is the plainer reading: the
share of sampled words that occur in the training text.
"""
import argparse
import itertools
import math
import os

import numpy as np
import torch

from graph import Absorbing, get_graph
from loss import ar_nll
from model import SEDD, pick_device
from noise import noise_from_config
from prepare import fail, get_tokenizer, gpt2_encoding, load_meta


def sample_categorical(probs, dtype=torch.float64):
    """One draw per row of the last axis, with probability proportional to max(probs, 0).

    Negative entries (an Euler step with dsigma dt too large, an imperfect score in Eq. 19)
    are clamped to 0 as in Algorithm 2's note. The draw is an exponential race: argmax_y
    p_y / E_y with E_y ~ Exp(1) i.i.d. picks y with probability p_y / sum(p) (the same as
    Gumbel-max on log p), so rows need no normalisation.

    Why float64: float32 torch.rand returns multiples of 2^-24, so E = -log(u) has nothing in
    (0, 6e-8) and is coarsely quantised just above it. A token whose probability is below
    ~6e-8 / E_lead times the leading token's can then never win, and tokens near that ratio win
    too rarely. Many-step absorbing sampling lives in exactly this regime: per step a masked
    position leaves MASK with probability ~dt / t (1e-3 for 1024 steps), shared among 50k
    tokens, i.e. ratios ~1e-8 to MASK. float32 noise thus truncates the tail of every
    unmasking draw: a lower effective temperature, which lowers generative perplexity without
    better samples (Zheng et al. 2024, arXiv:2409.02908). In float64 the floor is 1e-16.
    """
    probs = probs.to(dtype).clamp(min=0)
    # u > 0 keeps E finite, so a zero-probability token can never win (0 / E = 0). In place:
    # these are [B, L, vocab] tensors, 3.3 GB each in float64 for 8 x 1024 GPT-2 tokens.
    u = torch.rand(probs.shape, dtype=dtype, device=probs.device).clamp_(min=torch.finfo(dtype).tiny)
    return probs.div_(u.log_().neg_()).argmax(-1)


def draw_dtype(device):
    """float64 for sampling's probabilities and draws (see sample_categorical), or float32 on a
    device that has no float64, such as Apple's MPS. Asks the device itself."""
    try:
        torch.zeros(1, dtype=torch.float64, device=device)
        return torch.float64
    except (TypeError, RuntimeError):
        return torch.float32


def tweedie_probs(graph, score, x, delta_sigma):
    """Eq. 19: (exp(-delta_sigma Q) s)_y exp(delta_sigma Q)[x, y], per position. [B, L, dim]"""
    return graph.staggered_score(score, delta_sigma) * graph.transp_transition(x, delta_sigma)


@torch.no_grad()
def sample(model, graph, noise, shape, steps, predictor="analytic", eps=1e-5, denoise=True,
           prompt=None, dtype=torch.float64, device="cpu", callback=None, stats=None):
    """Draw sequences x [B, L] (int64) from the reverse diffusion (Algorithms 2 and 3).

    model: any callable (x_t [B, L], sigma_bar [B]) -> log_score [B, L, dim], e.g. an SEDD in
        eval mode. predictor: "analytic" (Tweedie, Eq. 19), "euler" (Eq. 17), or
        "first_hitting" (absorbing graph only: the exact reverse process, see first_hitting;
        `steps`, `eps` and `denoise` do not apply to it).
    prompt: {position: token} clamped in every sequence (prefix, suffix, middle, scattered);
        those positions come out bit-identical. See text_prompt for text.
    dtype: of the probabilities and the categorical noise (float64: see sample_categorical).
    callback(step, x): called after each of the `steps` updates, e.g. to print progress.
    stats: a dict, filled with steps and network_evals (forward passes of the batch).
    With denoise=False the output may still hold MASK tokens.
    """
    if predictor not in ("analytic", "euler", "first_hitting"):
        raise ValueError(f"predictor must be 'analytic', 'euler' or 'first_hitting', not {predictor!r}")
    B, L = shape
    positions, tokens = prompt_tensors(prompt, graph.n_tokens, L, device)
    if predictor == "first_hitting":
        return first_hitting(model, graph, noise, B, L, positions, tokens, dtype, device, callback, stats)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, not {steps}")

    def clamp(x):  # Algorithm 3: the prompt positions keep their tokens
        x[:, positions] = tokens
        return x

    t = torch.linspace(1, eps, steps + 1, dtype=dtype, device=device)
    x = clamp(graph.sample_limit(B, L, device=device))
    for k in range(steps):
        sigma, dsigma = noise(t[k])
        score = model(x, sigma.expand(B)).to(dtype).exp()
        if predictor == "euler":
            # Eq. 17: delta_x + dt Q_t(x, .) s with Q_t = dsigma Q (reverse_rate is at unit rate)
            probs = graph.one_hot(x, score) + dsigma * (t[k] - t[k + 1]) * graph.reverse_rate(x, score)
        else:
            delta_sigma = (sigma - noise(t[k + 1])[0]).expand(B, 1)
            probs = tweedie_probs(graph, score, x, delta_sigma)
        x = clamp(sample_categorical(probs, dtype))
        if callback is not None:
            callback(k + 1, x)
    if denoise:
        # Thm 4.1 from sigma_bar(eps) to 0: the true denoiser for the exact score. MASK has no
        # data mass, so its column is dropped (~0 for the exact score, not for a learned one).
        sigma = noise(t[-1])[0].expand(B)
        score = model(x, sigma).to(dtype).exp()
        probs = tweedie_probs(graph, score, x, sigma[:, None])
        if isinstance(graph, Absorbing):
            probs = probs[..., : graph.mask]
        x = clamp(sample_categorical(probs, dtype))
    if stats is not None:
        stats.update(steps=steps, network_evals=steps + denoise)
    return x


def first_hitting(model, graph, noise, B, L, positions, tokens, dtype, device, callback, stats):
    """The absorbing reverse process simulated exactly, one unmasking at a time (Zheng et al.
    2024, arXiv:2409.02908): no time grid, one network call per generated token.

    Forward, each token is masked independently at a random time whose law the schedule fixes:
    masked by time t with probability m(t) = 1 - e^{-sigma_bar(t)}. In reverse, given k masked
    positions at time t, each one's masking time is ~ m^{-1}(m(t) U) with U uniform, so the next
    unmasking (the latest of the k) has m(s) = m(t) u^{1/k}, u ~ U(0, 1): for log-linear noise,
    m = (1 - eps) t and s = t u^{1/k}. Which masked position unmasks is uniform (they are
    exchangeable), and its token follows the reverse rates at time s (Def. 3.5: from MASK to y
    proportional to the score s_y). Only m matters, never t, so every schedule works the same,
    and each sequence keeps its own clock. With the true score the output follows the data law
    exactly: starting from all MASK loses nothing, since whether a token is masked does not
    depend on its value."""
    if not isinstance(graph, Absorbing):
        raise ValueError("first_hitting simulates the absorbing graph's reverse process; it does not apply to "
                         "the uniform graph, whose tokens can change many times: use 'analytic' or 'euler'")
    x = graph.sample_limit(B, L, device=device)
    x[:, positions] = tokens
    masked = x == graph.mask
    rows = torch.arange(B, device=device)
    sigma_max = noise(torch.tensor(1.0, dtype=dtype, device=device))[0]
    m = (-torch.expm1(-sigma_max)).expand(B)  # the probability of being masked at t = 1
    n_free = L - len(positions)
    for k in range(n_free, 0, -1):  # k positions still masked in every sequence
        m = m * torch.rand(B, dtype=dtype, device=device) ** (1 / k)
        sigma = -torch.log1p(-m)  # sigma_bar at the next unmasking time
        pos = sample_categorical(masked.to(dtype), dtype)  # uniform among the masked positions
        score = model(x, sigma)[rows, pos, : graph.mask]
        x[rows, pos] = sample_categorical(score.to(dtype).exp(), dtype)
        masked[rows, pos] = False
        if callback is not None:
            callback(n_free - k + 1, x)
    if stats is not None:
        stats.update(steps=n_free, network_evals=n_free)
    return x


def prompt_tensors(prompt, n_tokens, length, device):
    """{position: token} -> (positions, tokens) LongTensors, checked against the sequence."""
    prompt = dict(prompt or {})
    for pos, tok in prompt.items():
        if not 0 <= pos < length:
            raise ValueError(f"prompt position {pos} is outside the sequence of length {length}")
        if not 0 <= tok < n_tokens:
            raise ValueError(f"prompt token {tok} at position {pos} is not one of the {n_tokens} tokens")
    positions = torch.tensor(list(prompt), dtype=torch.long, device=device)
    return positions, torch.tensor(list(prompt.values()), dtype=torch.long, device=device)


# -----------------------------------------------------------------------------
# the autoregressive twin (train.py ar=True): what diffusion is compared with

def nucleus(probs, top_p):
    """probs with every token outside the nucleus set to 0: the nucleus is the smallest set of most
    likely tokens holding at least top_p of the probability (Holtzman et al. 2020)."""
    sorted_probs, order = probs.sort(-1, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the mass of the more likely tokens
    return probs * torch.zeros_like(keep).scatter(-1, order, keep)


@torch.no_grad()
def sample_ar(model, shape, prompt=None, top_p=1.0, dtype=torch.float64, device="cpu", stats=None):
    """Samples [B, L] of the autoregressive twin, left to right: each token drawn from the
    model's next-token law (temperature 1), or from its nucleus renormalised when top_p < 1.

    One network call per generated token, over the whole sequence so far (no key-value cache:
    the simple form). prompt: {position: token} for a prefix 0 .. k-1; an autoregressive model
    cannot condition on anything after the token it draws, which is what diffusion's infilling
    adds. stats: filled with network_evals."""
    B, L = shape
    bos = model.config.vocab_size - 1  # the twin's start token, the last id
    positions, tokens = prompt_tensors(prompt, bos, L, device)
    if sorted(positions.tolist()) != list(range(len(positions))):
        raise ValueError("the autoregressive twin continues a prefix: its prompt must hold positions 0, 1, ..., k-1")
    x = torch.full((B, L + 1), bos, dtype=torch.long, device=device)
    x[:, positions + 1] = tokens
    for i in range(len(positions), L):
        probs = torch.softmax(model(x[:, : i + 1])[:, -1, :bos].to(dtype), dim=-1)
        x[:, i + 1] = sample_categorical(nucleus(probs, top_p) if top_p < 1 else probs, dtype)
    if stats is not None:
        stats.update(network_evals=L - len(positions))
    return x[:, 1:]


def text_prompt(encode, length, prefix="", suffix="", spans=None):
    """A prompt {position: token} from text: prefix from position 0, suffix ending at position
    length - 1, spans {start: text} anywhere else (encode: str -> list of token ids)."""
    pieces = [("prefix", 0, encode(prefix))] if prefix else []
    if suffix:
        ids = encode(suffix)
        pieces.append(("suffix", length - len(ids), ids))
    pieces += [(f"text at position {start}", start, encode(text)) for start, text in (spans or {}).items()]
    total = sum(len(ids) for _, _, ids in pieces)
    if total > length:
        parts = ", ".join(f"{name} {len(ids)}" for name, _, ids in pieces)
        raise ValueError(f"the prompt has {total} tokens ({parts}) but the sequence has length {length}")
    prompt = {}
    for name, start, ids in pieces:
        if start < 0 or start + len(ids) > length:
            raise ValueError(f"the {name} ({len(ids)} tokens) does not fit in a sequence of length {length}")
        for pos, tok in enumerate(ids, start):
            if pos in prompt:
                raise ValueError(f"the {name} overlaps another part of the prompt at position {pos}")
            prompt[pos] = tok
    return prompt


# -----------------------------------------------------------------------------
# sample quality (paper Sec. 5.2): generative perplexity under a judge LM, unigram entropy

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
    judge = SEDD.from_pretrained(judge_dir).to(device)
    if not judge.config.causal:
        raise ValueError(f"{judge_dir} holds a diffusion model; a judge must be an autoregressive twin "
                         f"(train.py --ar=True, e.g. config/text8_tiny_ar.py)")
    encode, _ = get_tokenizer(load_meta(judge_dir))
    nll, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([encode(text)], device=device)
        nll += ar_nll(judge, ids, judge.config.vocab_size - 1).item()
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
    """The space-separated words of a split of a character-level dataset (prepare.py), in order:
    the training split of the 74M-character text8 copy has 11.3M words, 201,810 distinct (10 s, 1.2 GB)."""
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
    Each sample's first and last word are not counted, since the window may cut them. For scale,
    98.7% of text8's validation words occur in its training text (README)."""
    words = [w for text in texts for w in text.split()[1:-1]]
    if not words:
        raise ValueError("the samples have no word to check (a sample needs 3 words: its first and "
                         "last are not counted)")
    return sum(w in vocabulary for w in words) / len(words)


def render(ids, decode, mask=None):
    """Text of a token list with every MASK shown as '_' (tokenizers know no MASK)."""
    return "".join("_" * len(list(run)) if is_mask else decode(list(run))
                   for is_mask, run in itertools.groupby(ids, key=lambda i: i == mask))


# -----------------------------------------------------------------------------

def main(argv=None):
    """The CLI; returns the decoded samples."""
    parser = argparse.ArgumentParser(description="Sample text from an SEDD model (Algorithms 2 and 3) or its "
                                                 "autoregressive twin (left to right).")
    parser.add_argument("--ckpt", required=True,
                        help="a training output directory (config.json, pytorch_model.bin, meta.json, e.g. "
                             "out/text8_tiny) or a hub id such as louaaron/sedd-small")
    parser.add_argument("--steps", type=int, default=128, help="tau-leaping steps (analytic, euler)")
    parser.add_argument("--predictor", choices=["analytic", "euler", "first_hitting"], default="analytic",
                        help="analytic: Tweedie tau-leaping (Eq. 19); euler (Eq. 17); first_hitting: the exact "
                             "absorbing reverse process, one network call per token (--steps does not apply)")
    parser.add_argument("--top_p", type=float, default=1.0,
                        help="autoregressive twin: nucleus sampling, keep the most likely tokens holding this "
                             "much probability (1: temperature 1, the model's own law)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--length", type=int, help="tokens per sample (default: the model's block_size)")
    parser.add_argument("--prefix", default="", help="text the samples start with")
    parser.add_argument("--suffix", default="", help="text the samples end with")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device")
    parser.add_argument("--show_steps", type=int, default=0, help="print the first sample at this many intermediate steps")
    parser.add_argument("--gen_ppl", nargs="?", const="gpt2-large", metavar="JUDGE",
                        help="also print the generative perplexity of the samples under a judge LM and their "
                             "unigram entropy: a trained autoregressive twin's directory (e.g. out/text8_tiny_ar), "
                             "or a Hugging Face id (default gpt2-large; needs transformers)")
    parser.add_argument("--real_words", metavar="DATA_DIR",
                        help="also print the fraction of sampled words that occur in the training text of "
                             "DATA_DIR, a character-level dataset such as data/text8")
    args = parser.parse_args(argv)

    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be at least 1, not {getattr(args, name)}")
    if not 0 < args.top_p <= 1:
        fail(f"--top_p must be in (0, 1], not {args.top_p}")
    try:
        device = pick_device(args.device)
        model = SEDD.from_pretrained(args.ckpt)
        ar = model.config.causal
        noise = None if ar else noise_from_config(model.noise_config)
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        fail(e)
    if ar and args.suffix:
        fail("the autoregressive twin continues a prefix; filling in before a --suffix needs a diffusion model")
    path = args.ckpt
    absorb = model.graph_name == "absorb"
    n_tokens = model.config.vocab_size - (absorb or ar)  # MASK, or the twin's BOS
    graph = None if ar else get_graph(model.graph_name, n_tokens)
    # a training run stores its dataset's meta.json; official checkpoints are GPT-2 BPE
    local_meta = os.path.isfile(os.path.join(path, "meta.json"))
    meta = load_meta(path) if local_meta else {"name": "GPT-2 BPE", "tokenizer": "gpt2", "n_tokens": 50257}
    if meta["n_tokens"] != n_tokens:
        fail(f"the model has {n_tokens} tokens but the tokenizer of {meta['name']} has {meta['n_tokens']}"
             + ("" if local_meta else f" (no meta.json in {path}, so GPT-2 BPE was assumed)"))
    try:
        encode, decode = get_tokenizer(meta)
    except RuntimeError as e:
        fail(e)

    length = args.length or model.config.block_size
    if not 1 <= length <= model.config.block_size:
        fail(f"--length {length} must be between 1 and the model's block_size {model.config.block_size}")
    try:
        prompt = text_prompt(encode, length, args.prefix, args.suffix)
    except ValueError as e:  # also the tokenizer's: a character outside the vocabulary
        fail(e)

    if args.real_words:  # read before sampling, so that a wrong directory fails at once
        try:
            vocabulary = set(dataset_words(args.real_words))
        except (OSError, ValueError) as e:
            fail(e)

    dtype = draw_dtype(device)
    torch.manual_seed(args.seed)
    model.to(device)
    hitting = args.predictor == "first_hitting"
    total = length - len(prompt) if hitting else args.steps  # updates: one per free token, or the steps
    shown = {round(total * k / (args.show_steps + 1)) for k in range(1, args.show_steps + 1)}

    def show(step, x):
        if step in shown:
            print(f"step {step:>5}/{total}: {render(x[0].tolist(), decode, graph.mask if absorb else None)}")

    stats = {}
    if ar:
        x = sample_ar(model, (args.batch_size, length), prompt, args.top_p, dtype=dtype, device=device, stats=stats)
        how = "left to right" + (f", nucleus top_p={args.top_p}" if args.top_p < 1 else ", temperature 1")
    else:
        try:
            x = sample(model, graph, noise, (args.batch_size, length), args.steps, args.predictor,
                       prompt=prompt, dtype=dtype, device=device, callback=show, stats=stats)
        except ValueError as e:  # first_hitting on a uniform-graph model
            fail(e)
        how = ("first hitting (exact; --steps does not apply)" if hitting else
               f"{args.steps} steps ({args.predictor})")
    texts = [decode(row) for row in x.tolist()]
    for i, text in enumerate(texts):
        print(f"---------- sample {i} ----------")
        print(text)
    print(f"---------- {how}, {stats['network_evals']} network evaluations, dtype {str(dtype)[6:]}, device {device}")
    if args.gen_ppl:
        try:
            if os.path.isdir(args.gen_ppl):
                ppl = twin_perplexity(texts, args.gen_ppl, device=device)
                how = "per token of the twin (every token scored, the first from BOS)"
            else:
                ppl = generative_perplexity(texts, args.gen_ppl, device=device)
                how = ("token level: samples decoded, retokenised with GPT-2 BPE, exp of the mean NLL over all "
                       "predicted tokens; each sample's first token is not scored; samples longer than the judge's "
                       "context are scored in separate chunks")
        except (ImportError, OSError, ValueError, RuntimeError) as e:
            fail(e)
        print(f"generative perplexity {ppl:.2f} under {args.gen_ppl} ({how})")
        print(f"unigram entropy {unigram_entropy(x):.3f} nats (the entropy of each sample's token "
              f"distribution in the model's tokens, mean over the {len(texts)} samples)")
    if args.real_words:
        try:
            rate = real_word_rate(texts, vocabulary)
        except ValueError as e:
            fail(e)
        print(f"real words {rate:.1%} (sampled words, first and last of each sample excluded, that occur "
              f"in the training text of {args.real_words})")
    return texts


if __name__ == "__main__":
    main()
