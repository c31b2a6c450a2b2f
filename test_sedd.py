"""The proofs: exact checks of every formula on tiny vocabularies, one section per file of the
code in its reading order (noise, graph, loss with the twin's likelihood, sampling with the twin's
sampler); the network itself is checked in test_model.py.

Exact checks run in float64 (conftest.py's default for tests) against torch.linalg.matrix_exp and
brute-force enumeration of all sequences (length <= 3, <= 6 tokens). Statistical checks compare
Monte Carlo averages with their exact values at a few standard errors, with fixed seeds. Models
are float32: tests that build one take the float32 fixture. CPU only, no network. The pipeline is
tested end to end in test_prepare.py, test_train.py and test_pipeline.py.
"""
import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graph import Absorbing, Uniform, get_graph
from loss import ar_nll, elbo, loss_fn, prior_loss, stratified_t
from model import SEDD, SEDDConfig
from noise import GeometricNoise, LogLinearNoise, get_noise
from sampling import nucleus, sample, sample_ar, sample_categorical
from testing import all_sequences, twin, twin_law

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


def assert_close(got, expected, atol, what):
    error = (got - expected).abs().max().item()
    assert error <= atol, f"{what}: off by {error:.3g} (tolerance {atol:g})\ngot {got}\nexpected {expected}"


def assert_mean(samples, expected, what):
    """A Monte Carlo mean within 4 standard errors of its exact value, saying both if not."""
    mean, se = samples.mean().item(), samples.std().item() / math.sqrt(len(samples))
    assert abs(mean - expected) < 4 * se, f"{what}: mean {mean:.5f}, expected {expected:.5f} +- {4 * se:.5f}"


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


# one noise level per sequence, as callers pass them; made at import, before the float64 fixture
SIGMAS = torch.tensor([[1e-4], [0.3], [2.0], [9.0]], dtype=torch.float64)


@pytest.mark.parametrize("graph_cls", GRAPHS)
def test_transition_closed_forms_match_matrix_exponential(graph_cls):
    """Sequence b of the batch holds every token once (MASK too) at its own noise SIGMAS[b]."""
    graph = graph_cls(5)
    x = torch.arange(graph.dim).expand(len(SIGMAS), -1)
    columns, rows = graph.transition(x, SIGMAS), graph.transp_transition(x, SIGMAS)
    for b, sigma in enumerate(SIGMAS[:, 0]):
        E = expm(graph, sigma)
        assert_close(columns[b], E.T, 1e-14,
                     f"transition at sigma={sigma:g}, row k = column k of exp(sigma Q)")
        assert_close(rows[b], E, 1e-14,
                     f"transp_transition at sigma={sigma:g}, row k = row k of exp(sigma Q)")


@pytest.mark.parametrize("graph_cls", GRAPHS)
def test_staggered_score_closed_form(graph_cls):
    graph = graph_cls(5)
    score = torch.rand(len(SIGMAS), graph.dim, graph.dim) + 0.1  # sequence b: dim positions at SIGMAS[b]
    staggered = graph.staggered_score(score, SIGMAS)
    for b, sigma in enumerate(SIGMAS[:, 0]):
        expected = score[b] @ expm(graph, -sigma).T
        tolerance = 1e-14 * expected.abs().max().item()  # e^delta_sigma makes entries of ~1e4
        assert_close(staggered[b], expected, tolerance, f"staggered_score at delta_sigma={sigma:g}")


@pytest.mark.parametrize("graph_cls", GRAPHS)
def test_reverse_rate_closed_form(graph_cls):
    graph = graph_cls(5)
    x = torch.arange(graph.dim)[None]
    score = torch.rand(1, graph.dim, graph.dim) + 0.1
    Q = graph.rate_matrix()
    rates = graph.reverse_rate(x, score)[0]
    for k in range(graph.dim):
        expected = score[0, k] * Q[k]
        expected[k] = 0.0
        expected[k] = -expected.sum()
        assert_close(rates[k], expected, 1e-14, f"reverse rates out of token {k}")


