"""Sampling: simulate the reverse CTMC with the learned concrete score (paper Section 4).

The forward process noises every token independently (graph.py); its time reversal has rates
Q_t(y, x) p_t(y) / p_t(x) (Def. 3.5), and p_t(y) / p_t(x) is exactly what the network learned
(the concrete score s_theta, model.py). We start at the base distribution at t = 1 (all MASK
for the absorbing graph, uniform tokens for the uniform one) and step t down to eps (the
sampler's last time, not the noise schedule's eps) on the grid linspace(1, eps, steps + 1),
updating EVERY position at once in each step (tau-leaping):

- Euler tau-leaping, Eq. 17: x^i moves to y with probability dsigma(t) dt Q[x^i, y] s_{i,y}.
- Tweedie tau-leaping, Eq. 19 (the official code calls it "analytic", hence --predictor
  analytic): p(y) = (exp(-delta_sigma Q) s_i)_y exp(delta_sigma Q)[x^i, y], with
  delta_sigma = sigma_bar(t) - sigma_bar(t - dt). With the true score it is the best
  tau-leaping step there is (Thm 4.2); for absorbing + log-linear noise the two coincide.
- A final Tweedie denoising step from t = eps to noise 0 (Thm 4.1) removes the leftover noise;
  for the absorbing graph it cannot output MASK.

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

The CLI also measures sample quality with evaluation.py's judges (--gen_ppl, --real_words). It
runs the network in bf16 autocast where the device has bf16 units, as training does (--dtype);
the samplers compute on its log-scores in float32 or wider and draw in float64, whatever it ran in.
"""
import argparse
import html
import itertools
import os
import shutil
import sys

import torch

import checkpoint
from device import draw_dtype, pick_device, pick_dtype
from evaluation import dataset_words, generative_perplexity, real_word_rate, twin_perplexity, unigram_entropy
from graph import Absorbing
from prepare import fail, get_tokenizer
from progress import Progress


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



def unmask(graph, log_score, x, rate, stay, dtype):
    """A tau-leaping step of the absorbing graph in closed form, where only MASK can move: a masked
    position goes to the real token y with weight rate * s_y, or stays MASK with weight
    max(stay - rate * sum_y s_y, 0). Every other position keeps its token.

    The draw is by inverse CDF: one uniform u per position, and the token whose interval of the
    running sum of the weights holds u times their total; past the last real token, MASK (whose id,
    n_tokens, is where searchsorted ends). One random number per position instead of one per token
    (the exponential race of sample_categorical). The running sum is in `dtype` (float64) for the
    reason sample_categorical gives: a float32 sum has steps of 6e-8 of the mass before a token, so
    a token below that could never be drawn. The weights themselves are float32: each is off by at
    most 6e-8 of itself, and float32 holds scores up to e^88 (the true absorbing score is at most
    1 / (e^sigma_bar - 1): 1e5 at the last step). Every position is computed and torch.where keeps
    the unmasked ones: picking out the masked ones would need their number on the host, a GPU sync
    per step."""
    s = log_score[..., : graph.mask].exp()
    cum = s.to(dtype).cumsum_(-1)  # in place: the step's one float64 [B, L, n_tokens] tensor
    # the weights over rate: s_y for a real y and max(stay / rate - sum_y s_y, 0) for MASK; their
    # total is max(sum_y s_y, stay / rate)
    total = torch.maximum(cum[..., -1], stay / rate)
    u = torch.rand(x.shape, dtype=dtype, device=x.device)
    drawn = torch.searchsorted(cum, (u * total).unsqueeze(-1), right=True).squeeze(-1)
    return torch.where(x == graph.mask, drawn, x)


def euler_step(graph, log_score, x, rate, dtype):
    """Eq. 17: x^i moves to y != x^i with probability rate Q[x^i, y] s_y, rate = dsigma dt."""
    if isinstance(graph, Absorbing):  # only MASK moves, to y at rate s_y: it stays with 1 - rate sum_y s_y
        return unmask(graph, log_score, x, rate, 1.0, dtype)
    score = log_score.exp()
    return sample_categorical(graph.one_hot(x, score) + rate * graph.reverse_rate(x, score), dtype)


