"""The forward process on tokens: a continuous-time Markov chain with rate matrix Q.

Paper, Section 3.3: each token is corrupted independently by dp/dt = sigma(t) Q p, so with
total noise sigma (= sigma_bar(t), see noise.py) the token law is p_{t|0}(. | x0) = column x0
of exp(sigma Q). Convention (the paper's): dp/dt = Q p, so Q[y, x] is the rate of jumping
from x to y, off-diagonals are >= 0 and every column sums to zero.

Two structured Qs make exp(sigma Q) cheap enough for a 50k vocabulary (Eq. 16):
- Absorbing: every token jumps to MASK at rate 1. MASK is the last id (dim = n_tokens + 1).
- Uniform: every token jumps to every token at rate 1/N, i.e. Q = 1 1^T / N - I (the paper's
  Q^uniform scaled by 1/N, as in its appendix). With P = 1 1^T / N (a projection),
  exp(sigma Q) = e^{-sigma} I + (1 - e^{-sigma}) P.

Everything a training or sampling step needs is a closed-form column or row of exp(+-sigma Q);
`rate_matrix()` exists only so the tests can check each closed form against
torch.linalg.matrix_exp on a tiny vocabulary.

Shapes: x is [...] int64 token ids, sigma broadcasts against x (e.g. x [B, L], sigma [B, 1]),
vector-valued results are [..., dim]. `score` is the concrete score s_y = p_t(y) / p_t(x_t) of
the sequence with position i changed to y (Section 3.3), one vector per position.
"""
import math

import torch
import torch.nn.functional as F


def phi(z):
    """e^z - 1 - z >= 0, written with expm1 so it keeps precision for small |z|."""
    return torch.expm1(z) - z


class Graph:
    """The interface both graphs implement. Attributes: name ("absorb" | "uniform"), n_tokens
    (real tokens), dim (states: n_tokens, plus MASK for absorbing). Shapes as in the module's
    docstring: x [...], sigma broadcast against x, vectors [..., dim]."""

    def rate_matrix(self):
        """Q as a dense [dim, dim] float64 matrix, Q[y, x] the rate from x to y (tests only)."""
        raise NotImplementedError

    def rates_into(self, x_t):
        """Row x_t of Q: Q[x_t, y] is the rate of jumping from y INTO x_t. [..., dim]"""
        raise NotImplementedError

    def transition(self, x0, sigma):
        """p_{t|0}(. | x0): column x0 of exp(sigma Q). [..., dim]"""
        raise NotImplementedError

    def transp_transition(self, x_t, delta_sigma):
        """Row x_t of exp(delta_sigma Q), the second factor of Tweedie's step (Eq. 19). [..., dim]"""
        raise NotImplementedError

    def staggered_score(self, score, delta_sigma):
        """exp(-delta_sigma Q) applied to the score vector, the first factor of Eq. 19. [..., dim]"""
        raise NotImplementedError

    def sample_transition(self, x0, sigma, generator=None):
        """x_t ~ p_{t|0}(. | x0), token by token. [...]"""
        raise NotImplementedError

    def sample_limit(self, *shape, device=None):
        """x_T from the base distribution: all MASK (absorbing) or uniform tokens. [*shape]"""
        raise NotImplementedError

    def score_entropy(self, log_score, sigma, x_t, x0):
        """Denoising score entropy per position (Theorem 3.4), before the weight dsigma. [...]"""
        raise NotImplementedError

    def prior_kl(self, sigma):
        """KL(p_{1|0}(. | x0) || p_base) per token at sigma = sigma_bar(1): the ELBO's prior term."""
        raise NotImplementedError

    def reverse_rate(self, x_t, score):
        """Learned reverse rates out of x_t at unit noise rate (Def. 3.5 with Q, not Q_t):
        out_y = s_y Q[x_t, y] for y != x_t and out_{x_t} = -sum of the others, so that
        delta_{x_t} + dsigma dt out is the Euler (tau-leaping) step of Eq. 17."""
        rate = self.rates_into(x_t).to(score.dtype) * score
        index = x_t.unsqueeze(-1)
        rate = rate.scatter(-1, index, 0.0)
        return rate.scatter(-1, index, -rate.sum(-1, keepdim=True))

    def one_hot(self, x, like):
        return F.one_hot(x, self.dim).to(like.dtype)