@pytest.mark.parametrize("graph_cls", GRAPHS)
def test_sampling_frequencies_match_transition(graph_cls):
    torch.manual_seed(0)
    graph, n = graph_cls(4), 200_000
    x0 = torch.full((n, 1), 2)
    sigma = torch.full((n, 1), 0.7)
    freq = torch.bincount(graph.sample_transition(x0, sigma).reshape(-1), minlength=graph.dim) / n
    p = graph.transition(x0[:1], sigma[:1])[0, 0]
    assert_close(freq, p, 4 * math.sqrt(0.25 / n), "frequencies of sample_transition against transition")
    limit = graph.sample_limit(n, 1).reshape(-1)
    freq = torch.bincount(limit, minlength=graph.dim) / n
    base = torch.zeros(graph.dim)
    if graph_cls is Absorbing:
        base[graph.mask] = 1.0
    else:
        base[:] = 1.0 / graph.dim
    assert_close(freq, base, 4 * math.sqrt(0.25 / n), "frequencies of sample_limit against the base law")


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
def test_score_entropy_definition_and_consistency(graph_cls):
    """Equals its definition (Def. 3.1 with Q weights), is >= 0, and is 0 at the true ratios
    (Prop. 3.2). Each sequence holds every pair (x_t, x0), at its own noise level."""
    torch.manual_seed(1)
    graph = graph_cls(4)
    pairs = [(x_t, x0) for x_t in range(graph.dim) for x0 in range(4)]
    sigmas = torch.tensor([[1e-3], [0.5], [4.0]])
    x_t = torch.tensor([a for a, _ in pairs]).expand(len(sigmas), -1)
    x0 = torch.tensor([b for _, b in pairs]).expand(len(sigmas), -1)
    log_score = torch.randn(len(sigmas), len(pairs), graph.dim)
    got = graph.score_entropy(log_score, sigmas, x_t, x0)
    p = graph.transition(x0, sigmas)  # true ratios r_y = p(y|x0) / p(x_t|x0) where p(x_t|x0) > 0
    possible = p.gather(-1, x_t[..., None])[..., 0] > 0
    for b, sigma in enumerate(sigmas[:, 0].tolist()):
        for k, (a, c) in enumerate(pairs):
            if possible[b, k]:
                expected = brute_score_entropy(graph, log_score[b, k], sigma, a, c)
                assert torch.isclose(got[b, k], expected, rtol=1e-10), \
                    (f"x_t={a}, x0={c}, sigma={sigma}: got {got[b, k]:.10g}, "
                     f"the definition gives {expected:.10g}")
    assert (got >= 0).all() and got.max() > 0, f"score entropy must be >= 0, got a minimum of {got.min():.3g}"
    true_log = p.log() - p.gather(-1, x_t[..., None]).log()
    at_optimum = graph.score_entropy(true_log.clamp(min=-200), sigmas, x_t, x0)
    assert at_optimum[possible].abs().max() < 1e-12, \
        f"not 0 at the true ratios: {at_optimum[possible].abs().max():.3g}"


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
        near = ((p.log() - p.gather(-1, x_t[..., None]).log()).clamp(min=-80)
                + 1e-3 * torch.randn(B, L, graph.dim))
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
        p_states = (graph.transition(x0[None].expand_as(states), sigma.expand(len(states), 1))
                    .gather(-1, states[..., None]).prod(1)[:, 0])
        se = graph.score_entropy(exact(states, sigma.expand(len(states))), sigma, states,
                                 x0[None].expand_as(states)).sum(-1)
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
def test_loss_fn_is_unbiased(graph_cls):
    torch.manual_seed(3)
    graph, noise = graph_cls(3), LogLinearNoise()
    exact = ExactScore(graph, correlated_data(3, 2))
    x0 = torch.tensor([1, 2])
    dwdse = exact_dwdse(graph, noise, exact, x0)
    batch = x0[None].repeat(20_000, 1)
    assert_mean(loss_fn(exact, graph, noise, batch, sampling_eps=0.0), dwdse, "DWDSE with sampling_eps=0")
    # the default sampling_eps estimates the integral over [1e-3, 1] / (1 - 1e-3)
    truncated = dwdse - exact_dwdse(graph, noise, exact, x0, t_max=1e-3)
    assert_mean(loss_fn(exact, graph, noise, batch), truncated / (1 - 1e-3), "DWDSE with sampling_eps=1e-3")


