"""The proofs: exact checks of every formula on tiny vocabularies, then end-to-end smoke runs.

Exact checks run in float64 against torch.linalg.matrix_exp and brute-force enumeration of
all sequences (length <= 3, <= 6 tokens). Statistical checks compare Monte Carlo averages
with their exact values at a few standard errors, with fixed seeds. Models are float32: tests
that build one take the float32 fixture. CPU only, no network; every corpus is test-written.
"""
import contextlib
import csv
import importlib.util
import inspect
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

import model as M
import bench
import compare
import prepare
import sampling
import train
from graph import Absorbing, Uniform, get_graph
from loss import ar_nll, elbo, loss_fn, prior_loss
from model import SEDD, SEDDConfig
from noise import GeometricNoise, LogLinearNoise, get_noise, noise_config, noise_from_config
from prepare import char_splits, proportional
from sampling import sample, sample_ar, sample_categorical, text_prompt

torch.set_default_dtype(torch.float64)
GRAPHS = [Absorbing, Uniform]
NOISES = [LogLinearNoise(), GeometricNoise()]
HERE = Path(__file__).resolve().parent


@pytest.fixture
def float32():
    """The default dtype of models and training (this file's is float64), restored after the test."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def expm(graph, sigma):
    return torch.linalg.matrix_exp(sigma * graph.rate_matrix())


def correlated_data(n_tokens, length, seed=0):
    """A full-support but strongly correlated law on sequences: mostly runs of one token."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand((n_tokens,) * length, generator=g) * 0.05
    for a in range(n_tokens):
        p[(a,) * length] += 1.0 + a
    return p / p.sum()


class ExactScore:
    """The true concrete score of p_sigma = (exp(sigma Q) per token) p_data, by enumeration.

    Called like the network: (x_t [B, L], sigma [B] or [B, 1]) -> log_score [B, L, dim], where
    log_score[b, i, y] = log p_sigma(x_t with position i set to y) - log p_sigma(x_t)."""

    def __init__(self, graph, p_data):
        self.graph, self.L = graph, p_data.dim()
        self.p_data = torch.zeros((graph.dim,) * self.L)
        self.p_data[(slice(0, p_data.shape[0]),) * self.L] = p_data  # MASK has no data mass
        self.calls = 0

    def marginals(self, sigmas):
        """p_sigma for each sigma of a 1-d tensor: [S, dim, ..., dim]."""
        K = torch.linalg.matrix_exp(sigmas.reshape(-1, 1, 1) * self.graph.rate_matrix())
        p = self.p_data.expand(len(K), *self.p_data.shape)
        for axis in range(1, self.L + 1):  # K applied to each token independently
            p = torch.einsum("sij,s...j->s...i", K, p.movedim(axis, -1)).movedim(-1, axis)
        return p

    def marginal(self, sigma):
        return self.marginals(sigma.reshape(1))[0]

    def __call__(self, x_t, sigma):
        self.calls += 1
        sigma = sigma.reshape(-1).expand(len(x_t))
        dim, L = self.graph.dim, self.L
        place = dim ** torch.arange(L - 1, -1, -1)
        flat = (x_t * place).sum(-1)
        y = torch.arange(dim)
        neighbours = flat[:, None, None] + (y[None, None, :] - x_t[:, :, None]) * place[None, :, None]
        levels, row_level = sigma.unique(return_inverse=True)  # one marginal per distinct sigma
        log_p = self.marginals(levels).reshape(len(levels), -1).log()[row_level]  # [B, dim^L]
        out = log_p.gather(1, neighbours.reshape(len(x_t), -1)).reshape(*x_t.shape, dim)
        return out - log_p.gather(1, flat[:, None])[..., None]


def all_sequences(dim, length):
    return torch.tensor(list(itertools.product(range(dim), repeat=length)))


def kl(p, q):
    p, q = p.reshape(-1), q.reshape(-1)
    keep = p > 0
    return (p[keep] * (p[keep] / q[keep]).log()).sum().item()


# ---------------------------------------------------------------- noise.py

@pytest.mark.parametrize("noise", NOISES)
def test_noise_rate_is_derivative_of_total_noise(noise):
    t = torch.linspace(0.01, 0.99, 50, requires_grad=True)
    sigma, dsigma = noise(t)
    (grad,) = torch.autograd.grad(sigma.sum(), t)
    assert torch.allclose(grad, dsigma, rtol=1e-10)
    assert sigma.shape == dsigma.shape == t.shape and (dsigma > 0).all()


def test_noise_schedules_endpoints():
    loglinear, geometric = get_noise("loglinear", eps=1e-3), get_noise("geometric")
    assert loglinear(torch.tensor(0.0))[0] == 0.0
    assert torch.isclose(loglinear(torch.tensor(1.0))[0], torch.tensor(-math.log(1e-3)))
    assert torch.isclose(geometric(torch.tensor(0.0))[0], torch.tensor(1e-4))
    assert torch.isclose(geometric(torch.tensor(1.0))[0], torch.tensor(20.0))
    with pytest.raises(ValueError, match="unknown noise"):
        get_noise("cosine")


# ---------------------------------------------------------------- graph.py: closed forms

@pytest.mark.parametrize("graph_cls", GRAPHS)
@pytest.mark.parametrize("n", [3, 5])
def test_rate_matrix_is_a_generator(graph_cls, n):
    Q = graph_cls(n).rate_matrix()
    off = Q - torch.diag(torch.diag(Q))
    assert (off >= 0).all() and torch.allclose(Q.sum(0), torch.zeros(Q.shape[0]))
    assert get_graph({"Absorbing": "absorb", "Uniform": "uniform"}[graph_cls.__name__], n).dim == Q.shape[0]


@pytest.mark.parametrize("graph_cls", GRAPHS)
@pytest.mark.parametrize("sigma", [1e-4, 0.3, 2.0, 9.0])
def test_closed_forms_match_matrix_exponential(graph_cls, sigma):
    graph = graph_cls(5)
    dim = graph.dim
    x = torch.arange(dim).reshape(1, dim)  # every token, including MASK, as a sequence
    s = torch.full((1, 1), sigma)
    E, E_inv = expm(graph, sigma), expm(graph, -sigma)
    assert torch.allclose(graph.transition(x, s)[0], E.T, atol=1e-14)  # row k = column k of E
    assert torch.allclose(graph.transp_transition(x, s)[0], E, atol=1e-14)  # row k = row k of E
    score = torch.rand(1, dim, dim) + 0.1
    assert torch.allclose(graph.staggered_score(score, s)[0], score[0] @ E_inv.T, atol=1e-12)
    Q = graph.rate_matrix()
    rates = graph.reverse_rate(x, score)[0]
    for k in range(dim):
        expected = score[0, k] * Q[k]
        expected[k] = 0.0
        expected[k] = -expected.sum()
        assert torch.allclose(rates[k], expected, atol=1e-14)


@pytest.mark.parametrize("graph_cls", GRAPHS)
def test_sampling_frequencies_match_transition(graph_cls):
    torch.manual_seed(0)
    graph, n = graph_cls(4), 200_000
    x0 = torch.full((n, 1), 2)
    sigma = torch.full((n, 1), 0.7)
    freq = torch.bincount(graph.sample_transition(x0, sigma).reshape(-1), minlength=graph.dim) / n
    p = graph.transition(x0[:1], sigma[:1])[0, 0]
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / n)
    limit = graph.sample_limit(n, 1).reshape(-1)
    freq = torch.bincount(limit, minlength=graph.dim) / n
    base = torch.zeros(graph.dim)
    if graph_cls is Absorbing:
        base[graph.mask] = 1.0
    else:
        base[:] = 1.0 / graph.dim
    assert (freq - base).abs().max() < 4 * math.sqrt(0.25 / n)


# ---------------------------------------------------------------- graph.py: score entropy

def brute_score_entropy(graph, log_score, sigma, x_t, x0):
    Q, p = graph.rate_matrix(), graph.transition(torch.tensor([x0]), torch.tensor([sigma]))[0]
    total = 0.0
    for y in range(graph.dim):
        if y == x_t:
            continue
        r, s = p[y] / p[x_t], log_score[y].exp()
        K = 0.0 if r == 0 else r * (r.log() - 1)
        total += Q[x_t, y] * (s - r * log_score[y] + K)
    return total


@pytest.mark.parametrize("graph_cls", GRAPHS)
@pytest.mark.parametrize("sigma", [1e-3, 0.5, 4.0])
def test_score_entropy_definition_and_consistency(graph_cls, sigma):
    """Equals its definition (Def. 3.1 with Q weights), is >= 0, and is 0 at the true ratios
    (Prop. 3.2)."""
    torch.manual_seed(1)
    graph = graph_cls(4)
    pairs = [(x_t, x0) for x_t in range(graph.dim) for x0 in range(4)]
    x_t = torch.tensor([[a for a, _ in pairs]])
    x0 = torch.tensor([[b for _, b in pairs]])
    s = torch.full((1, 1), sigma)
    log_score = torch.randn(1, len(pairs), graph.dim)
    got = graph.score_entropy(log_score, s, x_t, x0)[0]
    p = graph.transition(x0, s)  # true ratios r_y = p(y|x0) / p(x_t|x0) where p(x_t|x0) > 0
    possible = p.gather(-1, x_t[..., None])[..., 0] > 0
    for k, (a, b) in enumerate(pairs):
        if possible[0, k]:
            assert torch.isclose(got[k], brute_score_entropy(graph, log_score[0, k], sigma, a, b), rtol=1e-10)
    assert (got >= 0).all() and got.max() > 0
    true_log = p.log() - p.gather(-1, x_t[..., None]).log()
    at_optimum = graph.score_entropy(true_log.clamp(min=-200), s, x_t, x0)[0]
    assert at_optimum[possible[0]].abs().max() < 1e-12


@pytest.mark.parametrize("graph_cls", GRAPHS)
def test_score_entropy_float32_accuracy(graph_cls):
    torch.manual_seed(2)
    graph = graph_cls(27)
    B, L = 4, 64
    x0 = torch.randint(27, (B, L))
    for sigma in [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0]:
        s = torch.full((B, 1), sigma)
        x_t = graph.sample_transition(x0, s.expand(B, L).clone().fill_(max(sigma, 0.5)))
        # inputs rounded to float32 first, so only the arithmetic differs between the two runs
        away = torch.randn(B, L, graph.dim).float().double()  # random scores: far from the optimum
        exact = graph.score_entropy(away, s, x_t, x0)
        single = graph.score_entropy(away.float(), s.float(), x_t, x0).double()
        assert ((single - exact).abs() / exact.abs().clamp(min=1e-30)).max() < 1e-4, sigma
        # Near the optimum the loss is ~0 and float32 rounding of log r alone moves it by
        # ~r |z| 1e-6 (z = log s - log r): an absolute tolerance in nats per token.
        p = graph.transition(x0, s)
        near = (p.log() - p.gather(-1, x_t[..., None]).log()).clamp(min=-80) + 1e-3 * torch.randn(B, L, graph.dim)
        near = near.float().double()
        exact = graph.score_entropy(near, s, x_t, x0)
        single = graph.score_entropy(near.float(), s.float(), x_t, x0).double()
        assert (single - exact).abs().max() < 1e-4, sigma


