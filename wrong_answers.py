"""Wrong answers to the exercises of EXERCISES.md, as students write them: each one slip in one
function; and right answers written another way than the project's. Read one only after writing
your own answer.

The course checks itself with them (test_exercises.py): every exercise's Check must fail on
each wrong answer registered here for its functions, as it must on an empty one, and pass on each
right one. For one pytest run, NANOSEDD_WRONG=name (or NANOSEDD_RIGHT=name) puts the answer
`name` in place of the function it is registered for (conftest.py does it), e.g.

    NANOSEDD_WRONG=uniform_jump_never_lands_on_itself python -m pytest test_sedd.py -k "transition_closed"

Many are a call of the right function with one argument changed: the slip and nothing else.
The right functions are bound here when this module is imported, before any replacement, and
conftest.py never rebinds this module's names.
"""
import math

import torch
import torch.nn.functional as F

from graph import Absorbing, Uniform, phi
from loss import elbo, loss_fn, prior_loss
from model import norm_modulate
from sampling import first_hitting, sample_categorical

absorbing_score_entropy = Absorbing.score_entropy
uniform_score_entropy = Uniform.score_entropy
WRONG = {}  # name -> ("file.py Name" it stands in for, the wrong function)
RIGHT = {}  # name -> ("file.py Name", a right answer written another way, which its Check must pass)


def register(registry, target):
    def add(function):
        registry[function.__name__] = (target, function)
        return function
    return add


def wrong(target):
    return register(WRONG, target)


def right(target):
    return register(RIGHT, target)


# ---------------------------------------------------------------- Exercise 1: noise schedules

@wrong("noise.py GeometricNoise.__call__")
def geometric_rate_of_the_wrong_function(self, t):
    """The typical wrong answer: dsigma = sigma_max^t log(sigma_max)."""
    sigma = self.sigma_min ** (1 - t) * self.sigma_max ** t
    return sigma, self.sigma_max ** t * math.log(self.sigma_max)


@wrong("noise.py GeometricNoise.__call__")
def geometric_interpolated_linearly(self, t):
    """sigma_bar linear between its ends, dsigma its slope: right at t = 0 and 1, and the rate is
    the derivative, but at t = 0.5 it is 10.0 where the schedule is 0.045."""
    return self.sigma_min + (self.sigma_max - self.sigma_min) * t, torch.full_like(t, self.sigma_max - self.sigma_min)


# ---------------------------------------------------------------- Exercise 2: transitions

@wrong("graph.py Uniform.transition")
def uniform_jump_never_lands_on_itself(self, x0, sigma):
    """The typical wrong answer: p(x0 | x0) = e^-sigma, as if a jump never redrew x0 itself."""
    sigma = sigma.unsqueeze(-1)
    one_hot = self.one_hot(x0, sigma)
    return one_hot * torch.exp(-sigma) - (1 - one_hot) * torch.expm1(-sigma) / self.dim


@wrong("graph.py Uniform.transition")
def uniform_transition_sigma_not_broadcast(self, x0, sigma):
    """A batch-shape slip: sigma [B, 1] gets no axis for the vocabulary (right only for B = 1)."""
    return self.one_hot(x0, sigma) * torch.exp(-sigma) - torch.expm1(-sigma) / self.dim


@wrong("graph.py Absorbing.transition")
def absorbing_transition_sigma_not_broadcast(self, x0, sigma):
    """The same slip in the absorbing graph."""
    p = self.one_hot(x0, sigma) * torch.exp(-sigma)
    p[..., self.mask] -= torch.expm1(-sigma)
    return p


# ---------------------------------------------------------------- Exercise 3: score entropy

@wrong("graph.py Uniform.score_entropy")
def uniform_score_entropy_also_over_x_t(self, log_score, sigma, x_t, x0):
    """The typical wrong answer: y = x_t summed too, with weight Q[x_t, x_t] = 1/N - 1 and
    r = 1 there, i.e. an extra (1/N - 1) phi(log s_{x_t})."""
    log_s_x_t = log_score.gather(-1, x_t.unsqueeze(-1)).squeeze(-1)
    return uniform_score_entropy(self, log_score, sigma, x_t, x0) + (1 / self.dim - 1) * phi(log_s_x_t)


@wrong("graph.py Absorbing.score_entropy")
def absorbing_score_entropy_transposed_rates(self, log_score, sigma, x_t, x0):
    """The other typical wrong answer: Q[y, x_t] for Q[x_t, y]. A real token then 'receives' from
    MASK, with r = p(MASK | x0) / p(x0 | x0) = e^sigma - 1, and a masked one from nothing."""
    log_r = torch.log(torch.expm1(sigma))
    entropy = torch.exp(log_r) * phi(log_score[..., self.mask] - log_r)
    return torch.where(x_t == self.mask, 0.0, entropy)