def tweedie_step(graph, log_score, x, delta_sigma, dtype, to_clean=False):
    """Eq. 19: x^i moves to y with probability (exp(-delta_sigma Q) s)_y exp(delta_sigma Q)[x^i, y].
    to_clean: the final denoising step (Thm 4.1, delta_sigma = sigma_bar(eps)), which never outputs
    MASK: MASK has no data mass, so its weight is dropped (~0 for the exact score, not for a learned
    one)."""
    if isinstance(graph, Absorbing):
        # At a masked position Eq. 19 is (e^delta_sigma - 1) s_y for a real y, and
        # s_MASK - (e^delta_sigma - 1) sum_y s_y for MASK (graph.py's two factors multiplied out)
        stay = 0.0 if to_clean else log_score[..., graph.mask].to(dtype).exp()
        return unmask(graph, log_score, x, torch.expm1(delta_sigma), stay, dtype)
    # delta_sigma in the score's float32, or graph.py's factors would be made in float64
    return sample_categorical(tweedie_probs(graph, log_score.exp(), x, delta_sigma.float()), dtype)


def tweedie_probs(graph, score, x, delta_sigma):
    """Eq. 19: (exp(-delta_sigma Q) s)_y exp(delta_sigma Q)[x, y], per position. [B, L, dim]"""
    return graph.staggered_score(score, delta_sigma) * graph.transp_transition(x, delta_sigma)


@torch.no_grad()
def sample(model, graph, noise, shape, steps, predictor="analytic", eps=1e-5, denoise=True,
           prompt=None, dtype=torch.float64, device="cpu", callback=None, stats=None):
    """Draw sequences x [B, L] (int64) from the reverse diffusion (Algorithms 2 and 3).

    model: any callable (x_t [B, L], sigma_bar [B]) -> log_score [B, L, dim], e.g. an SEDD in
        eval mode. predictor: "analytic" (Tweedie tau-leaping, Eq. 19), "euler" (Euler
        tau-leaping, Eq. 17), or "first_hitting" (absorbing graph only: the exact reverse process,
        see first_hitting; `steps`, `eps` and `denoise` do not apply to it).
    eps: the last time of the grid linspace(1, eps, steps + 1), where tau-leaping stops and the
        denoising step takes over. Not the noise schedule's eps (LogLinearNoise(eps), which keeps
        sigma_bar(1) finite) nor the loss's sampling_eps (the smallest training t).
    prompt: {position: token} clamped in every sequence (prefix, suffix, middle, scattered);
        those positions come out bit-identical. See text_prompt for text.
    dtype: of the time grid and the draws (float64: see sample_categorical); the probabilities
        are float32, made from the network's log-scores.
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

    def log_scores(x, sigma):
        # float32 from here on, whatever the network returned: bf16 keeps 8 bits of mantissa, so
        # every ratio out of exp would be rounded by up to 0.4%, and sums over the vocabulary worse
        return model(x, sigma.expand(B)).float()

    t = torch.linspace(1, eps, steps + 1, dtype=dtype, device=device)
    x = clamp(graph.sample_limit(B, L, device=device))
    for k in range(steps):
        sigma, dsigma = noise(t[k])
        if predictor == "euler":  # Q_t = dsigma Q over dt = t_k - t_{k+1}
            x = euler_step(graph, log_scores(x, sigma), x, dsigma * (t[k] - t[k + 1]), dtype)
        else:
            x = tweedie_step(graph, log_scores(x, sigma), x, sigma - noise(t[k + 1])[0], dtype)
        x = clamp(x)
        if callback is not None:
            callback(k + 1, x)
    if denoise:  # Thm 4.1 from sigma_bar(eps) to 0: the true denoiser for the exact score
        sigma = noise(t[-1])[0]
        x = clamp(tweedie_step(graph, log_scores(x, sigma), x, sigma, dtype, to_clean=True))
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
    m = (1 - eps) t (the schedule's eps, LogLinearNoise(eps)) and s = t u^{1/k}. Which masked
    position unmasks is uniform (they are exchangeable), and its token follows the reverse rates
    at time s (Def. 3.5: from MASK to y proportional to the score s_y). Only m matters, never t,
    so every schedule works the same, and each sequence keeps its own clock. With the true score
    the output follows the data law exactly: starting from all MASK loses nothing, since whether
    a token is masked does not depend on its value."""
    if not isinstance(graph, Absorbing):
        raise ValueError("first_hitting simulates the absorbing graph's reverse process; it does not apply "
                         "to the uniform graph, whose tokens can change many times: use 'analytic' or 'euler'")
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
def sample_ar(model, shape, prompt=None, top_p=1.0, dtype=torch.float64, device="cpu", callback=None,
              stats=None):
    """Samples [B, L] of the autoregressive twin, left to right: each token drawn from the
    model's next-token law (temperature 1), or from its nucleus renormalised when top_p < 1.

    One network call per generated token, over the whole sequence so far (no key-value cache:
    the simple form). prompt: {position: token} for a prefix 0 .. k-1; an autoregressive model
    cannot condition on anything after the token it draws, which is what diffusion's infilling
    adds. callback(step, x) after each token, x [B, L] with BOS where nothing is drawn yet.
    stats: filled with network_evals."""
    B, L = shape
    bos = model.bos
    positions, tokens = prompt_tensors(prompt, bos, L, device)
    if sorted(positions.tolist()) != list(range(len(positions))):
        raise ValueError("the autoregressive twin continues a prefix: its prompt must hold positions "
                         "0, 1, ..., k-1")
    x = torch.full((B, L + 1), bos, dtype=torch.long, device=device)
    x[:, positions + 1] = tokens
    for i in range(len(positions), L):
        probs = torch.softmax(model(x[:, : i + 1])[:, -1, :bos].to(dtype), dim=-1)
        x[:, i + 1] = sample_categorical(nucleus(probs, top_p) if top_p < 1 else probs, dtype)
        if callback is not None:
            callback(i + 1 - len(positions), x[:, 1:])
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