# ---------------------------------------------------------------- Tweedie (Theorem 4.1)

@pytest.mark.parametrize("graph_cls", GRAPHS)
@pytest.mark.parametrize("sigma_t,sigma_s", [(2.0, 1.5), (0.3, 0.01), (5.0, 0.0)])
def test_tweedie_is_exact_reverse_conditional(graph_cls, sigma_t, sigma_s):
    graph = graph_cls(4)
    p0 = torch.zeros(graph.dim)
    p0[:4] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    p_t, p_s = expm(graph, sigma_t) @ p0, expm(graph, sigma_s) @ p0
    delta = torch.tensor([sigma_t - sigma_s])
    for x_t in range(graph.dim):
        score = (p_t / p_t[x_t])[None]
        tweedie = graph.staggered_score(score, delta) * graph.transp_transition(torch.tensor([x_t]), delta)
        exact = expm(graph, sigma_t - sigma_s)[x_t] * p_s / p_t[x_t]  # p_{t|s}(x_t|y) p_s(y) / p_t(x_t)
        assert torch.allclose(tweedie[0], exact, atol=1e-12)


# ---------------------------------------------------------------- the loss is the paper's loss

def exact_dwdse(graph, noise, exact, x0, n_quad=256, t_max=1.0):
    """int_0^t_max dsigma E_{x_t ~ p_{t|0}} sum_i score_entropy dt, by enumeration of every x_t
    and Gauss-Legendre in u with t = t_max u^4: the uniform graph's integrand has a log(1/t)
    singularity at t = 0 for sigma_bar(0) = 0, which the substitution smooths out."""
    states = all_sequences(graph.dim, x0.shape[0])
    nodes, weights = np.polynomial.legendre.leggauss(n_quad)
    total = 0.0
    for u, w in zip(nodes, weights):
        u = (u + 1) / 2
        t = torch.tensor([t_max * u**4])
        sigma, dsigma = noise(t)
        p_states = graph.transition(x0[None].expand_as(states), sigma.expand(len(states), 1)).gather(-1, states[..., None]).prod(1)[:, 0]
        se = graph.score_entropy(exact(states, sigma.expand(len(states))), sigma, states, x0[None].expand_as(states)).sum(-1)
        total += w / 2 * 4 * t_max * u**3 * dsigma.item() * (p_states * se).sum().item()
    return total


def seq_transition(graph, x0, sigma):
    p = graph.transition(x0[None], torch.tensor([[sigma]]))[0]
    out = p[0]
    for i in range(1, len(x0)):
        out = torch.outer(out.reshape(-1), p[i]).reshape(*out.shape, -1)
    return out


@pytest.mark.parametrize("graph_cls", GRAPHS)
@pytest.mark.parametrize("noise", NOISES)
def test_elbo_identity_with_exact_score(graph_cls, noise):
    """DWDSE over [sigma_min, sigma_max] + KL(p_{max|0} || p_max) = KL(p_{min|0} || p_min),
    with p_sigma the true marginal: the loss is exactly the paper's (Thm 3.6 is tight here)."""
    graph = graph_cls(3)
    p_data = correlated_data(3, 2)
    exact = ExactScore(graph, p_data)
    sigma_min, sigma_max = (noise(torch.tensor(v))[0].item() for v in (0.0, 1.0))
    for x0 in [torch.tensor([0, 0]), torch.tensor([1, 2])]:
        lhs = exact_dwdse(graph, noise, exact, x0)
        lhs += kl(seq_transition(graph, x0, sigma_max), exact.marginal(torch.tensor(sigma_max)))
        rhs = kl(seq_transition(graph, x0, sigma_min), exact.marginal(torch.tensor(sigma_min)))
        if sigma_min == 0:
            assert rhs == pytest.approx(-p_data[tuple(x0)].log().item(), rel=1e-12)
        assert lhs == pytest.approx(rhs, rel=1e-6)


@pytest.mark.parametrize("graph_cls", GRAPHS)
def test_loss_fn_and_elbo_are_unbiased(graph_cls):
    torch.manual_seed(3)
    graph, noise = graph_cls(3), LogLinearNoise()
    p_data = correlated_data(3, 2)
    exact = ExactScore(graph, p_data)
    x0 = torch.tensor([1, 2])
    dwdse = exact_dwdse(graph, noise, exact, x0)
    batch = x0[None].repeat(20_000, 1)
    losses = loss_fn(exact, graph, noise, batch, sampling_eps=0.0)
    assert abs(losses.mean().item() - dwdse) < 4 * losses.std().item() / math.sqrt(len(losses))
    # the default sampling_eps estimates the integral over [1e-3, 1] / (1 - 1e-3)
    truncated = dwdse - exact_dwdse(graph, noise, exact, x0, t_max=1e-3)
    losses = loss_fn(exact, graph, noise, batch)
    assert abs(losses.mean().item() - truncated / (1 - 1e-3)) < 4 * losses.std().item() / math.sqrt(len(losses))
    bounds = elbo(exact, graph, noise, batch[:2000], n_t=8)
    bound = dwdse + prior_loss(graph, noise, 2)
    assert bound >= -p_data[tuple(x0)].log().item()
    assert abs(bounds.mean().item() - bound) < 4 * bounds.std().item() / math.sqrt(len(bounds))


def test_prior_kl_matches_enumeration():
    sigma = torch.tensor(3.0)
    uniform = Uniform(5)
    p = uniform.transition(torch.tensor([0]), sigma[None])[0]
    assert uniform.prior_kl(sigma).item() == pytest.approx(kl(p, torch.full((5,), 0.2)), rel=1e-12)
    absorbing = Absorbing(5)
    p = absorbing.transition(torch.tensor([0]), sigma[None])[0]
    delta = math.exp(-3.0)
    base = torch.cat([torch.full((5,), delta / 5), torch.tensor([1 - delta])])  # leaky all-MASK
    assert absorbing.prior_kl(sigma).item() == pytest.approx(kl(p, base), rel=1e-12)


# ---------------------------------------------------------------- model.py

def tiny(**kw):
    return SEDDConfig(**{**dict(vocab_size=11, n_embd=32, cond_dim=16, n_layer=2, n_head=4, block_size=8,
                                dropout=0.0), **kw})


def randomized(config, seed=0, std=0.2):
    """A model with every parameter random, so that the zero-initialised paths matter too."""
    torch.manual_seed(seed)
    m = SEDD(config)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, std)
    return m.eval()


def batch(config):
    x = torch.randint(0, config.vocab_size, (3, config.block_size), generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([1e-4, 0.5, 7.0])


def not_input(x, vocab_size):
    return ~F.one_hot(x, vocab_size).bool()


@pytest.mark.parametrize("preset, expected", [("small", 169_627_218), ("medium", 424_477_010)])
def test_official_parameter_counts(preset, expected, float32):
    with torch.device("meta"):  # shapes only, no memory
        m = SEDD(getattr(SEDDConfig, preset)())
    c, H, V = m.config, m.config.n_embd, m.config.vocab_size
    assert m.num_params() == expected and m.num_params(non_embedding=True) == expected - V * H
    N = c.n_layer * (12 * H * H + 4 * H + H + 2 * H) + H + H * V + V
    assert m.estimate_flops_per_token() == 6 * N + 12 * c.n_layer * H * c.block_size


@pytest.mark.parametrize("sigma_2d", [False, True])
def test_output_contract(sigma_2d, float32):
    """Shape, dtype, 0 at the input token; exactly the scale_by_sigma prior at init; dropout in training only."""
    c = tiny()
    x, sigma = batch(c)
    s = sigma[:, None] if sigma_2d else sigma
    out = SEDD(c).eval()(x, s)
    assert out.shape == (3, c.block_size, c.vocab_size) and out.dtype == torch.float32
    off = not_input(x, c.vocab_size)
    assert torch.equal(out[~off], torch.zeros(x.numel()))
    prior = (-torch.expm1(sigma).log() - math.log(c.vocab_size - 1))[:, None, None].expand_as(out)
    assert torch.equal(out[off], prior[off])  # zero init: -log(expm1(sigma)) - log(dim - 1)
    assert torch.equal(SEDD(tiny(scale_by_sigma=False)).eval()(x, s), torch.zeros_like(out))
    assert SEDD(c).vocab_embed.embedding.abs().max() <= c.n_embd ** -0.5  # the official uniform init
    m = randomized(tiny(dropout=0.3))
    out = m(x, s)
    assert torch.isfinite(out).all() and out.abs().max() > 1.0 and torch.equal(out[~off], torch.zeros(x.numel()))
    assert torch.equal(out, m(x, s))  # eval mode: deterministic
    m.train()
    assert not torch.allclose(m(x, s), m(x, s))


def reference_forward(model, x, sigma):
    """The official network (the release's DDiT, as model.py's docstring describes it) written out
    from its state dict in float64. W pops each tensor by its official name: the state dict may
    hold no other."""
    c, state = model.config, {k: v.double() for k, v in model.state_dict().items()}
    W = state.pop
    (B, L), H = x.shape, c.n_embd
    hd = H // c.n_head
    ln = lambda h, name: F.layer_norm(h, (H,)) * W(name)
    lin = lambda h, name, bias=True: h @ W(name + ".weight").T + (W(name + ".bias") if bias else 0)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float64) / 128)
    args = sigma.double()[:, None] * freqs
    cond = F.silu(lin(F.silu(lin(torch.cat([args.cos(), args.sin()], -1), "sigma_map.mlp.0")), "sigma_map.mlp.2"))
    angle = torch.arange(L, dtype=torch.float64)[:, None, None] * W("rotary_emb.inv_freq")  # [L, 1, hd/2]

    def rot(t):  # rotate the pair (d, d + hd/2) by angle[d] (GPT-NeoX half-split layout)
        t1, t2 = t.chunk(2, -1)
        return torch.cat([t1 * angle.cos() - t2 * angle.sin(), t1 * angle.sin() + t2 * angle.cos()], -1)
    h = W("vocab_embed.embedding")[x]
    for i in range(c.n_layer):
        p = f"blocks.{i}."
        shift1, scale1, gate1, shift2, scale2, gate2 = lin(cond, p + "adaLN_modulation")[:, None].split(H, -1)
        a = ln(h, p + "norm1.weight") * (1 + scale1) + shift1
        q, k, v = lin(a, p + "attn_qkv", False).view(B, L, 3, c.n_head, hd).unbind(2)
        att = torch.einsum("bihd,bjhd->bhij", rot(q), rot(k)).div(math.sqrt(hd)).softmax(-1)
        h = h + gate1 * lin(torch.einsum("bhij,bjhd->bihd", att, v).reshape(B, L, H), p + "attn_out", False)
        m = ln(h, p + "norm2.weight") * (1 + scale2) + shift2
        h = h + gate2 * lin(F.gelu(lin(m, p + "mlp.0"), approximate="tanh"), p + "mlp.2")
    shift, scale = lin(cond, "output_layer.adaLN_modulation")[:, None].split(H, -1)
    out = lin(ln(h, "output_layer.norm_final.weight") * (1 + scale) + shift, "output_layer.linear")
    if c.scale_by_sigma:
        out = out - torch.expm1(sigma.double()).log()[:, None, None] - math.log(c.vocab_size - 1)
    assert not state, f"not in the official network: {sorted(state)}"
    return out.scatter(-1, x[..., None], 0.0)