class Recorder:
    """Calls a score model and keeps what it was called with."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x_t, sigma):
        self.calls.append((x_t.clone(), sigma.clone()))
        return self.model(x_t, sigma)


@pytest.mark.parametrize("graph_cls,noise", [(Absorbing, LogLinearNoise()), (Uniform, GeometricNoise())])
def test_loss_fn_with_given_t_and_x_t(graph_cls, noise):
    """Algorithm 1 with its randomness given: one network call at (x_t, sigma_bar(t)), weighted
    by the rate dsigma(t) (not sigma, not rescaled), summed over positions, per sequence."""
    graph = graph_cls(3)
    exact = ExactScore(graph, correlated_data(3, 2))
    x0 = torch.tensor([[1, 2], [0, 0], [2, 1], [1, 1]])
    x_t = torch.tensor([[1, 0], [graph.dim - 1, 0], [2, 2], [graph.dim - 1, graph.dim - 1]])
    t = torch.tensor([0.9, 0.05, 0.5, 0.99])
    model = Recorder(exact)
    got = loss_fn(model, graph, noise, x0, t=t, x_t=x_t)
    sigma, dsigma = noise(t)
    assert len(model.calls) == 1, f"the network is called once per loss, not {len(model.calls)} times"
    assert torch.equal(model.calls[0][0], x_t), "the network must see the given x_t"
    assert torch.allclose(model.calls[0][1].reshape(-1), sigma), \
        "the network must see sigma_bar(t) of the given t"
    expected = dsigma * graph.score_entropy(exact(x_t, sigma), sigma[:, None], x_t, x0).sum(-1)
    assert_close(got, expected, 1e-12, "dsigma(t) * sum over positions of score_entropy")


def test_loss_fn_draws_t_in_its_range():
    """Without a given t, t ~ U[sampling_eps, 1] per sequence (read back from the noise level the
    network sees: the log-linear schedule gives t = (1 - e^-sigma) / (1 - eps))."""
    torch.manual_seed(8)
    graph, noise, n = Absorbing(3), LogLinearNoise(), 4000
    model = Recorder(ExactScore(graph, correlated_data(3, 2)))
    loss_fn(model, graph, noise, torch.zeros(n, 2, dtype=torch.long), sampling_eps=0.5)
    t = -torch.expm1(-model.calls[0][1].reshape(-1)) / (1 - noise.eps)
    assert len(t) == n and len(t.unique()) == n, "one t per sequence"
    assert t.min() >= 0.5 and t.max() <= 1, f"t in [{t.min():.4f}, {t.max():.4f}], expected within [0.5, 1]"
    assert_mean(t, 0.75, "t, expected uniform on [0.5, 1]")


@pytest.mark.parametrize("graph_cls", GRAPHS)
def test_elbo_is_unbiased_with_its_prior_term(graph_cls):
    """A schedule that leaves much of the data at t = 1 (eps = 0.3) makes the prior term large."""
    torch.manual_seed(3)
    graph, noise = graph_cls(3), LogLinearNoise(eps=0.3)
    exact = ExactScore(graph, correlated_data(3, 2))
    x0 = torch.tensor([1, 2])
    bound = exact_dwdse(graph, noise, exact, x0) + prior_loss(graph, noise, 2)
    assert prior_loss(graph, noise, 2) > 0.1
    assert_mean(elbo(exact, graph, noise, x0[None].repeat(2000, 1), n_t=8), bound, "ELBO = DWDSE + prior")


def test_elbo_stratifies_t_per_sequence():
    """n_t times per sequence, one in each interval ((k - 1) / n_t, k / n_t] (read back from the
    noise levels the network sees)."""
    torch.manual_seed(9)
    graph, noise, n_t = Absorbing(3), LogLinearNoise(), 8
    model = Recorder(ExactScore(graph, correlated_data(3, 2)))
    elbo(model, graph, noise, torch.zeros(500, 2, dtype=torch.long), n_t=n_t)
    sigma = torch.cat([s.reshape(-1, 1) for _, s in model.calls], dim=1)  # [500, n_t]
    t = -torch.expm1(-sigma) / (1 - noise.eps)
    strata = torch.ceil(t * n_t).sort(-1).values - 1
    assert torch.equal(strata, torch.arange(n_t).double().expand_as(strata)), \
        (f"each sequence needs one t in each of the {n_t} intervals; "
         f"the first sequence's t: {t[0].sort().values}")


def test_ar_nll_is_the_exact_likelihood():
    """A causal 'network' that is a Markov chain (the law of x^i given the token before it, BOS
    before x^0): ar_nll is -log of the chain's probability, and exp(-ar_nll) sums to 1 over all
    sequences."""
    n_tokens, bos = 3, 3
    logits = torch.randn(n_tokens + 1, n_tokens + 1, generator=torch.Generator().manual_seed(0))
    chain = lambda inputs: logits[inputs]  # [B, L] -> [B, L, n_tokens + 1]: reads token i only
    xs = all_sequences(n_tokens, 3)
    law = logits[:, :n_tokens].softmax(-1)  # BOS is never a next token
    expected = law[bos, xs[:, 0]] * law[xs[:, 0], xs[:, 1]] * law[xs[:, 1], xs[:, 2]]
    got = torch.exp(-ar_nll(chain, xs, bos))
    assert_close(got, expected, 1e-12, "exp(-ar_nll), the probability of each sequence")
    assert got.sum().item() == pytest.approx(1.0, abs=1e-12), \
        f"the probabilities sum to {got.sum():.6f}, not 1"


@pytest.mark.parametrize("n,sampling_eps", [(1, 1e-3), (8, 1e-3), (64, 0.5)])
def test_stratified_t_covers_each_stratum_once(n, sampling_eps):
    """Each batch has one t in each of the n strata of [sampling_eps, 1]; each position's t is
    U[sampling_eps, 1], not tied to a stratum."""
    generator = torch.Generator().manual_seed(0)
    t = torch.stack([stratified_t(n, sampling_eps, generator) for _ in range(4000)])  # [4000, n]
    u = (t - sampling_eps) / (1 - sampling_eps)
    assert u.min() >= 0 and u.max() <= 1, f"t in [{t.min():.4f}, {t.max():.4f}], expected [{sampling_eps}, 1]"
    strata = (u * n).floor().clamp(max=n - 1).sort(-1).values
    assert torch.equal(strata, torch.arange(n).double().expand_as(strata)), \
        f"strata of one batch: {strata[0]}"
    for position in (0, n - 1):
        assert_mean(u[:, position], 0.5, f"the t of position {position}, mapped to [0, 1]")


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


def test_loss_at_initialisation(float32):
    """At init the absorbing model is the score of a uniform law on the N real tokens; the
    expected loss is then exactly L (1 - eps) ln N for every t: model, loss and weighting agree."""
    torch.manual_seed(0)
    model = SEDD(SEDDConfig(vocab_size=28, n_embd=32, cond_dim=16, n_layer=1, n_head=2, block_size=64,
                            dropout=0.0))
    losses = loss_fn(model, Absorbing(27), LogLinearNoise(), torch.randint(27, (512, 64)))
    assert_mean(losses, 64 * (1 - 1e-3) * math.log(27), "loss at initialisation, L (1 - eps) ln N")


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


def assert_tv(frequencies, law, bound):
    distance = tv(frequencies, law)
    assert distance < bound, \
        f"total variation {distance:.4f} between the samples and the exact law, expected < {bound:.4f}"


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
    assert_tv(empirical(x, 3), law, math.sqrt(9 / n))  # 0.021 (observed 0.004 to 0.008)
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
    assert_tv(empirical(x, 3), law, math.sqrt(9 / n))  # 9 outcomes of the 2 free tokens
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
    assert_tv(empirical(x, 3), p_data, math.sqrt(27 / n))  # 0.037 (observed ~0.01)
    x = sample(ExactScore(graph, p_data), graph, noise, (n, 3), None, "first_hitting", prompt={1: 2},
               stats=stats)
    true = torch.zeros_like(p_data)
    true[:, 2] = p_data[:, 2] / p_data[:, 2].sum()
    assert (x[:, 1] == 2).all() and stats["network_evals"] == 2
    assert_tv(empirical(x, 3), true, math.sqrt(9 / n))
    with pytest.raises(ValueError, match="does not apply to the uniform graph"):
        sample(ExactScore(Uniform(3), p_data), Uniform(3), noise, (4, 3), None, "first_hitting")


@pytest.mark.parametrize("noise", NOISES)
def test_first_hitting_reveals_at_the_right_times(noise):
    """A made-up score whose token law depends on the noise: at a masked position token 0 has
    probability m = 1 - e^{-sigma} (1 - m if the other position holds a 1). The exact law of the
    process, with m_1 = m(t=1) and reveal times m_1 u1^(1/2) then that times u2: the first token
    revealed is 0 with probability E[m_1 u1^(1/2)] = 2 m_1 / 3, and jointly
    P(0, 0) = E[p1 p2] = m_1^2 / 4, P(0, 1) = 2 m_1 / 3 - m_1^2 / 4, P(1, 1) = m_1 / 3 - m_1^2 / 4;
    the position revealed first is either, with probability 1/2. A sampler that evaluates the
    score at the wrong time (e.g. the time before the jump) draws another law; so does one whose
    clock runs in t instead of m, except for log-linear noise, where m is proportional to t."""
    def score(x, sigma):
        m = -torch.expm1(-sigma.double())[:, None]
        other = x.flip(1)  # the other position's token
        p0 = torch.where(other == 1, 1 - m, m)
        return torch.stack([p0, 1 - p0, torch.ones_like(p0)], dim=-1).log()
    n = 200_000
    m1 = -math.expm1(-noise(torch.tensor(1.0))[0].item())
    first = torch.tensor([[m1 ** 2 / 4, 2 * m1 / 3 - m1 ** 2 / 4],
                          [1 - m1 + m1 ** 2 / 4, m1 / 3 - m1 ** 2 / 4]])
    law = (first + first.T) / 2  # law[a, b]: first revealed a then b, at either position
    torch.manual_seed(6)
    x = sample(score, Absorbing(2), noise, (n, 2), None, "first_hitting")
    assert_tv(empirical(x, 2), law, math.sqrt(4 / n))
    assert tv(law, torch.full((2, 2), 0.25)) > 0.1


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
    assert torch.equal(nucleus(probs, 0.7), torch.tensor([[0.0, 0.5, 0.0, 0.25]]))
    assert torch.equal(nucleus(probs, 0.5), torch.tensor([[0.0, 0.5, 0.0, 0.0]]))
    assert torch.equal(nucleus(probs, 1.0), probs)


def test_categorical_sampling_float64_and_float32():
    torch.manual_seed(4)
    assert inspect.signature(sample).parameters["dtype"].default is torch.float64
    assert inspect.signature(sample_categorical).parameters["dtype"].default is torch.float64
    # float64: a low-entropy law with a long tail (1000 tokens of 1e-4 each) is sampled exactly
    # (times 3: the race needs no normalisation; token 1 negative: clamped to 0, never drawn)
    probs = torch.cat([torch.tensor([0.9, -1e-4]), torch.full((999,), 1e-4)]).expand(10_000, -1)
    x = sample_categorical(3 * probs)
    tail = (x > 0).double().mean().item()
    assert abs(tail - 0.0999 / 0.9999) < 4 * math.sqrt(0.1 * 0.9 / 10_000), \
        (f"share of the tail {tail:.4f}, expected {0.0999 / 0.9999:.4f} "
         f"+- {4 * math.sqrt(0.1 * 0.9 / 10_000):.4f}")
    assert not (x == 1).any(), "a token of negative probability was drawn"
    # float32 and float64 differ on events of probability ~2^-24 per entry (~1e9 Monte Carlo draws),
    # so measured exactly: float32 torch.rand returns multiples of 2^-24 (checked); enumerating all
    # 2^24 values of the leader's uniform, and the largest of the rare token's, gives the float32
    # law of the race for p = [1, r].
    u = torch.rand(10**6, dtype=torch.float32)
    assert torch.equal(u * 2**24, (u * 2**24).round())
    grid = (torch.arange(2**24, dtype=torch.float64).div(2**24).float()
            .clamp(min=torch.finfo(torch.float32).tiny))
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
