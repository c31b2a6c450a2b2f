"""The proofs: exact checks of every formula on tiny vocabularies, then end-to-end smoke runs.

Exact checks run in float64 against torch.linalg.matrix_exp and brute-force enumeration of
all sequences (length <= 3, <= 6 tokens). Statistical checks compare Monte Carlo averages
with their exact values at a few standard errors, with fixed seeds.
"""
import itertools
import math

import numpy as np
import pytest
import torch

from graph import Absorbing, Uniform, get_graph
from loss import elbo, loss_fn, prior_loss
from noise import GeometricNoise, LogLinearNoise, get_noise

torch.set_default_dtype(torch.float64)
GRAPHS = [Absorbing, Uniform]
NOISES = [LogLinearNoise(), GeometricNoise()]


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

    def marginal(self, sigma):
        p, K = self.p_data, expm(self.graph, sigma)
        for axis in range(self.L):
            p = torch.movedim(torch.tensordot(K, p, dims=([1], [axis])), 0, axis)
        return p

    def __call__(self, x_t, sigma):
        self.calls += 1
        sigma = sigma.reshape(-1)
        dim, L = self.graph.dim, self.L
        place = dim ** torch.arange(L - 1, -1, -1)
        flat = (x_t * place).sum(-1)
        y = torch.arange(dim)
        neighbours = flat[:, None, None] + (y[None, None, :] - x_t[:, :, None]) * place[None, :, None]
        out = torch.empty(*x_t.shape, dim)
        for s in sigma.unique():
            rows = sigma == s
            log_p = self.marginal(s).reshape(-1).log()
            out[rows] = log_p[neighbours[rows]] - log_p[flat[rows]][:, None, None]
        return out


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