@pytest.mark.parametrize("scale_by_sigma, embed_scale", [(True, 1.0), (False, 1.0), (True, 1e-3)])
def test_matches_written_out_official_forward(scale_by_sigma, embed_scale, float32):
    """The whole network, SDPA attention included, against reference_forward's plain softmax."""
    c = tiny(scale_by_sigma=scale_by_sigma)
    m = randomized(c)
    with torch.no_grad():  # a tiny embedding makes the LayerNorm eps (1e-5) matter
        m.vocab_embed.embedding *= embed_scale
    x, sigma = batch(c)
    ref = reference_forward(m, x, sigma)
    assert (m(x, sigma).double() - ref).abs().max() < 1e-5 * max(1.0, ref.abs().max().item())


def test_sdpa_matches_plain_softmax_attention(float32):
    qkv = torch.randn(2, 7, 3, 4, 8, generator=torch.Generator().manual_seed(0))
    q, k, v = qkv.unbind(2)  # [B, L, n_head, head_dim]
    att = (torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(8)).softmax(-1)
    ref = torch.einsum("bhij,bjhd->bihd", att, v).reshape(2, 7, 32)
    assert (M.attention(qkv) - ref).abs().max() < 1e-5
    assert (M.attention(qkv.bfloat16()).float() - ref).abs().max() < 3e-2  # the CPU bf16 path


def test_rotary_logits_depend_only_on_relative_position(float32):
    cos, sin = M.Rotary(16)(64)
    q, k = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    rotated = lambda t, i: M.apply_rotary(t, cos[i, 0, 0], sin[i, 0, 0])
    logit = lambda i, j: rotated(q, i) @ rotated(k, j)
    for i, j, s in [(3, 10, 5), (20, 2, 40), (0, 0, 63), (9, 1, 17)]:
        assert abs(logit(i, j) - logit(i + s, j + s)) < 1e-4
    assert abs(logit(0, 5) - logit(5, 0)) > 1e-2  # but it does depend on the offset
    assert torch.equal(M.Rotary(16).inv_freq, 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16))


def official_config(c):
    """config.json as the official release writes it (its whole hydra config)."""
    return {"ngpus": 8, "tokens": c.vocab_size - 1, "graph": {"type": "absorb", "file": "data", "report_all": False},
            "training": {"batch_size": 512, "accum": 1, "n_iters": 1300001, "ema": 0.9999},
            "data": {"train": "openwebtext", "valid": "wikitext103", "cache_dir": "data"},
            "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20}, "optim": {"lr": 3e-4, "warmup": 2500},
            "model": {"name": "small", "type": "ddit", "hidden_size": c.n_embd, "cond_dim": c.cond_dim,
                      "length": c.block_size, "n_blocks": c.n_layer, "n_heads": c.n_head,
                      "scale_by_sigma": c.scale_by_sigma, "dropout": c.dropout}}


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "save_pretrained"])
def test_checkpoint_round_trip(tmp_path, fmt, float32):
    """The official layout (written here) and save_pretrained load back bit-for-bit, with the
    checkpoint's noise schedule (a geometric one's sigma_min and sigma_max too)."""
    path = tmp_path / "ckpt"
    if fmt == "save_pretrained":  # a uniform model
        c, noise = tiny(scale_by_sigma=False), GeometricNoise(sigma_min=1e-3, sigma_max=5.0)
        m = randomized(c, seed=3)
        m.save_pretrained(path, "uniform", noise_config(noise))
        assert json.loads((path / "config.json").read_text())["tokens"] == c.vocab_size
        kinds = ("uniform", {"type": "geometric", "sigma_min": 1e-3, "sigma_max": 5.0})
    else:  # official log-linear configs carry sigma_min and sigma_max, which that schedule ignores
        c, kinds = tiny(dropout=0.1), ("absorb", {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20})
        m = randomized(c)
        path.mkdir()
        (path / "config.json").write_text(json.dumps(official_config(c)))
        if fmt == "bin":
            torch.save(m.state_dict(), path / "pytorch_model.bin")
        else:
            pytest.importorskip("safetensors.torch").save_file(m.state_dict(), str(path / "model.safetensors"))
    m2 = SEDD.from_pretrained(str(path))
    assert (m2.graph_name, m2.noise_config) == kinds and m2.config == c and not m2.training
    noise = noise_from_config(m2.noise_config)
    assert vars(noise) == ({"eps": 1e-3} if fmt != "save_pretrained" else {"sigma_min": 1e-3, "sigma_max": 5.0})
    sa, sb = m.state_dict(), m2.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(m(*batch(c)), m2(*batch(c)))


def test_from_pretrained_clear_errors(tmp_path, monkeypatch, float32):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed; never online
    with pytest.raises(ImportError, match="pip install huggingface_hub safetensors"):
        SEDD.from_pretrained("louaaron/sedd-small")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a hub id"):
        SEDD.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SEDD.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="not an SEDD config"):
        SEDD.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(official_config(tiny())))
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        SEDD.from_pretrained(str(tmp_path))
    sd = SEDD(tiny()).state_dict()
    del sd["blocks.1.attn_out.weight"]
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(RuntimeError, match="do not match"):
        SEDD.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("scale_by_sigma", [True, False])
def test_bf16_autocast_on_cpu(scale_by_sigma, float32):
    c = tiny(scale_by_sigma=scale_by_sigma)
    m = randomized(c, std=0.1)
    x, sigma = batch(c)
    ref = m(x, sigma)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, sigma)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.equal(out, ref)  # bf16 matmuls did run
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


# ---------------------------------------------------------------- sampling.py
# Monte Carlo checks bound the total variation between n samples and an exact law on K outcomes
# by sqrt(K / n): E[TV] <= sqrt(K / n) / 2 and, by McDiarmid (TV has (1/n)-bounded differences),
# P(TV > E[TV] + e) <= exp(-2 n e^2), so the bound fails with probability < exp(-K / 2) = 0.011
# for K = 9 (far less: E[TV] is ~half its bound).

CASES = [(Absorbing, LogLinearNoise()), (Uniform, GeometricNoise())]


def exact_law(graph, noise, p_data, steps, predictor="analytic", prompt={}, eps=1e-5):
    """The law of sample(...) on clean sequences, by enumeration of all dim^L states: per-step
    transition matrices (products over positions of the clamped, renormalised token
    probabilities), written with dense matrix exponentials, independently of graph.py."""
    L, dim, Q = p_data.dim(), graph.dim, graph.rate_matrix()
    exact, states = ExactScore(graph, p_data), all_sequences(graph.dim, p_data.dim())
    one_hot = F.one_hot(states, dim).double()

    def transition(P):  # [S, L, dim] token probabilities -> [S, S] sequence transition matrix
        P = P.clamp(min=0)
        P = P / P.sum(-1, keepdim=True)
        for pos, tok in prompt.items():
            P[:, pos] = F.one_hot(torch.tensor(tok), dim)
        return P[:, torch.arange(L), states].prod(-1)

    def tweedie(sigma, delta):  # Eq. 19
        s = exact(states, sigma.expand(len(states))).exp()
        return (s @ expm(graph, -delta).T) * expm(graph, delta)[states]

    absorb = isinstance(graph, Absorbing)
    base = one_hot[-1:] if absorb else torch.full((1, L, dim), 1.0 / dim)  # all MASK / uniform
    law = transition(base)[0]
    t = torch.linspace(1, eps, steps + 1)
    for k in range(steps):
        sigma, dsigma = noise(t[k])
        if predictor == "euler":  # Eq. 17
            rate = exact(states, sigma.expand(len(states))).exp() * Q[states] * (1 - one_hot)
            P = one_hot + dsigma * (t[k] - t[k + 1]) * (rate - one_hot * rate.sum(-1, keepdim=True))
        else:
            P = tweedie(sigma, sigma - noise(t[k + 1])[0])
        law = law @ transition(P)
    P = tweedie(noise(t[-1])[0], noise(t[-1])[0])  # the denoiser, to noise 0, never to MASK
    if absorb:
        P[..., -1] = 0
    law = (law @ transition(P)).reshape((dim,) * L)[(slice(0, graph.n_tokens),) * L]
    assert abs(law.sum().item() - 1) < 1e-12  # no mass on sequences with MASK
    return law


def tv(p, q):
    return 0.5 * (p - q).abs().sum().item()


def empirical(x, dim):
    place = dim ** torch.arange(x.shape[1] - 1, -1, -1)
    counts = torch.bincount((x * place).sum(-1), minlength=dim ** x.shape[1]).double()
    return counts.reshape((dim,) * x.shape[1]) / len(x)


@pytest.mark.parametrize("graph_cls,noise", CASES)
@pytest.mark.parametrize("predictor", ["euler", "analytic"])
def test_samples_follow_the_exact_law(graph_cls, noise, predictor):
    torch.manual_seed(0)
    graph, p_data, n = graph_cls(3), correlated_data(3, 2), 20_000
    score = ExactScore(graph, p_data)
    eps = 0.4 if graph_cls is Absorbing else 0.7  # sigma_bar(eps) ~ 0.5: the denoiser has work to do
    stats = {}
    x = sample(score, graph, noise, (n, 2), 4, predictor, eps=eps, stats=stats)
    law = exact_law(graph, noise, p_data, 4, predictor, eps=eps)
    assert (x < 3).all()  # no MASK
    assert tv(empirical(x, 3), law) < math.sqrt(9 / n)  # 0.021 (observed 0.004 to 0.008)
    assert tv(law, p_data) > 0.1  # 0.15 to 0.37: 4 steps are measurably wrong, the test has teeth
    assert stats == dict(steps=4, network_evals=5) and score.calls == 5


