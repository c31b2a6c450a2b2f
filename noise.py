"""Noise schedules: how much corruption the forward process has applied by time t.

SEDD's forward process is dp_t/dt = sigma(t) Q p_t (paper, Section 3.3): one fixed rate
matrix Q scaled by a scalar rate sigma(t). Everything the rest of the code needs is the
total noise sigma_bar(t) = int_0^t sigma(s) ds, because p_{t|0} = exp(sigma_bar(t) Q)
(the "x-th column of exp(sigma_bar Q)" equation of Section 3.3), and its rate
dsigma = d sigma_bar / dt, which weights the loss (Theorem 3.6: Q_t = dsigma Q).

Naming used across the project: `sigma` is always the TOTAL noise sigma_bar, `dsigma` its rate.

Schedules (appendix C):
- log-linear: sigma_bar(t) = -log(1 - (1 - eps) t). For the absorbing graph a token is
  still clean with probability exp(-sigma_bar) = 1 - (1 - eps) t, so the expected number of
  masked tokens grows linearly in t; eps keeps sigma_bar(1) finite.
- geometric: sigma_bar(t) = sigma_min^(1 - t) sigma_max^t. The official release uses
  sigma_min = 1e-4, sigma_max = 20 (the paper's text says 1e-5); we follow the release.
"""
import inspect
import math

import torch


class LogLinearNoise:
    def __init__(self, eps=1e-3):
        self.eps = eps

    def __call__(self, t):
        # sigma_bar = -log(1 - (1 - eps) t), written with log1p so t -> 0 keeps full precision
        rate = 1 - self.eps
        sigma = -torch.log1p(-rate * t)
        dsigma = rate / (1 - rate * t)
        return sigma, dsigma


class GeometricNoise:
    def __init__(self, sigma_min=1e-4, sigma_max=20.0):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def __call__(self, t):
        log_ratio = math.log(self.sigma_max / self.sigma_min)
        sigma = self.sigma_min * torch.exp(t * log_ratio)
        dsigma = sigma * log_ratio
        return sigma, dsigma


NOISES = {"loglinear": LogLinearNoise, "geometric": GeometricNoise}


def get_noise(name, **kwargs):
    if name not in NOISES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(NOISES)}")
    return NOISES[name](**kwargs)


def noise_config(noise):
    """A schedule as a checkpoint's config.json stores it: {"type": name, its parameters}."""
    name = next(name for name, cls in NOISES.items() if type(noise) is cls)
    return {"type": name, **vars(noise)}


def noise_from_config(config):
    """The schedule of a checkpoint's "noise" entry. Only the parameters the schedule takes are
    passed: the official log-linear configs also carry sigma_min and sigma_max, which only the
    geometric schedule uses."""
    params = inspect.signature(NOISES[config["type"]]).parameters if config["type"] in NOISES else {}
    return get_noise(config["type"], **{k: v for k, v in config.items() if k in params})