@wrong("graph.py Absorbing.score_entropy")
def absorbing_score_entropy_one_sigma_per_batch(self, log_score, sigma, x_t, x0):
    """A batch-shape slip: the first sequence's noise level used for the whole batch."""
    return absorbing_score_entropy(self, log_score, sigma.flatten()[0], x_t, x0)


# ---------------------------------------------------------------- Exercise 4: staggered score

@wrong("graph.py Absorbing.staggered_score")
def absorbing_staggered_score_transposed(self, score, delta_sigma):
    """The typical wrong answer: exp(-delta_sigma Q) transposed, so MASK's score leaks into every
    token's instead of every token's into MASK's."""
    delta_sigma = delta_sigma.unsqueeze(-1)
    out = score * torch.exp(delta_sigma) - torch.expm1(delta_sigma) * score[..., self.mask:]
    out[..., self.mask] = score[..., self.mask]
    return out


@wrong("graph.py Uniform.staggered_score")
def uniform_staggered_score_sigma_not_broadcast(self, score, delta_sigma):
    """A batch-shape slip: delta_sigma [B, 1] gets no axis for the vocabulary."""
    return score * torch.exp(delta_sigma) - torch.expm1(delta_sigma) * score.sum(-1, keepdim=True) / self.dim


# ---------------------------------------------------------------- Exercise 5: the DWDSE loss

@wrong("loss.py loss_fn")
def loss_weighted_by_sigma(model, graph, noise, x0, t=None, x_t=None, sampling_eps=1e-3):
    """The typical wrong answer: the total noise sigma weights the loss, not its rate dsigma."""
    sigma_twice = lambda t: (noise(t)[0], noise(t)[0])
    return loss_fn(model, graph, sigma_twice, x0, t, x_t, sampling_eps)


@wrong("loss.py loss_fn")
def loss_ignores_the_given_t(model, graph, noise, x0, t=None, x_t=None, sampling_eps=1e-3):
    return loss_fn(model, graph, noise, x0, None, x_t, sampling_eps)


@wrong("loss.py loss_fn")
def loss_ignores_the_given_x_t(model, graph, noise, x0, t=None, x_t=None, sampling_eps=1e-3):
    return loss_fn(model, graph, noise, x0, t, None, sampling_eps)


@wrong("loss.py loss_fn")
def loss_draws_t_from_zero(model, graph, noise, x0, t=None, x_t=None, sampling_eps=1e-3):
    """t ~ U[0, 1]: sampling_eps forgotten."""
    if t is None:
        t = torch.rand(x0.shape[0], device=x0.device)
    return loss_fn(model, graph, noise, x0, t, x_t, sampling_eps)


@wrong("loss.py loss_fn")
def loss_rescaled_twice(model, graph, noise, x0, t=None, x_t=None, sampling_eps=1e-3):
    """Divided by 1 - sampling_eps, though t ~ U[sampling_eps, 1] already estimates the mean."""
    return loss_fn(model, graph, noise, x0, t, x_t, sampling_eps) / (1 - sampling_eps)


@wrong("loss.py loss_fn")
@torch.no_grad()
def loss_without_a_gradient(model, graph, noise, x0, t=None, x_t=None, sampling_eps=1e-3):
    """Computed under torch.no_grad(), as an evaluation is: the right value, nothing to train on."""
    return loss_fn(model, graph, noise, x0, t, x_t, sampling_eps)


# ---------------------------------------------------------------- Exercise 6: the ELBO

@wrong("loss.py elbo")
def elbo_without_the_prior(model, graph, noise, x0, n_t=128):
    """The typical wrong answer: the prior term KL(p_{1|0} || p_base) dropped."""
    return elbo(model, graph, noise, x0, n_t) - prior_loss(graph, noise, x0.shape[1])


@wrong("loss.py elbo")
@torch.no_grad()
def elbo_unstratified(model, graph, noise, x0, n_t=128):
    """n_t independent uniform t in (0, 1] per sequence: unbiased, but not stratified."""
    estimates = [loss_fn(model, graph, noise, x0, t=1 - torch.rand(x0.shape[0], device=x0.device))
                 for _ in range(n_t)]
    return torch.stack(estimates).mean(0) + prior_loss(graph, noise, x0.shape[1])


# ---------------------------------------------------------------- Exercise 7: the twin's likelihood

@wrong("loss.py ar_nll")
def ar_nll_without_bos(model, x0, bos):
    """The typical wrong answer: no BOS, so the first token is never scored."""
    logits = model(x0)[:, :-1, :bos]
    return F.cross_entropy(logits.transpose(1, 2), x0[:, 1:], reduction="none").sum(-1)


# ---------------------------------------------------------------- Exercises 8 and 9: the network