@pytest.mark.parametrize("graph_cls,noise", CASES)
def test_exact_law_converges_to_the_data(graph_cls, noise):
    graph, p_data = graph_cls(3), correlated_data(3, 2)
    error = {(s, pred): tv(exact_law(graph, noise, p_data, s, pred), p_data)
             for s in [1, 2, 4, 8, 32, 128] for pred in ["euler", "analytic"]}
    for pred in ["euler", "analytic"]:
        errors = [error[s, pred] for s in [2, 8, 32, 128]]
        assert all(a > b for a, b in zip(errors, errors[1:])) and errors[0] > 0.25 and errors[-1] < 0.01
    if graph_cls is Uniform:  # Tweedie (optimal by Thm 4.2) beats Euler at few steps
        assert all(error[s, "analytic"] <= error[s, "euler"] for s in [1, 2, 4, 8])
        assert error[2, "analytic"] < error[2, "euler"] - 0.2
    else:  # absorbing + log-linear: dsigma dt = e^{delta_sigma} - 1, the two updates coincide
        for s in [1, 3, 8]:
            euler, tweedie = (exact_law(graph, noise, p_data, s, pred) for pred in ["euler", "analytic"])
            assert (euler - tweedie).abs().max() < 1e-10
        runs = []
        for predictor in ["euler", "analytic"]:  # same noise, same probabilities: same samples
            torch.manual_seed(1)
            runs.append(sample(ExactScore(graph, p_data), graph, noise, (500, 2), 3, predictor))
        assert torch.equal(*runs)


@pytest.mark.parametrize("graph_cls,noise", CASES)
@pytest.mark.parametrize("prompt", [{0: 1}, {2: 2}, {1: 0}], ids=["prefix", "suffix", "middle"])
def test_infilling(graph_cls, noise, prompt):
    torch.manual_seed(2)
    graph, p_data, n, steps = graph_cls(3), correlated_data(3, 3), 20_000, 64
    x = sample(ExactScore(graph, p_data), graph, noise, (n, 3), steps, prompt=prompt)
    ((pos, tok),) = prompt.items()
    assert (x[:, pos] == tok).all() and (x < 3).all()
    law = exact_law(graph, noise, p_data, steps, prompt=prompt)
    assert tv(empirical(x, 3), law) < math.sqrt(9 / n)  # 9 outcomes of the 2 free tokens
    true = torch.zeros_like(p_data)  # the true conditional p_data(free | prompt), by Bayes
    true.select(pos, tok).copy_(p_data.select(pos, tok) / p_data.select(pos, tok).sum())
    if graph_cls is Absorbing:
        # Clamping clean tokens is exact for absorbing: a noised prompt token is either itself or
        # MASK, so scores at clean prompts are those of the conditional (Section 4.2). Only the
        # discretisation is left (TV ~ 1e-3 at 64 steps).
        assert tv(law, true) < 5e-3
    else:
        # Uniform: Algorithm 3 clamps clean tokens where the true noised prompt would have moved,
        # so the score sees a prompt token that looks noised and barely conditions on it. It is an
        # approximation, not the conditional: hence the test against its exact law above.
        assert tv(law, true) > 0.1


def test_denoiser_never_outputs_mask():
    # A score that underrates every token (s = e^-10) leaves about half the positions masked after
    # one step and puts ~all the denoiser's mass on MASK: dropping that column must unmask them.
    underrated = lambda x, sigma: torch.full((*x.shape, 11), -10.0).scatter(-1, x[..., None], 0.0)
    assert (sample(underrated, Absorbing(10), LogLinearNoise(), (64, 8), 1) < 10).all()


@pytest.mark.parametrize("noise", NOISES)
def test_first_hitting_samples_the_data_law_exactly(noise):
    """With the true score, first hitting draws p_data exactly, whatever the schedule (no
    discretisation, no leak: whether a token is masked does not depend on its value), with one
    network call per free position; with a prompt, the exact conditional. The uniform graph
    refuses it."""
    torch.manual_seed(5)
    graph, p_data, n = Absorbing(3), correlated_data(3, 3), 20_000
    score, stats = ExactScore(graph, p_data), {}
    x = sample(score, graph, noise, (n, 3), None, "first_hitting", stats=stats)
    assert (x < 3).all() and stats == dict(steps=3, network_evals=3) and score.calls == 3
    assert tv(empirical(x, 3), p_data) < math.sqrt(27 / n)  # 0.037 (observed ~0.01)
    x = sample(ExactScore(graph, p_data), graph, noise, (n, 3), None, "first_hitting", prompt={1: 2}, stats=stats)
    true = torch.zeros_like(p_data)
    true[:, 2] = p_data[:, 2] / p_data[:, 2].sum()
    assert (x[:, 1] == 2).all() and stats["network_evals"] == 2
    assert tv(empirical(x, 3), true) < math.sqrt(9 / n)
    with pytest.raises(ValueError, match="does not apply to the uniform graph"):
        sample(ExactScore(Uniform(3), p_data), Uniform(3), noise, (4, 3), None, "first_hitting")


def test_first_hitting_reveals_at_the_right_times():
    """A made-up score whose token law depends on the noise: at a masked position token 0 has
    probability m = 1 - e^{-sigma} (1 - m if the other position holds a 1). The exact law of the
    process, with m_1 = m(t=1) and reveal times m_1 u1^(1/2) then that times u2: the first token
    revealed is 0 with probability E[m_1 u1^(1/2)] = 2 m_1 / 3, and jointly
    P(0, 0) = E[p1 p2] = m_1^2 / 4, P(0, 1) = 2 m_1 / 3 - m_1^2 / 4, P(1, 1) = m_1 / 3 - m_1^2 / 4;
    the position revealed first is either, with probability 1/2. A sampler that evaluates the
    score at the wrong time (e.g. the time before the jump) draws another law."""
    def score(x, sigma):
        m = -torch.expm1(-sigma.double())[:, None]
        other = x.flip(1)  # the other position's token
        p0 = torch.where(other == 1, 1 - m, m)
        return torch.stack([p0, 1 - p0, torch.ones_like(p0)], dim=-1).log()
    noise, n = LogLinearNoise(), 200_000
    m1 = -math.expm1(-noise(torch.tensor(1.0))[0].item())
    first = torch.tensor([[m1 ** 2 / 4, 2 * m1 / 3 - m1 ** 2 / 4], [1 - m1 + m1 ** 2 / 4, m1 / 3 - m1 ** 2 / 4]])
    law = (first + first.T) / 2  # law[a, b]: first revealed a then b, at either position
    torch.manual_seed(6)
    x = sample(score, Absorbing(2), noise, (n, 2), None, "first_hitting")
    assert tv(empirical(x, 2), law) < math.sqrt(4 / n) and tv(law, torch.full((2, 2), 0.25)) > 0.1


def test_categorical_sampling_float64_and_float32():
    torch.manual_seed(4)
    assert inspect.signature(sample).parameters["dtype"].default is torch.float64
    assert inspect.signature(sample_categorical).parameters["dtype"].default is torch.float64
    # float64: a low-entropy law with a long tail (1000 tokens of 1e-4 each) is sampled exactly
    # (times 3: the race needs no normalisation; token 1 negative: clamped to 0, never drawn)
    probs = torch.cat([torch.tensor([0.9, -1e-4]), torch.full((999,), 1e-4)]).expand(10_000, -1)
    x = sample_categorical(3 * probs)
    tail = (x > 0).double().mean().item()
    assert abs(tail - 0.0999 / 0.9999) < 4 * math.sqrt(0.1 * 0.9 / 10_000) and not (x == 1).any()
    # float32 and float64 differ on events of probability ~2^-24 per entry (~1e9 Monte Carlo draws),
    # so measured exactly: float32 torch.rand returns multiples of 2^-24 (checked); enumerating all
    # 2^24 values of the leader's uniform, and the largest of the rare token's, gives the float32
    # law of the race for p = [1, r].
    u = torch.rand(10**6, dtype=torch.float32)
    assert torch.equal(u * 2**24, (u * 2**24).round())
    grid = torch.arange(2**24, dtype=torch.float64).div(2**24).float().clamp(min=torch.finfo(torch.float32).tiny)
    lead, rare = -torch.log(grid), -torch.log(grid[-10_000:]).flip(0)  # rare: increasing
    r = torch.tensor(2.0**-25, dtype=torch.float32)  # e.g. dt/t ~1e-3 times p(y) ~3e-5
    p32 = torch.searchsorted(rare, r * lead).double().sum().item() / 2**48  # P(E_rare < r E_lead)
    assert p32 < 0.5 * r.item()  # float32: the rare token wins ~3x too rarely (lower temperature)


def test_categorical_draws_race_on_float64_uniforms():
    """The draw is the exponential race argmax p / E, E = -log u, on float64 uniforms u of the
    global generator. (Where float32 uniforms go wrong, with probability ~2^-24 per entry, a
    frequency test needs ~1e9 draws; the test above computes that law exactly instead, and this
    one pins the draw to float64 uniforms.)"""
    probs = torch.tensor([1.0, 2.0**-30, 0.0, 0.25], dtype=torch.float64).expand(4096, -1)
    torch.manual_seed(7)
    drawn = sample_categorical(probs)
    torch.manual_seed(7)
    u = torch.rand(probs.shape, dtype=torch.float64)
    assert torch.equal(drawn, (probs / -u.log()).argmax(-1))


def test_text_prompt_and_cli(tmp_path, capsys, float32):
    encode = lambda s: [ord(c) - ord("a") for c in s]
    assert text_prompt(encode, 6, "ab", "c", spans={3: "d"}) == {0: 0, 1: 1, 5: 2, 3: 3}
    with pytest.raises(ValueError, match="overlaps"):
        text_prompt(encode, 6, "abc", spans={2: "x"})
    chars = " abcdefghij"
    # the zero-initialised network: the exact score of uniform text, so masks fill in gradually
    SEDD(tiny(vocab_size=len(chars) + 1, block_size=16)).save_pretrained(tmp_path, "absorb", {"type": "loglinear"})
    meta = dict(name="tiny", tokenizer="chars", chars=chars, n_tokens=len(chars))
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    argv = ["--ckpt", str(tmp_path), "--steps", "20", "--batch_size", "3", "--device", "cpu", "--seed", "1"]
    texts = sampling.main(argv + ["--prefix", "abc", "--suffix", "j ij", "--show_steps", "3"])
    out = capsys.readouterr().out
    assert len(texts) == 3 and all(len(t) == 16 and t.startswith("abc") and t.endswith("j ij") for t in texts)
    assert out.count("step ") == 3 and "_" in out and "21 network evaluations" in out
    for bad, msg in [(["--prefix", "abcdefghij", "--suffix", "abcdefghij"], r"20 tokens \(prefix 10, suffix 10\) .* 16"),
                     (["--prefix", "xyz"], "not in the vocabulary"), (["--length", "17"], "block_size 16")]:
        with pytest.raises(SystemExit, match=msg):
            sampling.main(argv + bad)
    with pytest.raises(SystemExit, match="neither a checkpoint directory nor a hub id"):
        sampling.main(["--ckpt", str(tmp_path / "missing")])


