"""The samplers proven (sampling.py): Euler and Tweedie tau-leaping and infilling against the exact
law of the sampler computed by enumeration, first hitting against the data law, the
categorical draw in float64, the steps' float32 arithmetic without host reads, and the
autoregressive twin's sampler. Float64 by default (conftest.py); CPU only.
"""
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from graph import Absorbing, Uniform
from noise import GeometricNoise, LogLinearNoise
from sampling import nucleus, sample, sample_ar, sample_categorical
from testing import ExactScore, all_sequences, correlated_data, expm, twin, twin_law

NOISES = [LogLinearNoise(), GeometricNoise()]

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


@pytest.mark.parametrize("noise", NOISES + [LogLinearNoise(eps=0.3)])
def test_first_hitting_reveals_at_the_right_times(noise):
    """A made-up score whose token law depends on the noise: at a masked position token 0 has
    probability m = 1 - e^{-sigma} (1 - m if the other position holds a 1). The exact law of the
    process, with m_1 = m(t=1) and reveal times m_1 u1^(1/2) then that times u2: the first token
    revealed is 0 with probability E[m_1 u1^(1/2)] = 2 m_1 / 3, and jointly
    P(0, 0) = E[p1 p2] = m_1^2 / 4, P(0, 1) = 2 m_1 / 3 - m_1^2 / 4, P(1, 1) = m_1 / 3 - m_1^2 / 4;
    the position revealed first is either, with probability 1/2. A sampler that evaluates the
    score at the wrong time (e.g. the time before the jump) draws another law; so does one whose
    clock runs in t instead of m, except for log-linear noise, where m is proportional to t, and
    one whose clock starts at m = 1, unless m_1 is close to 1 (eps = 0.3 makes it 0.7)."""
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


class Made(TorchDispatchMode):
    """Records every floating-point tensor that an operation makes, as (operation, dtype, shape),
    and counts the reads of a value on the host, on which a GPU would make the host wait: .item(),
    `if tensor`, and the selections by a boolean mask (their size is a count)."""

    def __init__(self):
        super().__init__()
        self.tensors, self.host_reads = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aten = torch.ops.aten
        indexing = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default)
        masks = args[1] if indexing else []
        self.host_reads += (func in (aten._local_scalar_dense.default, aten.nonzero.default)
                            or any(i is not None and i.dtype == torch.bool for i in masks))
        self.tensors += [(func.overloadpacket.__name__, t.dtype, t.shape) for t in tree_flatten(out)[0]
                         if torch.is_tensor(t) and t.is_floating_point()]
        return out

    @property
    def dtypes(self):
        return {dtype for _, dtype, _ in self.tensors}


def test_categorical_draws_in_float64_from_the_global_generator(float32):
    """Under training's default dtype (float32) and on a network's float32 probabilities, every
    floating-point tensor of the draw is float64, whichever way it is drawn (an exponential race,
    Gumbel-max, torch.multinomial): the test above computes what float32 costs, on events too
    rare (~2^-24 per entry) for a frequency test to see. The draw follows torch.manual_seed, as
    resumed runs and seeded samples need."""
    probs = torch.tensor([0.5, 0.25, 0.0, 0.25]).expand(4096, -1)
    with Made() as made:
        drawn = sample_categorical(probs)
    assert made.dtypes == {torch.float64}, \
        f"the draw made {sorted(map(str, made.dtypes))} tensors, not float64 only"
    assert drawn.dtype == torch.long and drawn.shape == (4096,) and not (drawn == 2).any()
    draw = lambda seed: (torch.manual_seed(seed), sample_categorical(probs))[1]
    assert torch.equal(draw(7), draw(7)) and not torch.equal(draw(7), draw(8))


@pytest.mark.parametrize("predictor", ["analytic", "euler"])
def test_absorbing_steps_in_float32_with_a_float64_draw_and_no_host_read(predictor):
    """The network's log-scores, here bf16 as autocast may leave them, reach exp in float32; over the
    vocabulary, the only float64 tensor of a step is the draw's running sum (see unmask); and no
    step reads a value on the host, so a GPU runs the steps back to back."""
    graph = Absorbing(40)
    log_score = torch.randn(2, 8, graph.dim, dtype=torch.bfloat16)
    model = lambda x, sigma: log_score.scatter(-1, x[..., None], 0.0)  # log 1 at the input token
    with Made() as made:
        x = sample(model, graph, LogLinearNoise(), (2, 8), 3, predictor)
    assert (x < graph.mask).all()
    vocabulary = [(op, dtype) for op, dtype, shape in made.tensors
                  if shape[-1:] in ((graph.dim,), (graph.n_tokens,))]  # [B, L, dim] or without MASK
    exp = {dtype for op, dtype in vocabulary if op == "exp"}
    assert exp == {torch.float32}, f"exp of the log-scores in {exp}, not float32"
    float64 = {op for op, dtype in vocabulary if dtype == torch.float64}
    assert float64 and float64 <= {"_to_copy", "cumsum", "cumsum_"}, f"float64 over the vocabulary: {float64}"
    assert made.host_reads == 0