class Absorbing(Graph):
    name = "absorb"

    def __init__(self, n_tokens):
        self.n_tokens = n_tokens
        self.dim = n_tokens + 1
        self.mask = n_tokens

    def rate_matrix(self):
        Q = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        Q[self.mask, : self.mask] = 1.0
        Q[range(self.mask), range(self.mask)] = -1.0
        return Q

    def rates_into(self, x_t):
        # Into MASK: from every real token at rate 1. Into a real token: nothing arrives; its
        # diagonal entry is -1 (it leaves at rate 1).
        is_mask = (x_t == self.mask).unsqueeze(-1)
        into_mask = torch.ones(self.dim, device=x_t.device)
        into_mask[self.mask] = 0.0
        return torch.where(is_mask, into_mask, -F.one_hot(x_t, self.dim).float())

    def transition(self, x0, sigma):
        # Column x0 of exp(sigma Q): x0 survives with e^{-sigma}, else it is MASK.
        sigma = sigma.unsqueeze(-1)
        p = self.one_hot(x0, sigma) * torch.exp(-sigma)
        p[..., self.mask] += -torch.expm1(-sigma[..., 0])
        return p

    def transp_transition(self, x_t, delta_sigma):
        # Row x_t of exp(delta_sigma Q): a real token can only have come from itself
        # (e^{-delta_sigma}); MASK came from any real token with 1 - e^{-delta_sigma}, or from MASK
        # with probability 1 (the MASK entry sums e^{-delta_sigma} + (1 - e^{-delta_sigma})).
        delta_sigma = delta_sigma.unsqueeze(-1)
        is_mask = (x_t == self.mask).unsqueeze(-1)
        return self.one_hot(x_t, delta_sigma) * torch.exp(-delta_sigma) - is_mask * torch.expm1(-delta_sigma)

    def staggered_score(self, score, delta_sigma):
        # exp(-delta_sigma Q) score: columns y != MASK of exp(-delta_sigma Q) are e^{delta_sigma}
        # at y and 1 - e^{delta_sigma} at MASK; the MASK column is the unit vector at MASK.
        delta_sigma = delta_sigma.unsqueeze(-1)
        out = score * torch.exp(delta_sigma)
        real = score[..., : self.mask].sum(-1)
        out[..., self.mask] = score[..., self.mask] - torch.expm1(delta_sigma[..., 0]) * real
        return out

    def sample_transition(self, x0, sigma, generator=None):
        move = torch.rand(x0.shape, device=x0.device, generator=generator) < -torch.expm1(-sigma)
        return torch.where(move, self.mask, x0)

    def sample_limit(self, *shape, device=None):
        return torch.full(shape, self.mask, dtype=torch.long, device=device)

    def score_entropy(self, log_score, sigma, x_t, x0):
        # Only MASK receives jumps (Q[x_t, y] = 0 for real x_t), so only masked positions
        # contribute. There r_y = p(y|x0) / p(MASK|x0) is 1 / (e^sigma - 1) at y = x0 and 0
        # at every other real token, and K(0) = 0. The x0 term is written in Bregman form,
        # s - r log s + K(r) = r phi(log s - log r), which avoids cancelling r log r terms.
        log_r = -torch.log(torch.expm1(sigma))
        log_s = log_score[..., : self.mask]
        log_s_x0 = log_s.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        # sum of s_y over y not in {x0, MASK}: the subtraction loses ~1e-7 of s_x0 in float32,
        # which only happens at masked positions (probability ~ sigma) while s_x0 ~ 1/sigma.
        others = log_s.exp().sum(-1) - log_s_x0.exp()
        entropy = others + torch.exp(log_r) * phi(log_s_x0 - log_r)
        return torch.where(x_t == self.mask, entropy, 0.0)

    def prior_kl(self, sigma):
        """KL(p_{T|0}(.|x0) || p_base) per token, for sigma = sigma_bar(1). An all-MASK p_base
        gives infinity (x0 survives with delta = e^{-sigma}); as in the paper's appendix p_base
        leaks delta uniformly to the real tokens, which makes the KL exactly delta ln(N)."""
        return torch.exp(-sigma) * math.log(self.n_tokens)