# ---------------------------------------------------------------- sampling.py: sample quality

TEXTS = ["the quick brown fox jumps over the lazy dog and then sleeps in the warm sun",
         "a", "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
         "to be or not to be"]


class KnowsTheFuture(torch.nn.Module):
    """A (cheating) judge whose probabilities we know: at chunk position j it gives the true next
    token the logit j and every other token 0, so its NLL there is log(e^j + V - 1) - j. Its
    logits are float64, so the result is exact (a float32 sum over 50k logits is not)."""
    V = 50257

    def __init__(self, context):
        super().__init__()
        self.config = types.SimpleNamespace(n_positions=context)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.V, dtype=torch.float64)
        nxt = input_ids.roll(-1, dims=1)  # the next token (the wrapped last one is never scored)
        logits.scatter_(-1, nxt[..., None], torch.arange(T, dtype=torch.float64).expand(B, T)[..., None])
        return types.SimpleNamespace(logits=logits)


def test_generative_perplexity_matches_hand_computation(gpt2_bpe):
    context = 5
    lengths = [len(gpt2_bpe.encode(t)) for t in TEXTS]
    assert max(lengths) > 2 * context and 1 in lengths  # chunking and a lone token are exercised
    # chunks of `context` tokens; in each, positions 0 .. len - 2 are scored
    nll = [math.log(math.exp(j) + KnowsTheFuture.V - 1) - j
           for n in lengths for start in range(0, n, context) for j in range(min(context, n - start) - 1)]
    expected = math.exp(sum(nll) / len(nll))
    for batch_size in (1, 3, 64):  # padding must not change anything
        ppl = sampling.generative_perplexity(TEXTS, KnowsTheFuture(context), batch_size=batch_size)
        assert ppl == pytest.approx(expected, rel=1e-12)


def test_generative_perplexity_errors(gpt2_bpe):
    with pytest.raises(ValueError, match="no token to score"):
        sampling.generative_perplexity(["a", ""], KnowsTheFuture(8))
    with pytest.raises(ValueError, match="no token to score"):  # a context of 1 predicts nothing
        sampling.generative_perplexity(TEXTS, KnowsTheFuture(1))


def test_generative_perplexity_with_tiny_gpt2_judge(gpt2_bpe, float32):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    judge = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=8))
    ppl = sampling.generative_perplexity(TEXTS, judge, batch_size=2)
    assert math.isfinite(ppl) and ppl > 1
    # the same by hand: each chunk of at most 8 tokens alone through the judge
    nll, count = 0.0, 0
    for text in TEXTS:
        ids = gpt2_bpe.encode(text)
        for i in range(0, len(ids), 8):
            chunk = torch.tensor(ids[i:i + 8])[None]
            if chunk.shape[1] > 1:
                with torch.no_grad():
                    logits = judge(input_ids=chunk).logits[0, :-1]
                nll += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
                count += chunk.shape[1] - 1
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_generative_perplexity_names_the_missing_package(gpt2_bpe, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed; never online
    with pytest.raises(ImportError, match="pip install transformers"):
        sampling.generative_perplexity(TEXTS, "gpt2-large")


def test_unigram_entropy():
    assert sampling.unigram_entropy([3, 3, 3, 3]) == 0.0
    assert sampling.unigram_entropy([0, 1, 0, 1]) == pytest.approx(math.log(2))
    p = torch.tensor([0.5, 0.25, 0.25])
    assert sampling.unigram_entropy([7, 7, 1, 2]) == pytest.approx(-(p * p.log()).sum().item())
    # a batch: the mean of the per-sample entropies (0 and log 4), not the pooled entropy
    assert sampling.unigram_entropy(torch.tensor([[5, 5, 5, 5], [0, 1, 2, 3]])) == pytest.approx(math.log(4) / 2)
    assert sampling.unigram_entropy([[5, 5, 5, 5], [0, 1, 2, 3]]) == pytest.approx(math.log(4) / 2)


def test_real_word_rate_and_cli(tmp_path, capsys, float32):
    (tmp_path / "mat.txt").write_text("the cat sat on the mat " * 100)  # train: the first 90 copies
    prepare.main(["chars", "--src", str(tmp_path / "mat.txt"), "--out_dir", str(tmp_path)])
    words = sampling.dataset_words(str(tmp_path / "mat"))
    assert words == "the cat sat on the mat".split() * 90
    vocabulary = set(words)
    # counted: the dog sat | (none) | cat mat on: 5 real of 6 (each sample's first and last are cut)
    assert sampling.real_word_rate(["xx the dog sat yy", "a b", " cut cat mat on cut "], vocabulary) == 5 / 6
    with pytest.raises(ValueError, match="no word to check"):
        sampling.real_word_rate(["a b", "c"], vocabulary)
    (tmp_path / "bpe").mkdir()
    (tmp_path / "bpe" / "meta.json").write_text(json.dumps(dict(name="bpe", tokenizer="gpt2", n_tokens=50257)))
    with pytest.raises(ValueError, match="character-level"):
        sampling.dataset_words(str(tmp_path / "bpe"))

    chars = " abcdefghijklmnopqrstuvwxyz"
    SEDD(tiny(vocab_size=len(chars) + 1, block_size=24)).save_pretrained(tmp_path / "ckpt", "absorb", {"type": "loglinear"})
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps(dict(name="az", tokenizer="chars", chars=chars,
                                                                 n_tokens=len(chars))))
    argv = ["--ckpt", str(tmp_path / "ckpt"), "--steps", "8", "--batch_size", "3", "--prefix", "the cat sat "]
    texts = sampling.main(argv + ["--real_words", str(tmp_path / "mat")])
    rate = sampling.real_word_rate(texts, vocabulary)
    assert rate > 0 and f"real words {rate:.1%} " in capsys.readouterr().out
    for bad, msg in [("missing", "prepare the dataset first"), ("bpe", "character-level")]:
        with pytest.raises(SystemExit, match=msg):
            sampling.main(argv + ["--real_words", str(tmp_path / bad)])


def test_cli_gen_ppl(tmp_path, capsys, monkeypatch, gpt2_bpe, float32):
    transformers = pytest.importorskip("transformers")
    chars = " abcdefghij"
    torch.manual_seed(0)
    SEDD(SEDDConfig(vocab_size=len(chars) + 1, n_embd=32, cond_dim=16, n_layer=1, n_head=2, block_size=24,
                    dropout=0.0)).save_pretrained(tmp_path, "absorb", {"type": "loglinear"})
    (tmp_path / "meta.json").write_text(json.dumps(dict(name="tiny", tokenizer="chars", chars=chars, n_tokens=len(chars))))
    judge = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16))
    asked = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda name: asked.append(name) or judge)
    argv = ["--ckpt", str(tmp_path), "--steps", "8", "--batch_size", "3", "--device", "cpu"]
    texts = sampling.main(argv + ["--gen_ppl"])
    out = capsys.readouterr().out
    assert asked == ["gpt2-large"]  # the default judge
    assert sampling.generative_perplexity(texts, judge) == pytest.approx(
        float(out.split("generative perplexity ")[1].split()[0]), rel=1e-2)
    assert "first token is not scored" in out and "unigram entropy" in out
    sampling.main(argv + ["--gen_ppl", "gpt2"])
    assert asked[-1] == "gpt2"


# ---------------------------------------------------------------- the autoregressive twin

def twin(n_tokens=3, seed=0, **kw):
    """A randomized autoregressive twin: causal, no sigma, n_tokens + BOS ids."""
    return randomized(tiny(vocab_size=n_tokens + 1, causal=True, scale_by_sigma=False, **kw),
                      seed=seed, std=0.5)


def twin_law(model, n_tokens, length):
    """The twin's probability of every sequence, by enumeration: exp(-ar_nll)."""
    xs = all_sequences(n_tokens, length)
    with torch.no_grad():
        return xs, torch.exp(-ar_nll(model, xs, n_tokens).double())


def test_twin_is_causal_and_its_likelihood_a_normalised_law(float32):
    model = twin()
    x = torch.randint(3, (4, 8), generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 3
    a, b = model(x), model(changed)
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])  # position i reads <= i
    a.sum().backward()  # no noise: the adaLN layers see c = 0, so only their biases learn
    ada = model.blocks[0].adaLN_modulation
    assert torch.equal(ada.weight.grad, torch.zeros_like(ada.weight)) and ada.bias.grad.abs().max() > 0
    assert not any(k.startswith("sigma_map") for k in model.state_dict())
    xs, p = twin_law(model, 3, 4)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5) and p.min() > 0  # first token included (from BOS)
    path = Path(tempfile.mkdtemp())
    model.save_pretrained(path)
    loaded = SEDD.from_pretrained(str(path))
    assert loaded.config == model.config and loaded.graph_name is None and loaded.noise_config is None


def test_twin_samples_follow_its_law_and_nucleus(float32):
    """Temperature 1 draws the twin's exact law (enumerated); a prefix is kept; the nucleus keeps
    the most likely tokens up to top_p of the mass."""
    model = twin(seed=1)
    xs, p = twin_law(model, 3, 3)
    torch.manual_seed(0)
    n = 40_000
    drawn = sample_ar(model, (n, 3))
    freq = torch.bincount((drawn * torch.tensor([9, 3, 1])).sum(-1), minlength=27).double() / n
    assert 0.5 * (freq - p).abs().sum().item() < 0.02  # the Monte Carlo floor is ~0.01 here
    stats = {}
    prefixed = sample_ar(model, (64, 3), prompt={0: 2}, stats=stats)
    assert (prefixed[:, 0] == 2).all() and stats["network_evals"] == 2
    with pytest.raises(ValueError, match="prefix"):
        sample_ar(model, (2, 3), prompt={1: 0})
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    assert torch.equal(sampling.nucleus(probs, 0.7), torch.tensor([[0.0, 0.5, 0.0, 0.25]]))
    assert torch.equal(sampling.nucleus(probs, 0.5), torch.tensor([[0.0, 0.5, 0.0, 0.0]]))
    assert torch.equal(sampling.nucleus(probs, 1.0), probs)


