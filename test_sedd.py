"""The proofs: exact checks of every formula on tiny vocabularies, one section per file of the
code in its reading order (noise, graph, loss with the twin's likelihood); the samplers are proven
in test_sampling.py, the network in test_model.py.

Exact checks run in float64 (conftest.py's default for tests) against torch.linalg.matrix_exp and
brute-force enumeration of all sequences (length <= 3, <= 6 tokens). Statistical checks compare
Monte Carlo averages with their exact values at a few standard errors, with fixed seeds. Models
are float32: tests that build one take the float32 fixture. CPU only, no network. The pipeline is
tested end to end in test_prepare.py, test_step.py, test_train.py and test_pipeline.py.
"""
import math

import numpy as np
import pytest
import torch

from graph import Absorbing, Uniform, get_graph
from loss import ar_nll, elbo, loss_fn, prior_loss, stratified_t
from model import SEDD, SEDDConfig
from noise import GeometricNoise, LogLinearNoise, get_noise
from testing import ExactScore, all_sequences, correlated_data, expm

GRAPHS = [Absorbing, Uniform]
NOISES = [LogLinearNoise(), GeometricNoise()]


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
    """dsigma against a central finite difference of sigma_bar (float64, step 1e-6: off by < 1e-8
    relative), across (0, 1), for a batch of t [B] as training passes and [B, 1]."""
    t, h = torch.linspace(0.01, 0.99, 50), 1e-6
    sigma, dsigma = noise(t)
    numeric = (noise(t + h)[0] - noise(t - h)[0]) / (2 * h)
    assert_close(dsigma / numeric, torch.ones_like(t), 1e-7, "dsigma / finite difference of sigma_bar")
    assert sigma.shape == dsigma.shape == t.shape and (dsigma > 0).all()
    assert noise(t[:, None])[1].shape == (50, 1)


def test_noise_schedules_at_their_ends_and_between():
    """sigma_bar at t = 0, 1 and in between, as a scalar (the samplers' t = 1) and as [B, 1]."""
    loglinear, geometric = get_noise("loglinear", eps=1e-3), get_noise("geometric")
    ts = [0.0, 0.1, 0.5, 0.9, 1.0]
    t = torch.tensor(ts)[:, None]
    expected = torch.tensor([-math.log(1 - (1 - 1e-3) * s) for s in ts])[:, None]
    assert_close(loglinear(t)[0], expected, 1e-12, "log-linear sigma_bar = -log(1 - (1 - eps) t)")
    expected = torch.tensor([1e-4 ** (1 - s) * 20.0 ** s for s in ts])[:, None]  # 0.0447 at t = 0.5
    assert_close(geometric(t)[0] / expected, torch.ones_like(t), 1e-12,
                 "geometric sigma_bar = sigma_min^(1 - t) sigma_max^t (relative)")
    for noise in (loglinear, geometric):
        sigma, dsigma = noise(torch.tensor(1.0))
        assert sigma.shape == dsigma.shape == ()
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


@pytest.mark.parametrize("graph_cls,noise", [(Absorbing, LogLinearNoise()), (Uniform, GeometricNoise())])
def test_loss_fn_gradient_is_the_derivative_of_its_value(graph_cls, noise):
    """Training differentiates the loss: its gradient with respect to a parameter of the network
    (here a weight w on the log-score) is the finite difference of its value."""
    graph = graph_cls(3)
    exact = ExactScore(graph, correlated_data(3, 2))
    x0 = torch.tensor([[1, 2], [0, 0], [2, 1]])
    x_t = torch.tensor([[1, 0], [graph.dim - 1, 0], [2, graph.dim - 1]])
    t = torch.tensor([0.9, 0.05, 0.5])
    loss = lambda w: loss_fn(lambda x, sigma: w * exact(x, sigma), graph, noise, x0, t=t, x_t=x_t).sum()
    w, h = torch.tensor(0.8, requires_grad=True), 1e-6
    value = loss(w)
    assert value.requires_grad, "the loss carries no gradient: was it computed under torch.no_grad()?"
    (grad,) = torch.autograd.grad(value, w)
    with torch.no_grad():
        numeric = (loss(w + h) - loss(w - h)) / (2 * h)
    assert grad.item() == pytest.approx(numeric.item(), rel=1e-6)


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
