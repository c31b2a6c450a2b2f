"""model.py: the score network against the official one written out from its state dict, its
output contract, attention, rotary positions, parameter counts and bf16 autocast; then the
autoregressive twin: causal, a normalised law, saved and loaded (its likelihood and sampler are
proved in test_sedd.py and test_sampling.py). Tiny configs, randomized models and the twin come
from testing.py.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import model as M
from model import SEDD, SEDDConfig
from testing import batch, randomized, tiny, twin, twin_law


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
    """Shape, dtype, 0 at the input token; exactly the scale_by_sigma prior at init; dropout in
    training only."""
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
    assert (torch.isfinite(out).all() and out.abs().max() > 1.0
            and torch.equal(out[~off], torch.zeros(x.numel())))
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
    cond = F.silu(lin(F.silu(lin(torch.cat([args.cos(), args.sin()], -1), "sigma_map.mlp.0")),
                      "sigma_map.mlp.2"))
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
    # GPT-NeoX's half-split layout (the official checkpoints'): coordinate 3 turns into 3 + 8
    angle = 5 * M.Rotary(16).inv_freq[3]
    expected = torch.zeros(16)
    expected[3], expected[11] = torch.cos(angle), torch.sin(angle)
    got = rotated(F.one_hot(torch.tensor(3), 16).float(), 5)
    assert torch.allclose(got, expected, atol=1e-6), \
        f"e_3 rotated at position 5: got {got}, expected {expected}"
    assert torch.equal(M.Rotary(16).inv_freq, 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16))
    # at the network's shapes: q and k [B, L, 2, n_head, head_dim], tables [L, 1, 1, head_dim]
    qk = torch.randn(2, 64, 2, 3, 16, generator=torch.Generator().manual_seed(1))
    got = M.apply_rotary(qk, cos, sin)
    for b, i, j, h in [(0, 5, 0, 1), (1, 63, 1, 2), (1, 0, 0, 0)]:
        assert torch.allclose(got[b, i, j, h], rotated(qk[b, i, j, h], i), atol=1e-6), \
            f"q/k of sequence {b}, position {i}, head {h} is not the vector rotated on its own"


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


# ---------------------------------------------------------------- the autoregressive twin

def test_twin_is_causal_and_its_likelihood_a_normalised_law(tmp_path, float32):
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
    model.save_pretrained(tmp_path)
    assert SEDD.from_pretrained(str(tmp_path)).config == model.config
    assert not {"graph", "noise"} & json.loads((tmp_path / "config.json").read_text()).keys()  # no diffusion