def test_twin_as_judge_and_cli(tmp_path, capsys, float32):
    """A twin whose output ignores the context (blocks at their adaLN-zero start, output bias
    log q) gives every character the law q: its perplexity is exp(-mean log q(c)) by hand."""
    chars, q = " ab", torch.tensor([0.5, 0.3, 0.2])
    model = SEDD(tiny(vocab_size=4, causal=True, scale_by_sigma=False, block_size=16))
    with torch.no_grad():
        model.output_layer.linear.bias[:3] = q.log()
    model.save_pretrained(tmp_path / "judge")
    (tmp_path / "judge" / "meta.json").write_text(json.dumps(dict(name="ab", tokenizer="chars", chars=chars, n_tokens=3)))
    texts = ["ab a", "bb  ba"]
    ids = [chars.index(c) for t in texts for c in t]
    expected = math.exp(-sum(math.log(q[i]) for i in ids) / len(ids))
    assert sampling.twin_perplexity(texts, str(tmp_path / "judge")) == pytest.approx(expected, rel=1e-5)
    SEDD(tiny(vocab_size=4, block_size=16)).save_pretrained(tmp_path / "sedd", "absorb", {"type": "loglinear"})
    (tmp_path / "sedd" / "meta.json").write_text((tmp_path / "judge" / "meta.json").read_text())
    with pytest.raises(ValueError, match="judge must be an autoregressive twin"):
        sampling.twin_perplexity(texts, str(tmp_path / "sedd"))
    # the CLI: the twin samples (a prefix, nucleus); a diffusion model is judged by it
    texts = sampling.main(["--ckpt", str(tmp_path / "judge"), "--batch_size", "3", "--prefix", "ab", "--top_p", "0.9"])
    out = capsys.readouterr().out
    assert len(texts) == 3 and all(len(t) == 16 and t.startswith("ab") for t in texts)
    assert "left to right, nucleus top_p=0.9, 14 network evaluations" in out
    with pytest.raises(SystemExit, match="continues a prefix"):
        sampling.main(["--ckpt", str(tmp_path / "judge"), "--suffix", "ab"])
    sampling.main(["--ckpt", str(tmp_path / "sedd"), "--steps", "8", "--gen_ppl", str(tmp_path / "judge")])
    assert "per token of the twin" in capsys.readouterr().out


def test_compare_end_to_end(tiny_data, tmp_path, float32):
    """compare.py on three tiny runs (SEDD Absorb, SEDD Uniform, the twin) writes every table."""
    for name, kw in (("absorb", {}), ("uniform", {"graph": "uniform"}), ("ar", {"ar": True})):
        train.train({**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path / name),
                     "max_iters": 2, "eval_interval": 2, **kw})
    compare.main(["--absorb", str(tmp_path / "absorb"), "--uniform", str(tmp_path / "uniform"),
                  "--ar", str(tmp_path / "ar"), "--data", os.path.join(tiny_data, "tiny"), "--out", str(tmp_path / "cmp"),
                  "--eval_seqs", "8", "--eval_n_t", "2", "--samples", "3", "--steps", "2,4", "--span", "8", "--device", "cpu"])
    results = (tmp_path / "cmp" / "results.md").read_text()
    for row in ("| SEDD Absorb | <= ", "| SEDD Uniform | <= ", "| autoregressive twin | = ", "character 5-gram",
                "| SEDD 4 steps | 5 |", "| twin, temperature 1 | 32 |", "| twin, nucleus 0.9 | 32 |", "| real val text |",
                "| SEDD Absorb, 256 steps | prefix + suffix |", "| the removed text |"):
        assert row in results
    with pytest.raises(SystemExit, match="train it first"):
        compare.main(["--absorb", str(tmp_path / "missing")])


# ---------------------------------------------------------------- prepare.py

def text8_like(n, seed):
    return "".join(np.random.default_rng(seed).choice(list(" abcdefghijklmnopqrstuvwxyz"), size=n))


def write_zip(path, text, member="text8"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, text)
    return str(path)


def read_splits(out, splits=("train", "val", "test")):
    """meta.json, the splits' token arrays, and the text of all splits in order, decoded."""
    meta = prepare.load_meta(out)
    bins = {s: np.fromfile(os.path.join(out, s + ".bin"), dtype=meta["dtype"]) for s in splits}
    return meta, bins, prepare.get_tokenizer(meta)[1](np.concatenate(list(bins.values())).tolist())


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture
def gpt2_bpe(monkeypatch):
    """A small byte-level BPE in GPT-2's layout (GPT-2's split pattern, a few merges,
    <|endoftext|> = 50256), registered as tiktoken's r50k_base so that prepare.gpt2_encoding
    returns it: the tests check what nanoSEDD does with an encoding, offline and without any file
    outside the repository; GPT-2's real ranks are tiktoken's to test."""
    import tiktoken
    import tiktoken.registry
    ranks = {bytes([b]): b for b in range(256)}
    for piece in (b"th", b"the", b" t", b" the", b"er", b"in", b"ing"):
        ranks[piece] = len(ranks)
    enc = tiktoken.Encoding("gpt2-test", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "r50k_base", enc)
    prepare.gpt2_encoding.cache_clear()
    yield enc
    prepare.gpt2_encoding.cache_clear()


def test_text8_partial_corpus_refused_then_proportional_and_idempotent(tmp_path, capsys, monkeypatch):
    text = text8_like(10_000, 0)
    src, out = write_zip(tmp_path / "small.zip", text), tmp_path / "data"
    with pytest.raises(SystemExit, match="--proportional") as e:
        prepare.main(["text8", "--src", src, "--out_dir", str(out)])
    assert "10,000 characters" in str(e.value) and "100,000,000" in str(e.value)
    assert not (out / "text8" / "meta.json").exists()
    prepare.main(["text8", "--src", src, "--out_dir", str(out), "--proportional"])
    meta, _, decoded = read_splits(out / "text8")
    assert meta["chars"] == list(" abcdefghijklmnopqrstuvwxyz") and meta["n_tokens"] == 27 and decoded == text
    assert meta["counts"] == {"train": 9000, "val": 500, "test": 500} and meta["dtype"] == "uint16"
    assert "proportional" in meta["split"] and "not the standard" in meta["split"]
    assert prepare.get_tokenizer(meta)[0]("ab z") == [1, 2, 0, 26]
    # a finished dataset is not rebuilt, even from another source, unless --force
    train_bin = out / "text8" / "train.bin"
    before = (train_bin.read_bytes(), train_bin.stat().st_mtime_ns)
    src2 = write_zip(tmp_path / "other.zip", text8_like(10_000, 1))
    prepare.main(["text8", "--src", src2, "--out_dir", str(out), "--proportional"])
    assert "already prepared" in capsys.readouterr().out
    assert (train_bin.read_bytes(), train_bin.stat().st_mtime_ns) == before
    prepare.main(["text8", "--src", src2, "--out_dir", str(out), "--proportional", "--force"])
    assert read_splits(out / "text8")[2] == text8_like(10_000, 1) and not list((out / "text8").glob("*.tmp"))
    # the standard split of a full corpus (here 1,000 characters), unzipped corpora accepted too
    monkeypatch.setattr(prepare, "TEXT8_SPLIT", (900, 50, 50))
    (tmp_path / "text8.txt").write_text(text8_like(1000, 2))
    prepare.main(["text8", "--src", str(tmp_path / "text8.txt"), "--out_dir", str(tmp_path / "full")])
    meta = prepare.load_meta(tmp_path / "full" / "text8")
    assert meta["counts"] == {"train": 900, "val": 50, "test": 50} and meta["split"].startswith("standard")


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (("abc", "enwik8"), "no member named 'text8'"),
    (("hello World",), "other than a-z and space"), (b"PK\x03\x04 truncated", "not a valid zip")])
def test_text8_bad_input(tmp_path, content, message):
    src = tmp_path / "text8.zip"
    if isinstance(content, bytes):
        src.write_bytes(content)
    elif content:
        write_zip(src, *content)
    with pytest.raises(SystemExit, match=message):
        prepare.main(["text8", "--src", str(src), "--out_dir", str(tmp_path), "--proportional"])
    assert not (tmp_path / "text8" / "meta.json").exists()


