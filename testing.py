"""The tests' shared references, imported by several test files (which never import each other;
pytest collects only test_*.py, so this file holds no tests): tiny model configs, randomized
models and a fixed batch for them, the enumeration of all sequences, the autoregressive twin with
its exact law, and the config of a tiny training run.
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
