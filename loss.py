"""The training loss and the likelihood bound: diffusion weighted denoising score entropy.

Theorem 3.6: for a data sequence x0,
    -log p_theta(x0) <= L_DWDSE(x0) + KL(p_{T|0}(.|x0) || p_base),
    L_DWDSE(x0) = int_0^1 dsigma(t) E_{x_t ~ p_{t|0}(.|x0)} sum_i score_entropy_i dt,
where score_entropy_i = sum_{y != x_t^i} Q[x_t^i, y] (s_y - r_y log s_y + K(r_y)) is the
denoising score entropy of Theorem 3.4 at position i (graph.score_entropy) and
Q_t = dsigma(t) Q is the forward rate. Algorithm 1 trains on a one-sample Monte Carlo estimate
of the integral: draw t, noise x0 to x_t, evaluate the network once, weight by dsigma(t).

All losses are nats per sequence; bits per character and perplexity divide by the length.
ar_nll is the autoregressive twin's exact likelihood in the same units, for comparison.
"""
import math

import torch
import torch.nn.functional as F


def loss_fn(model, graph, noise, x0, t=None, x_t=None, sampling_eps=1e-3):
    """DWDSE per sequence [B] in nats (Algorithm 1): dsigma(t) sum_i score_entropy_i.

    With t ~ U[sampling_eps, 1] (drawn per sequence when not given) its expectation is
    int_{sampling_eps}^1 (...) dt / (1 - sampling_eps): sampling_eps = 0 makes it an unbiased
    estimate of L_DWDSE; the default 1e-3 skips the tiny-noise end, where the estimator's
    variance is largest, and rescales by 1 / (1 - 1e-3).
    """
    if t is None:
        t = sampling_eps + (1 - sampling_eps) * torch.rand(x0.shape[0], device=x0.device)
    sigma, dsigma = noise(t)
    if x_t is None:
        x_t = graph.sample_transition(x0, sigma[:, None])
    log_score = model(x_t, sigma)
    entropy = graph.score_entropy(log_score, sigma[:, None], x_t, x0)
    return (dsigma[:, None] * entropy).sum(-1)


def stratified_t(n, sampling_eps=1e-3, generator=None):
    """n noise times for one batch, t_i ~ U[sampling_eps, 1] each, that cover the range evenly:
    one uniform offset u, t_i = (u + i / n) mod 1 (one time in each of the n strata of width
    1 / n), shuffled so that no position of the batch is tied to a stratum, then mapped into
    [sampling_eps, 1]. Each t_i has the law Algorithm 1 draws, so the batch's loss stays
    unbiased, while the batch never bunches up at a few noise levels: a lower variance. Drawn
    on the CPU from `generator`, so every process of a distributed run draws the same global
    batch of times."""
    u = (torch.rand(1, generator=generator) + torch.arange(n) / n) % 1
    return sampling_eps + (1 - sampling_eps) * u[torch.randperm(n, generator=generator)]


def noised_batch(graph, x0, sigma, seeds):
    """Algorithm 1's noised x_t ~ p_{t|0}(. | x0) for sequences x0 [B, L] at their total noise
    sigma [B], each sequence drawn from a generator started at its own seed (seeds [B]): a
    sequence's x_t is the same whichever batch, micro-batch or process draws it, so each process
    of a distributed run noises only its own rows. On the CPU, where its seeds were drawn."""
    generator = torch.Generator()
    return torch.cat([graph.sample_transition(x0[i:i + 1], sigma[i:i + 1, None], generator.manual_seed(seed))
                      for i, seed in enumerate(seeds.tolist())])


def prior_loss(graph, noise, length):
    """KL(p_{1|0}(.|x0) || p_base) of a whole sequence in nats: length times the per-token KL,
    computed on the CPU in the default dtype."""
    sigma_max, _ = noise(torch.tensor(1.0))
    return length * graph.prior_kl(sigma_max).item()


@torch.no_grad()
def elbo(model, graph, noise, x0, n_t=128):
    """The full bound of Theorem 3.6 per sequence [B] in nats: DWDSE + prior KL.

    The integral over t in (0, 1] is estimated with n_t stratified samples per sequence: one
    uniform t in each interval ((k - 1) / n_t, k / n_t], which removes the variance between
    intervals while staying unbiased (t is never exactly 0, where sigma = 0). The paper uses
    1000 plain uniform samples. For the geometric schedule sigma_bar(0) = sigma_min > 0, so the
    bound is on the model's law at noise sigma_min, a negligible perturbation of the data.

    The n_t estimates are averaged in the dtype of the network's output by one mean over a
    stacked [n_t, B] tensor, whose pairwise summation keeps float32 accurate to ~1e-7 relative
    (a running float32 sum would lose ~n_t times that), so no float64 is needed on the device:
    Apple's MPS has none.
    """
    B = x0.shape[0]
    estimates = [loss_fn(model, graph, noise, x0, t=(k + 1 - torch.rand(B, device=x0.device)) / n_t)
                 for k in range(n_t)]
    return torch.stack(estimates).mean(0) + prior_loss(graph, noise, x0.shape[1])


def ar_nll(model, x0, bos, seen=None):
    """The autoregressive twin's loss: the exact negative log-likelihood of each sequence [B] in
    nats, -sum_i log p(x^i | x^<i), in the same units as the ELBO (so bits per character and
    perplexity compare directly). The network reads [BOS, x^0, ..., x^(L-2)] and its output at
    position i is the law of x^i; BOS is the extra last id (where absorbing keeps MASK) and is
    never a next token. Diffusion instead bounds -log p(x0) by a loss over noise levels.
    seen: what the network reads in place of x0 (e.g. x0 with tokens masked, as SEDD's inputs
    are, in training only); the targets stay x0."""
    seen = x0 if seen is None else seen
    inputs = torch.cat([torch.full_like(seen[:, :1], bos), seen[:, :-1]], dim=1)
    logits = model(inputs)[..., :bos]
    return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none").sum(-1)


def bits_per_token(nats, length):
    """Nats per sequence -> bits per token (bits per character for text8)."""
    return nats / (length * math.log(2))


def perplexity(nats, length):
    """Nats per sequence -> perplexity exp(nats per token)."""
    return math.exp(nats / length)