def test_chars_round_trip_errors_and_large_vocabulary(tmp_path):
    text = "Où est la gare ?\r\nÀ gauche, 200 m — merci !\n" * 30
    (tmp_path / "french.txt").write_bytes(text.encode("utf-8"))
    prepare.main(["chars", "--src", str(tmp_path / "french.txt"), "--out_dir", str(tmp_path)])
    meta, bins, decoded = read_splits(tmp_path / "french")
    assert meta["chars"] == sorted(set(text)) and meta["n_tokens"] == len(set(text)) and decoded == text
    encode = prepare.get_tokenizer(meta)[0]
    assert encode(text) == np.concatenate(list(bins.values())).tolist()
    with pytest.raises(ValueError, match="'€'"):
        encode("5 €")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SystemExit, match="empty.txt is empty"):
        prepare.main(["chars", "--src", str(tmp_path / "empty.txt"), "--out_dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="python prepare.py chars"):
        prepare.load_meta(tmp_path / "empty")
    (tmp_path / "big.txt").write_text("".join(map(chr, range(0x10000, 0x10000 + 70_000))), encoding="utf-8")
    prepare.main(["chars", "--src", str(tmp_path / "big.txt"), "--out_dir", str(tmp_path)])
    meta, bins, _ = read_splits(tmp_path / "big")  # 70,000 distinct characters: uint32
    assert meta["dtype"] == "uint32" and bins["test"].max() == 69_999


def test_interrupted_rebuild_never_looks_finished(tmp_path):
    src, out = tmp_path / "a.txt", tmp_path / "a"
    src.write_text("hello world\n" * 100)
    prepare.main(["chars", "--src", str(src), "--out_dir", str(tmp_path)])

    def killed():  # a --force rebuild killed while writing
        yield np.zeros(10, dtype=np.uint16)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        prepare.write_dataset(str(out), {"train": killed()}, prepare.load_meta(out))
    assert not (out / "meta.json").exists() and (out / "train.bin.tmp").exists()
    with pytest.raises(SystemExit, match="no meta.json"):  # old bins, no meta: not silently reused
        prepare.main(["chars", "--src", str(src), "--out_dir", str(tmp_path)])
    prepare.main(["chars", "--src", str(src), "--out_dir", str(tmp_path), "--force"])
    assert read_splits(out)[2] == src.read_text()


def test_owt_path_packs_documents_with_eot(tmp_path, gpt2_bpe):
    docs = ["Hello world.", "A document mentioning <|endoftext|> as text.", "Ünïcode ☃\n\nend"]
    prepare.write_gpt2_dataset(str(tmp_path / "owt"), {"train": [{"text": d} for d in docs], "val": docs[:1]},
                               {"name": "owt-test", "source": "test", "split": "test"})
    expected = [t for d in docs for t in gpt2_bpe.encode_ordinary(d) + [50256]]
    meta, bins, _ = read_splits(tmp_path / "owt", ("train", "val"))
    assert bins["train"].tolist() == expected and bins["train"][-1] == 50256 and (bins["train"] == 50256).sum() == 3
    assert bins["val"].tolist() == expected[:expected.index(50256) + 1]  # the first document
    assert meta["tokenizer"] == "gpt2" and meta["n_tokens"] == 50257 and meta["dtype"] == "uint16"
    encode, decode = prepare.get_tokenizer(meta)
    assert decode(bins["train"].tolist()) == "".join(d + "<|endoftext|>" for d in docs)
    # the, space, th, ing (merges by rank: th before " t", in before ing), then the separator
    assert encode("the thing<|endoftext|>") == [257, 32, 256, 262, 50256]


def test_detokenizers():
    wt = prepare.wikitext_detokenizer
    assert wt(" = = Early life = = \n") == " == Early life ==\n"
    assert (wt("The 2 @,@ 000 @-@ strong army , led by Smith 's son ( John ) , won 3 @.@ 5 % . \n")
            == "The 2,000-strong army, led by Smith's son (John), won 3.5 %.\n")
    assert (prepare.ptb_detokenizer("the firm 's stock fell N N to $ N and it does n't <unk> it")
            == "the firm's stock fell 1 1 to $1 and it doesn't ? it")
    assert (prepare.lm1b_detokenizer("Visit http : / / example.com , it costs $ 5 today .")
            == "Visit http://example.com, it costs $5 today.")
    assert prepare.lm1b_detokenizer('He said " fine " , then left') == 'He said "fine", then left'
    assert prepare.lambada_detokenizer("\u201cHi,\u201d she said.  \n") == '\n"Hi," she said.'


def test_zeroshot_path_writes_1024_token_rows(tmp_path, gpt2_bpe):
    lines = ["", " = Valkyria Chronicles III = \n", "",
             " The game 's battle system , the BliTZ system , is carried over directly from "
             "Valkyria Chronicles . During missions , players select each unit using a top @-@ "
             "down perspective of the battlefield map ( about 1 @,@ 000 units ) . \n"] * 40
    detok, info = prepare.wikitext_detokenizer, {"name": "wt", "source": "test", "split": "test"}
    meta = prepare.write_gpt2_dataset(str(tmp_path / "wt"), {"test": lines}, info, detokenizer=detok, block_size=1024)
    stream = [t for l in lines for t in gpt2_bpe.encode_ordinary(detok(l)) + [50256]]
    rows = np.fromfile(tmp_path / "wt" / "test.bin", dtype=np.uint16).reshape(-1, 1024)
    assert len(rows) == len(stream) // 1024 >= 2 and len(stream) % 1024 > 0  # tail dropped
    assert rows.ravel().tolist() == stream[:rows.size]
    assert meta["block_size"] == 1024 and meta["counts"] == {"test": rows.size}
    with pytest.raises(SystemExit, match="fewer than 1024 tokens"):
        prepare.write_gpt2_dataset(str(tmp_path / "tiny"), {"test": lines[:4]}, info, block_size=1024)


def test_zeroshot_sets_read_their_split(tmp_path, monkeypatch, gpt2_bpe):
    """WikiText-2's test split is WikiText-103's text, so wikitext2 reads its train split."""
    asked = []
    fake = types.ModuleType("datasets")  # the Hugging Face package, offline: each set one repeated row
    fake.Dataset = type("Dataset", (), {})
    fake.load_dataset = lambda repo, config, revision=None, split=None: (
        asked.append((config, split)) or [{"text": f" the {config} {split} text \n"}] * 400)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    for name in ("wikitext2", "wikitext2_test", "wikitext103"):
        prepare.main(["zeroshot", "--set", name, "--out_dir", str(tmp_path)])
    assert asked == [("wikitext-2-raw-v1", "train"), ("wikitext-2-raw-v1", "test"), ("wikitext-103-raw-v1", "test")]
    text = lambda name: read_splits(tmp_path / name, ("test",))[2]
    assert text("wikitext2").startswith(" the wikitext-2-raw-v1 train text\n<|endoftext|>")
    assert "train split" in prepare.load_meta(tmp_path / "wikitext2")["source"] and text("wikitext103") != text("wikitext2")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets installed")
@pytest.mark.parametrize("argv", [["owt"], ["zeroshot", "--set", "ptb"]])
def test_hub_commands_say_how_to_install_datasets(tmp_path, argv):
    with pytest.raises(SystemExit, match="pip install datasets"):
        prepare.main(argv + ["--out_dir", str(tmp_path)])


# ---------------------------------------------------------------- train.py

TINY_RUN = dict(dataset="tiny", block_size=32, batch_size=4, n_layer=2, n_head=2, n_embd=32, cond_dim=16,
                dropout=0.0, warmup_iters=2, learning_rate=1e-3, eval_batches=1, eval_n_t=2, sample_steps=4,
                dtype="float32", compile=False, device="cpu")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    prepare.main(["chars", "--src", str(root / "corpus.txt"), "--name", "tiny", "--out_dir", str(root)])
    return str(root)


def params(out_dir):
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=False)
    return torch.cat([p.flatten() for p in ckpt["model"].values()]), ckpt


def test_config_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown config key 'n_layers'.*'n_layer'"):
        train.load_config(["--n_layers=2"])
    with pytest.raises(SystemExit, match="n_layer in --n_layer=two must be int"):
        train.load_config(["--n_layer=two"])
    (tmp_path / "bad.py").write_text("learning_rat = 1e-3\n")
    with pytest.raises(SystemExit, match="unknown config key 'learning_rat'"):
        train.load_config([str(tmp_path / "bad.py")])
    assert train.load_config([str(HERE / "config" / "text8_tiny.py"), "--n_layer=3"])["n_layer"] == 3


def test_loss_at_initialisation(float32):
    """At init the absorbing model is the score of a uniform law on the N real tokens; the
    expected loss is then exactly L (1 - eps) ln N for every t: model, loss and weighting agree."""
    torch.manual_seed(0)
    model = SEDD(SEDDConfig(vocab_size=28, n_embd=32, cond_dim=16, n_layer=1, n_head=2, block_size=64, dropout=0.0))
    losses = loss_fn(model, Absorbing(27), LogLinearNoise(), torch.randint(27, (512, 64)))
    assert abs(losses.mean().item() - 64 * (1 - 1e-3) * math.log(27)) < 4 * losses.std().item() / math.sqrt(512)


def log_rows(out_dir):
    """log.csv without its timing columns (tokens/s, MFU)."""
    with open(os.path.join(out_dir, "log.csv")) as f:
        return [(r["iter"], r["train_bits_per_token"], r["lr"], r["val_bits_per_token"]) for r in csv.DictReader(f)]


def test_tiny_run_exact_resume_and_eval_only(tiny_data, tmp_path, capsys, float32):
    """A run stopped at an evaluation and resumed is the straight run, bit for bit: weights, EMA,
    AdamW state, the exported model, and log.csv (the resumed run does not evaluate again).
    Dropout is on, so its generator must be restored too. --eval_only then reproduces the last
    evaluation from the checkpoint's EMA weights."""
    def run(out_dir, **kw):
        cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(out_dir), "max_iters": 6,
               "eval_interval": 3, "log_interval": 3, "dropout": 0.2, **kw}
        train.train(cfg)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(straight)
    last_eval = capsys.readouterr().out.split("iter 6: val ELBO ")[1].split(" bits")[0]
    run(stopped, max_iters=3)
    run(stopped, init_from="resume")
    a, b = (torch.load(d / "ckpt.pt", weights_only=False) for d in (straight, stopped))
    assert a["iter_num"] == b["iter_num"] == 6
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert not torch.equal(a["model"]["blocks.0.attn_qkv.weight"], a["ema"]["blocks.0.attn_qkv.weight"])
    moments = lambda ckpt: [v for s in ckpt["optimizer"]["state"].values() for v in s.values()]
    assert all(torch.equal(x, y) for x, y in zip(moments(a), moments(b)))
    exported = [torch.load(d / "pytorch_model.bin") for d in (straight, stopped)]
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
    rows = log_rows(straight)
    assert rows == log_rows(stopped) and [r[0] for r in rows if r[3]] == ["0", "3", "6"]
    assert all((straight / f).exists() for f in ("config.json", "pytorch_model.bin", "meta.json", "log.csv"))
    assert SEDD.from_pretrained(str(straight)).graph_name == "absorb"  # the exported EMA weights load
    capsys.readouterr()
    run(straight, init_from="resume", eval_only=True)
    assert capsys.readouterr().out.strip().startswith(f"val ELBO {last_eval} bits per character")


def test_finetune_from_pretrained(tiny_data, tmp_path, monkeypatch, float32):
    """--init_from=pretrained:DIR trains in train mode with the configured dropout (from_pretrained
    returns an eval-mode model with the checkpoint's rate), with the checkpoint's shape and noise
    schedule (a geometric one's sigma_min and sigma_max), and exports that schedule again."""
    torch.manual_seed(0)
    pre = tmp_path / "pre"
    schedule = {"type": "geometric", "sigma_min": 1e-3, "sigma_max": 7.0}
    SEDD(SEDDConfig(vocab_size=29, n_embd=32, cond_dim=16, n_layer=1, n_head=2, block_size=32,
                    dropout=0.0)).save_pretrained(pre, "absorb", schedule)
    seen, real_loss_fn = [], train.loss_fn

    def spy(model, graph, noise, x0, **kw):
        rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        seen.append((model.training, rates, noise_config(noise)))
        return real_loss_fn(model, graph, noise, x0, **kw)
    monkeypatch.setattr(train, "loss_fn", spy)
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path / "ft"),
           "init_from": f"pretrained:{pre}", "dropout": 0.3, "max_iters": 2, "eval_interval": 2}
    train.train(cfg)
    assert seen == [(True, {0.3}, schedule)] * 2
    tuned = SEDD.from_pretrained(str(tmp_path / "ft"))
    assert tuned.config.n_layer == 1 and tuned.config.dropout == 0.3 and tuned.noise_config == schedule