@wrong("model.py apply_rotary")
def rotary_on_interleaved_pairs(x, cos, sin):
    """The typical wrong answer: pairs (2d, 2d + 1) rotated, not the official (d, d + head_dim / 2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return x * cos + torch.stack((-x2, x1), dim=-1).flatten(-2) * sin


@wrong("model.py apply_rotary")
def rotary_halves_joined_on_the_first_axis(x, cos, sin):
    """torch.cat without dim: right for one vector, wrong for the network's [B, L, 2, heads, d]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1)) * sin


@wrong("model.py norm_modulate")
def modulation_by_scale_not_one_plus_scale(norm, x, shift, scale):
    """The typical wrong answer: LayerNorm(x) * scale + shift, so a zero modulation is not the identity."""
    return norm_modulate(norm, x, shift, scale - 1)


# ---------------------------------------------------------------- Exercises 10 and 11: sampling

@wrong("sampling.py sample_categorical")
def categorical_on_float32_uniforms(probs, dtype=torch.float64):
    """The typical wrong answer: the race run on float32 uniforms."""
    return sample_categorical(probs, torch.float32)


@wrong("sampling.py sample_categorical")
def categorical_on_uniforms_of_the_default_dtype(probs, dtype=torch.float64):
    """torch.rand without a dtype: float64 under the tests' default, float32 in training."""
    probs = probs.to(dtype).clamp(min=0)
    return (probs / -torch.rand(probs.shape).log()).argmax(-1)


@right("sampling.py sample_categorical")
def categorical_by_multinomial(probs, dtype=torch.float64):
    """torch.multinomial on float64 probabilities (it normalises each row itself)."""
    probs = probs.to(dtype).clamp(min=0)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])


@right("sampling.py sample_categorical")
def categorical_race_on_log1p(probs, dtype=torch.float64):
    """The race with E = -log(1 - u): 1 - u is uniform too."""
    probs = probs.to(dtype).clamp(min=0)
    return (probs / -torch.log1p(-torch.rand(probs.shape, dtype=dtype))).argmax(-1)


@wrong("sampling.py first_hitting")
def first_hitting_scored_before_the_jump(model, graph, noise, B, L, positions, tokens, dtype, device, *rest):
    """The typical wrong answer: the token drawn from the score at the noise level before the jump."""
    previous = [noise(torch.tensor(1.0, dtype=dtype, device=device))[0].expand(B)]

    def one_level_late(x, sigma):
        log_score = model(x, previous[0])
        previous[0] = sigma
        return log_score
    return first_hitting(one_level_late, graph, noise, B, L, positions, tokens, dtype, device, *rest)


@wrong("sampling.py first_hitting")
def first_hitting_clock_in_t(model, graph, noise, B, L, positions, tokens, dtype, device, *rest):
    """The clock run in t (t <- t u^(1/k), sigma = sigma_bar(t)) instead of in m = 1 - e^-sigma:
    right for log-linear noise only. The right sampler's m / m(1) is exactly that t, so the
    network is handed sigma_bar(m / m(1))."""
    m_1 = -torch.expm1(-noise(torch.tensor(1.0, dtype=dtype, device=device))[0])
    on_the_t_clock = lambda x, sigma: model(x, noise(-torch.expm1(-sigma) / m_1)[0])
    return first_hitting(on_the_t_clock, graph, noise, B, L, positions, tokens, dtype, device, *rest)


@wrong("sampling.py first_hitting")
def first_hitting_clock_from_one(model, graph, noise, B, L, positions, tokens, dtype, device, *rest):
    """The clock started at m = 1 instead of m(1) = 1 - e^-sigma_bar(1), as if every token were
    masked by t = 1: close only when sigma_bar(1) is large. Here a schedule whose sigma_bar(1) is
    infinite is handed in, so the sampler's start m(1) is 1."""
    masked_by_one = lambda t: (torch.full_like(t, math.inf), torch.full_like(t, math.inf))
    return first_hitting(model, graph, masked_by_one, B, L, positions, tokens, dtype, device, *rest)


# ---------------------------------------------------------------- Exercise 12: stratified t

@wrong("loss.py stratified_t")
def stratified_t_not_stratified(n, sampling_eps=1e-3, generator=None):
    """Plain Algorithm 1: independent times, which can bunch up in one batch."""
    return sampling_eps + (1 - sampling_eps) * torch.rand(n, generator=generator)


@wrong("loss.py stratified_t")
def stratified_t_in_stratum_order(n, sampling_eps=1e-3, generator=None):
    """Position i always in stratum i: t_i is no longer U[sampling_eps, 1] (and in a distributed
    run the first process would train on low noise only)."""
    u = (torch.arange(n) + torch.rand(1, generator=generator)) / n
    return sampling_eps + (1 - sampling_eps) * u


@wrong("loss.py stratified_t")
def stratified_t_from_zero(n, sampling_eps=1e-3, generator=None):
    """Strata of [0, 1]: sampling_eps forgotten."""
    u = (torch.rand(1, generator=generator) + torch.arange(n) / n) % 1
    return u[torch.randperm(n, generator=generator)]
