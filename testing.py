"""The tests' shared references, imported by several test files (which never import each other;
pytest collects only test_*.py, so this file holds no tests): tiny model configs, randomized
models and a fixed batch for them, the enumeration of all sequences, the autoregressive twin with
its exact law, the config of a tiny training run; and the exact references of the proofs
(test_sedd.py, test_sampling.py): exp(sigma Q), a correlated test law and its true concrete score.
"""
import itertools

import torch

from loss import ar_nll
from model import SEDD, SEDDConfig

TINY_RUN = dict(dataset="tiny", block_size=32, batch_size=4, n_layer=2, n_head=2, n_embd=32, cond_dim=16,
                dropout=0.0, warmup_iters=2, learning_rate=1e-3, eval_batches=1, eval_n_t=2, sample_steps=4,
                dtype="float32", compile=False, device="cpu")


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
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, config.vocab_size, (3, config.block_size), generator=generator)
    return x, torch.tensor([1e-4, 0.5, 7.0])


def all_sequences(dim, length):
    return torch.tensor(list(itertools.product(range(dim), repeat=length)))


def twin(n_tokens=3, seed=0, **kw):
    """A randomized autoregressive twin: causal, no sigma, n_tokens + BOS ids."""
    return randomized(tiny(vocab_size=n_tokens + 1, causal=True, scale_by_sigma=False, **kw),
                      seed=seed, std=0.5)


def twin_law(model, n_tokens, length):
    """The twin's probability of every sequence, by enumeration: exp(-ar_nll)."""
    xs = all_sequences(n_tokens, length)
    with torch.no_grad():
        return xs, torch.exp(-ar_nll(model, xs, n_tokens).double())


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