class NoFloat64(TorchDispatchMode):
    """A device without float64, as Apple's MPS: every operation that makes a float64 tensor fails."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_leaves(out)):
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64")
        return out


def test_device_without_float64_trains_evaluates_and_samples(tiny_data, tmp_path, capsys, float32):
    with NoFloat64():
        with pytest.raises(TypeError):
            torch.zeros(1, dtype=torch.float64)  # the simulation works
        assert sampling.draw_dtype("cpu") is torch.float32
        cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path),
               "max_iters": 2, "eval_interval": 2}
        train.train(cfg)
        out = capsys.readouterr().out
        assert out.count("has no float64") == 1 and out.count("val ELBO") == 2 and out.count("sample:") == 2
        sampling.main(["--ckpt", str(tmp_path), "--steps", "4", "--batch_size", "2", "--device", "cpu"])
        assert "dtype float32" in capsys.readouterr().out


def test_throughput_counts_only_timed_iterations(tiny_data, tmp_path, monkeypatch, float32):
    """tokens/s = tokens of the iterations since the last log or evaluation / their time: with a
    clock that advances 1 s per training step and stands still otherwise, every row reads the
    tokens of one iteration, also when eval_interval is not a multiple of log_interval."""
    clock, real_step = [0.0], train.Trainer.step

    def step(self):
        clock[0] += 1.0
        return real_step(self)
    monkeypatch.setattr(train.Trainer, "step", step)
    monkeypatch.setattr(train.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(train, "peak_flops", lambda device, dtype: 1e12)
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(tmp_path), "max_iters": 8,
           "eval_interval": 3, "log_interval": 2}
    train.train(cfg)
    with open(tmp_path / "log.csv") as f:
        speeds = [r["tokens_per_s"] for r in csv.DictReader(f) if r["tokens_per_s"]]
    assert speeds == [str(4 * 32)] * 4


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
    assert all(torch.allclose(e, p, rtol=1e-5, atol=1e-7) for e, p in zip(expected, run.ema_model.parameters()))

    generator, orders = torch.Generator().manual_seed(0), set()
    for _ in range(20):
        _, t, _ = train.draw_step(cfg, data, graph, noise, generator)
        strata = ((t - cfg["sampling_eps"]) / (1 - cfg["sampling_eps"]) * 8).floor().long()
        assert sorted(strata.tolist()) == list(range(8))
        orders.add(tuple(strata.tolist()))
    assert len(orders) > 10  # shuffled differently each time


def test_random_windows_reach_the_last_token(tmp_path):
    meta = {"name": "count", "tokenizer": "chars", "chars": list("abcdefgh"), "n_tokens": 8, "split": "test"}
    prepare.write_dataset(str(tmp_path / "count"), {"train": [np.arange(6)], "val": [np.arange(4)],
                                                    "test": [np.arange(3)]}, meta)
    cfg = {**train.load_config([]), "data_dir": str(tmp_path), "dataset": "count", "block_size": 4}
    windows = train.Data(cfg, "train").random_batch(200, torch.Generator().manual_seed(0))
    assert set(windows[:, 0].tolist()) == {0, 1, 2} and (windows.diff(dim=1) == 1).all()
    assert train.Data(cfg, "val").random_batch(3, torch.Generator()).tolist() == [[0, 1, 2, 3]] * 3
    with pytest.raises(SystemExit, match="fewer than block_size = 4"):
        train.Data(cfg, "test")


def markov_dataset(root, length, n=100_000, seed=0):
    """A first-order Markov chain on 3 characters, started in its stationary law: a window of
    `length` tokens has entropy H(pi) + (length - 1) H(rate) bits exactly. Returns that per token,
    and the entropy per token of i.i.d. tokens with the same marginal (what a model ignoring
    context reaches)."""
    P = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.45, 0.45, 0.1]])
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(abs(w - 1))])
    pi /= pi.sum()
    H = lambda p: -(p * np.log2(p)).sum()
    rng, cum = np.random.default_rng(seed), P.cumsum(1)
    x, u = np.zeros(n, dtype=np.int64), rng.random(n)
    x[0] = np.searchsorted(pi.cumsum(), u[0])
    for i in range(1, n):
        x[i] = np.searchsorted(cum[x[i - 1]], u[i])
    meta = {"name": "markov", "tokenizer": "chars", "chars": list("abc"), "n_tokens": 3, "split": "90/5/5"}
    prepare.write_dataset(str(root / "markov"), char_splits(x, proportional(n)), meta)
    rate = sum(pi[i] * H(P[i]) for i in range(3))
    return (H(pi) + (length - 1) * rate) / length, H(pi)


@pytest.mark.parametrize("graph", ["absorb", "uniform", "ar"])
def test_training_reaches_the_entropy_of_a_known_source(graph, tmp_path, float32):
    """300 steps on a Markov source drive the val ELBO (an upper bound on the model's NLL, and so
    on the source's entropy), or the twin's exact NLL, to within 0.1 bits per token of the exact
    entropy, far below what ignoring the context gives: the loss weighting, the bound and the
    optimiser step agree."""
    entropy, iid = markov_dataset(tmp_path, 16)
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": str(tmp_path), "dataset": "markov", "block_size": 16,
           "batch_size": 32, "graph": "absorb" if graph == "ar" else graph, "ar": graph == "ar",
           "learning_rate": 3e-3, "warmup_iters": 20, "ema_decay": 0.99, "max_iters": 300, "eval_interval": 300,
           "log_interval": 100, "eval_batches": 16, "eval_n_t": 16, "out_dir": str(tmp_path / "out")}
    train.train(cfg)
    model = SEDD.from_pretrained(str(tmp_path / "out"))
    diffusion = None if graph == "ar" else get_graph(graph, 3)
    result = train.evaluate(model, diffusion, LogLinearNoise(), train.Data(cfg, "val"), cfg,
                            torch.device("cpu"), contextlib.nullcontext())
    assert iid - entropy > 0.3 and entropy - 3 * result["bits_se"] < result["bits"] < entropy + 0.1


@pytest.mark.parametrize("args, message", [
    (["--graph=absorbing"], r"--graph=absorbing is not one of \['absorb', 'uniform'\]"),
    (["--noise=cosine"], "--noise=cosine is not one of"),
    (["--dtype=float16"], "loss scaling"),
    (["--n_head=5"], "must divide --n_embd=768"),
    (["--n_embd=96", "--n_head=32"], "heads of even size"),
    (["--batch_size=0"], "--batch_size must be at least 1"),
    (["--init_from=checkpoint"], "init_from must be"),
    (["--device=tpu"], "unknown device 'tpu'"),
    pytest.param(["--device=cuda"], "no CUDA GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA here")),
    (["--dataset=text8"], r"prepare the dataset first with `python prepare.py text8`"),
    (["--init_from=resume"], "ckpt.pt does not exist"),
])
def test_train_mistakes_end_in_one_line(args, message, tmp_path, tiny_data):
    data = tiny_data if "--init_from=resume" in args else str(tmp_path)
    with pytest.raises(SystemExit, match=message) as e:
        train.train(train.load_config([f"--data_dir={data}", "--dataset=tiny", f"--out_dir={tmp_path}", *args]))
    assert isinstance(e.value.code, str) and e.value.code.count("\n") < 3  # printed, exit status 1


def test_command_line_help_warnings_and_errors(tmp_path, tiny_data, capsys, float32):
    """--help lists every setting with its default and comment; mistakes end in one line on stderr
    with exit status 1 and no traceback (checked on real processes once), in every tool."""
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=120)
    done = run("train.py", "--help")
    assert done.returncode == 0 and all(f"--{key}=" in done.stdout for key in train.DEFAULTS)
    assert "--sampling_eps=0.001" in done.stdout and "t ~ U[sampling_eps, 1]" in done.stdout
    done = run("train.py", "config/text8_tiny.py", f"--data_dir={tmp_path}")
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "prepare.py text8" in done.stderr
    train.load_config(["--max_iters=10", "--warmup_iters=100"])
    assert "warning: max_iters=10 < warmup_iters=100" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "--rounds=5" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="prepare the dataset first"):
        bench.main([f"--data_dir={tmp_path}"])
    SEDD(tiny(vocab_size=29, block_size=16)).save_pretrained(tmp_path / "ckpt", "absorb", {"type": "loglinear"})
    shutil.copy(os.path.join(tiny_data, "tiny", "meta.json"), tmp_path / "ckpt")
    for bad, msg in [(["--steps", "0"], "--steps must be at least 1"), (["--batch_size", "0"], "--batch_size must be"),
                     (["--device", "tpu"], "unknown device 'tpu'")]:
        with pytest.raises(SystemExit, match=msg):
            sampling.main(["--ckpt", str(tmp_path / "ckpt"), *bad])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    train.save_atomic({"step": 1}, path)
    real_save = torch.save

    def crash(obj, f):  # half-written, then the process dies
        real_save(obj, f)
        with open(f, "r+b") as handle:
            handle.truncate(10)
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train.save_atomic({"step": 2}, path)
    assert torch.load(path)["step"] == 1


def test_torchrun_matches_single_process(tiny_data, tmp_path):
    """2 gloo processes with one micro-batch each = 1 process accumulating both micro-batches."""
    cfg = {**TINY_RUN, "data_dir": tiny_data, "max_iters": 4, "eval_interval": 100, "log_interval": 2,
           "gradient_accumulation_steps": 2}
    args = [f"--{k}={v}" for k, v in cfg.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *cmd: subprocess.run(cmd, cwd=HERE, env=env, check=True, capture_output=True, timeout=300)
    run(sys.executable, "train.py", *args, f"--out_dir={tmp_path / 'one'}")
    run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
        *args, f"--out_dir={tmp_path / 'two'}")
    a, b = params(tmp_path / "one")[0], params(tmp_path / "two")[0]
    assert (a - b).norm() / a.norm() < 1e-6


def test_evaluator_is_loss_fn_plus_prior(tiny_data, float32):
    """train.evaluate = mean over sequences of loss_fn at elbo's stratified t (same RNG draws)
    plus the prior KL, in bits per token, with the standard error across sequences."""
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "eval_batches": 3, "eval_n_t": 4}
    torch.manual_seed(0)
    model = SEDD(SEDDConfig(vocab_size=29, n_embd=32, cond_dim=16, n_layer=1, n_head=2, block_size=32, dropout=0.0))
    with torch.no_grad():
        model.output_layer.linear.weight.normal_()  # a non-trivial score
    graph, noise, data = get_graph("absorb", 28), LogLinearNoise(), train.Data(cfg, "val")
    result = train.evaluate(model, graph, noise, data, cfg, torch.device("cpu"), contextlib.nullcontext())
    torch.manual_seed(cfg["seed"])
    nats = []
    for x0 in data.eval_batches(3 * 4, 4):
        total = torch.zeros(len(x0), dtype=torch.float64)
        for k in range(4):
            total += loss_fn(model, graph, noise, x0, t=(k + 1 - torch.rand(len(x0))) / 4).double()
        nats.append(total / 4 + 32 * graph.prior_kl(noise(torch.tensor(1.0, dtype=torch.float64))[0]).item())
    nats = torch.cat(nats)
    # float32 network outputs, averaged in float32 (elbo) vs float64 here: agreement to ~1e-7
    assert result["n"] == 12 and result["bits"] == pytest.approx(nats.mean().item() / (32 * math.log(2)), rel=1e-6)
    assert result["bits_se"] == pytest.approx(nats.std().item() / math.sqrt(12) / (32 * math.log(2)), rel=1e-5)