def render(ids, decode, blank=None):
    """Text of a token list with every blank (MASK, or the twin's positions not drawn yet) shown as
    '_': tokenizers know neither."""
    return "".join("_" * len(list(run)) if is_blank else decode(list(run))
                   for is_blank, run in itertools.groupby(ids, key=lambda i: i == blank))


class Watch:
    """A sampler callback that shows the first sample forming. live (on a terminal): redrawn in
    place at every step, MASK as '_' and the tokens this step changed (revealed, for the
    absorbing graph) in bold green; otherwise one line at each of `lines` evenly spaced steps,
    and with no lines a progress line (progress.Progress). frames: a list that collects the
    first sample's tokens at every step, as tensors on the sampler's device (for write_animation).

    It reads the tokens on the host only at the steps it draws: a read waits for the device to
    finish every step queued so far, so reading at every step would keep a GPU idle between steps."""

    def __init__(self, decode, blank, total, lines=8, live=False, stream=None, frames=None):
        self.decode, self.blank, self.total, self.live, self.frames = decode, blank, total, live, frames
        self.stream = stream or sys.stdout
        self.shown = {round(total * k / (lines + 1)) for k in range(1, lines + 1)}
        self.prev, self.height = None, 0  # the last tokens drawn, and the terminal lines they took
        self.progress = Progress(total, "sampling steps", live=not (live or lines))

    def __call__(self, step, x):
        self.progress(step)
        if self.frames is not None:
            self.frames.append(x[0].clone())  # a copy on the device: the sampler may update x in place
        if not (self.live or step in self.shown):
            return
        ids, head = x[0].tolist(), f"step {step:>5}/{self.total}: "
        if not self.live:
            print(head + render(ids, self.decode, self.blank), file=self.stream)
            return
        prev = self.prev or [self.blank] * len(ids)
        changed = lambda i: f"\033[1;32m{self.decode([i])}\033[0m"  # bold green
        text = "".join("_" if i == self.blank else changed(i) if i != p else self.decode([i])
                       for i, p in zip(ids, prev))
        if self.height:  # back to the first line of the last drawing, and clear from there
            self.stream.write(f"\033[{self.height}F\033[J")
        self.stream.write(head + text + "\n")
        self.stream.flush()
        width = len(head) + len(render(ids, self.decode, self.blank))
        self.height, self.prev = -(-width // shutil.get_terminal_size().columns), ids


def svg_animation(frames, decode, blank, columns=64, seconds=8.0, max_frames=64):
    """An animated SVG of a sample forming, frame by frame (any browser plays it; no dependency):
    MASK as a grey '_', `columns` tokens a line, the last frame held."""
    stride = -(-len(frames) // max_frames)
    frames = frames[::stride] + (frames[-1:] if (len(frames) - 1) % stride else [])  # ends on the sample
    rows, dt = -(-len(frames[0]) // columns), seconds / len(frames)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{columns * 10 + 20}" height="{rows * 22 + 20}" '
           'font-family="monospace" font-size="16"><rect width="100%" height="100%" fill="white"/>']
    for k, ids in enumerate(frames):
        last = k == len(frames) - 1
        show = f'begin="{k * dt:.3f}s" fill="freeze"' if last else f'begin="{k * dt:.3f}s" dur="{dt:.3f}s"'
        out.append(f'<g visibility="hidden"><set attributeName="visibility" to="visible" {show}/>')
        for r in range(rows):
            runs = itertools.groupby(ids[r * columns:(r + 1) * columns], key=lambda i: i == blank)
            text = "".join(f'<tspan fill="#bbb">{"_" * len(list(run))}</tspan>' if blanks
                           else html.escape(decode(list(run))) for blanks, run in runs)
            out.append(f'<text x="10" y="{28 + 22 * r}" xml:space="preserve">{text}</text>')
        out.append("</g>")
    return "\n".join(out + ["</svg>"])


# -----------------------------------------------------------------------------
# the command line: main parses the arguments, then loads, prompts, samples and scores

def parse_args(argv):
    """The CLI's arguments, each checked (a wrong one ends in one line)."""
    parser = argparse.ArgumentParser(description="Sample text from an SEDD model (Algorithms 2 and 3) or its "
                                                 "autoregressive twin (left to right).")
    parser.add_argument("--ckpt", required=True,
                        help="a training output directory (config.json, pytorch_model.bin, meta.json, e.g. "
                             "out/text8_tiny) or a hub id such as louaaron/sedd-small")
    parser.add_argument("--steps", type=int, default=128,
                        help="tau-leaping steps (analytic, euler)")
    parser.add_argument("--predictor", choices=["analytic", "euler", "first_hitting"], default="analytic",
                        help="analytic: Tweedie tau-leaping (Eq. 19); euler: Euler tau-leaping (Eq. 17); "
                             "first_hitting: the exact absorbing reverse process, one network call per token "
                             "(--steps does not apply)")
    parser.add_argument("--top_p", type=float, default=1.0,
                        help="autoregressive twin: nucleus sampling, keep the most likely tokens "
                             "holding this much probability (1: temperature 1, the model's own law)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--length", type=int, help="tokens per sample (default: the model's block_size)")
    parser.add_argument("--prefix", default="", help="text the samples start with")
    parser.add_argument("--suffix", default="", help="text the samples end with")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="the network's autocast dtype, as in training: auto is bfloat16 where the "
                             "device has bf16 units, else float32; the probabilities are float32 and the "
                             "draws float64 either way")
    parser.add_argument("--show_steps", type=int, default=0,
                        help="print the first sample at this many intermediate steps")
    parser.add_argument("--animate", metavar="FILE.svg",
                        help="also write an animated SVG of the first sample forming")
    parser.add_argument("--watch", action="store_true",
                        help="watch the first sample form: redrawn in place at every step on a terminal "
                             "(tokens revealed in the step highlighted), else --show_steps lines (default 8)")
    parser.add_argument("--gen_ppl", nargs="?", const="gpt2-large", metavar="JUDGE",
                        help="also print the generative perplexity of the samples under a judge LM and "
                             "their unigram entropy: a trained autoregressive twin's directory (e.g. "
                             "out/text8_tiny_ar), or a Hugging Face id (default gpt2-large; needs "
                             "transformers)")
    parser.add_argument("--real_words", metavar="DATA_DIR",
                        help="also print the fraction of sampled words that occur in the training text of "
                             "DATA_DIR, a character-level dataset such as data/text8")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be at least 1, not {getattr(args, name)}")
    if not 0 < args.top_p <= 1:
        fail(f"--top_p must be in (0, 1], not {args.top_p}")
    return args


def load_checkpoint(args):
    """--ckpt opened (checkpoint.load) for --device: (device, model, graph, noise, encode, decode),
    graph and noise None for the autoregressive twin."""
    try:
        device = pick_device(args.device)
        model, graph, noise, meta = checkpoint.load(args.ckpt)
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        fail(e)
    if model.config.causal and args.suffix:
        fail("the autoregressive twin continues a prefix; filling in before a --suffix needs a "
             "diffusion model")
    try:
        encode, decode = get_tokenizer(meta)
    except RuntimeError as e:
        fail(e)
    return device, model, graph, noise, encode, decode


def prompt_from_args(args, model, encode):
    """The sample length (--length, else the model's block_size) and the prompt that --prefix and
    --suffix make ({position: token})."""
    length = args.length or model.config.block_size
    if not 1 <= length <= model.config.block_size:
        fail(f"--length {length} must be between 1 and the model's block_size {model.config.block_size}")
    try:
        return length, text_prompt(encode, length, args.prefix, args.suffix)
    except ValueError as e:  # also the tokenizer's: a character outside the vocabulary
        fail(e)


def read_vocabulary(data_dir):
    """--real_words: the distinct words of DATA_DIR's training text."""
    try:
        return set(dataset_words(data_dir))
    except (OSError, ValueError) as e:
        fail(e)


def draw_from_twin(args, model, shape, prompt, dtype, device, show):
    """The autoregressive twin's samples, left to right, and a line that says how they were drawn."""
    stats = {}
    x = sample_ar(model, shape, prompt, args.top_p, dtype=dtype, device=device, callback=show, stats=stats)
    how = "left to right" + (f", nucleus top_p={args.top_p}" if args.top_p < 1 else ", temperature 1")
    return x, f"{how}, {stats['network_evals']} network evaluations"


def draw_from_diffusion(args, model, graph, noise, shape, prompt, dtype, device, show):
    """An SEDD model's samples by --predictor, and a line that says how they were drawn."""
    stats = {}
    try:
        x = sample(model, graph, noise, shape, args.steps, args.predictor,
                   prompt=prompt, dtype=dtype, device=device, callback=show, stats=stats)
    except ValueError as e:  # first_hitting on a uniform-graph model
        fail(e)
    how = ("first hitting (exact; --steps does not apply)" if args.predictor == "first_hitting" else
           f"{args.steps} steps ({args.predictor})")
    return x, f"{how}, {stats['network_evals']} network evaluations"


def write_animation(path, frames, last, decode, blank):
    """--animate: the SVG of the first sample forming (Watch's frames, tensors), ending on the
    sample itself."""
    frames = [frame.tolist() for frame in frames]  # read after sampling, not during it
    if frames[-1:] != [last]:  # the final denoising step changes tokens after the last update
        frames.append(last)
    with open(path, "w") as f:
        f.write(svg_animation(frames, decode, blank))


def print_judge_scores(texts, x, judge, device):
    """--gen_ppl: the samples' generative perplexity under `judge` (a trained twin's directory or a
    Hugging Face id) and their unigram entropy."""
    try:
        if os.path.isdir(judge):
            ppl = twin_perplexity(texts, judge, device=device)
            how = "per token of the twin (every token scored, the first from BOS)"
        else:
            ppl = generative_perplexity(texts, judge, device=device)
            how = ("token level: samples decoded, retokenised with GPT-2 BPE, exp of the mean NLL over "
                   "all predicted tokens; each sample's first token is not scored; samples longer than "
                   "the judge's context are scored in separate chunks")
    except (ImportError, OSError, ValueError, RuntimeError) as e:
        fail(e)
    print(f"generative perplexity {ppl:.2f} under {judge} ({how})")
    print(f"unigram entropy {unigram_entropy(x):.3f} nats (the entropy of each sample's token "
          f"distribution in the model's tokens, mean over the {len(texts)} samples)")


def print_real_words(texts, vocabulary, data_dir):
    """--real_words: the share of sampled words found in the training text of data_dir."""
    try:
        rate = real_word_rate(texts, vocabulary)
    except ValueError as e:
        fail(e)
    print(f"real words {rate:.1%} (sampled words, first and last of each sample excluded, that occur "
          f"in the training text of {data_dir})")


def main(argv=None):
    """The CLI; returns the decoded samples."""
    args = parse_args(argv)
    device, model, graph, noise, encode, decode = load_checkpoint(args)
    length, prompt = prompt_from_args(args, model, encode)
    # read before sampling, so that a wrong directory fails at once
    vocabulary = read_vocabulary(args.real_words) if args.real_words else None

    draws, ar = draw_dtype(device), model.config.causal
    network = pick_dtype(args.dtype, device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # float32 matmuls (--dtype float32, the judge) in TF32
    torch.manual_seed(args.seed)
    model.to(device)
    # shown as '_': MASK, or the twin's BOS in the positions not drawn yet
    blank = model.bos if ar else graph.mask if isinstance(graph, Absorbing) else None
    token_by_token = ar or args.predictor == "first_hitting"  # one update per free token
    updates = length - len(prompt) if token_by_token else args.steps
    frames = [] if args.animate else None
    show = Watch(decode, blank, updates, args.show_steps or 8 * args.watch,
                 live=args.watch and sys.stdout.isatty(), frames=frames)
    shape = (args.batch_size, length)
    # the network in autocast as in training; the sampler takes its log-scores in float32
    with torch.autocast(device.type, dtype=network, enabled=network != torch.float32):
        x, how = (draw_from_twin(args, model, shape, prompt, draws, device, show) if ar else
                  draw_from_diffusion(args, model, graph, noise, shape, prompt, draws, device, show))

    texts = [decode(row) for row in x.tolist()]
    if args.animate:
        write_animation(args.animate, frames, x[0].tolist(), decode, blank)
    for i, text in enumerate(texts):
        print(f"---------- sample {i} ----------")
        print(text)
    print(f"---------- {how}, network in {str(network)[6:]}, draws in dtype {str(draws)[6:]}, "
          f"device {device}")
    if args.gen_ppl:
        print_judge_scores(texts, x, args.gen_ppl, device)
    if args.real_words:
        print_real_words(texts, vocabulary, args.real_words)
    return texts


if __name__ == "__main__":
    main()