class Uniform(Graph):
    name = "uniform"

    def __init__(self, n_tokens):
        self.n_tokens = n_tokens
        self.dim = n_tokens

    def rate_matrix(self):
        N = self.dim
        return torch.full((N, N), 1.0 / N, dtype=torch.float64) - torch.eye(N, dtype=torch.float64)

    def rates_into(self, x_t):
        uniform = torch.full((*x_t.shape, self.dim), 1.0 / self.dim, device=x_t.device)
        return uniform - F.one_hot(x_t, self.dim)

    def transition(self, x0, sigma):
        # Column x0 of e^{-sigma} I + (1 - e^{-sigma}) 1 1^T / N.
        sigma = sigma.unsqueeze(-1)
        return self.one_hot(x0, sigma) * torch.exp(-sigma) - torch.expm1(-sigma) / self.dim

    def transp_transition(self, x_t, delta_sigma):
        # Q is symmetric, so row x_t of exp(delta_sigma Q) equals column x_t.
        return self.transition(x_t, delta_sigma)

    def staggered_score(self, score, delta_sigma):
        # exp(-delta_sigma Q) = e^{delta_sigma} I + (1 - e^{delta_sigma}) 1 1^T / N.
        delta_sigma = delta_sigma.unsqueeze(-1)
        moved = torch.expm1(delta_sigma) * score.sum(-1, keepdim=True) / self.dim
        return score * torch.exp(delta_sigma) - moved

    def sample_transition(self, x0, sigma, generator=None):
        # With probability 1 - e^{-sigma} the token is redrawn uniformly (possibly itself).
        move = torch.rand(x0.shape, device=x0.device, generator=generator) < -torch.expm1(-sigma)
        redraw = torch.randint(self.dim, x0.shape, device=x0.device, generator=generator)
        return torch.where(move, redraw, x0)

    def sample_limit(self, *shape, device=None):
        return torch.randint(self.dim, shape, device=device)

    def score_entropy(self, log_score, sigma, x_t, x0):
        # Every y != x_t jumps into x_t at rate 1/N. With e = e^sigma - 1 and a = e / (N + e):
        # if x_t == x0, r_y = a for all y != x_t; otherwise r_y = 1, except r_{x0} = 1 / a.
        # Every term is in Bregman form r phi(log s - log r): float32-accurate at small sigma,
        # where the plain form cancels terms of size (N / sigma) log(N / sigma).
        e = torch.expm1(sigma)
        log_a = torch.log(e) - torch.log(self.dim + e)
        same = x_t == x0
        log_r = torch.where(same, log_a, 0.0).unsqueeze(-1).expand(log_score.shape)
        log_r = log_r.scatter(-1, x0.unsqueeze(-1), torch.where(same, log_a, -log_a).unsqueeze(-1))
        terms = torch.exp(log_r) * phi(log_score - log_r)
        return terms.scatter(-1, x_t.unsqueeze(-1), 0.0).sum(-1) / self.dim

    def prior_kl(self, sigma):
        """KL(p_{T|0}(.|x0) || uniform) per token, the same for every x0."""
        N = self.dim
        keep = torch.exp(-sigma)
        p_x0 = keep + (1 - keep) / N
        p_other = (1 - keep) / N
        return p_x0 * torch.log1p((N - 1) * keep) + (N - 1) * p_other * torch.log1p(-keep)


GRAPHS = {cls.name: cls for cls in (Absorbing, Uniform)}


def get_graph(name, n_tokens):
    if name not in GRAPHS:
        raise ValueError(f"unknown graph {name!r}; choose one of {sorted(GRAPHS)}")
    return GRAPHS[name](n_tokens)
