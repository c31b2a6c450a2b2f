"""The score network: a transformer s_theta(x_t, sigma_bar) -> log concrete scores.

For every position i and every token y it outputs log s_theta(x_t, sigma_bar)[i, y], the
estimate of log p_t(x_t with position i set to y) / p_t(x_t): one vector of ratios per
position (the concrete score, paper Sec. 3). This file knows nothing else about diffusion.

Architecture (paper Sec. 5 and App. C): the diffusion transformer of Peebles & Xie (DiT) on
tokens: an encoder-only (non-causal) transformer with rotary position embeddings, whose
LayerNorms are shifted, scaled and gated by the noise level through adaLN-zero. It is
conditioned on the total noise sigma_bar, not on t. The output follows the official release's
"scale by sigma" (absorbing graph only; App. C: "scaling by e^sigma - 1 helps"): the network's
output is divided by (e^sigma - 1)(dim - 1), i.e. that log is subtracted, so that the
zero-initialised network starts with the exact score, at MASK positions, of data whose
tokens are uniform over the dim - 1 clean ones.

Module and parameter names are the official release's (vocab_embed.embedding, sigma_map.mlp,
rotary_emb.inv_freq, blocks.i.attn_qkv, ..., output_layer.linear), so the checkpoints
louaaron/sedd-small and -medium load with load_state_dict and no name-mapping table.
"""
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # optional CUDA kernels (pip install flash-attn); PyTorch SDPA is used everywhere else
    from flash_attn import flash_attn_varlen_qkvpacked_func
except ImportError:
    flash_attn_varlen_qkvpacked_func = None


@dataclass
class SEDDConfig:
    vocab_size: int = 50258      # the graph's dim: for absorbing it includes MASK
    n_embd: int = 768
    cond_dim: int = 128          # width of the sigma conditioning vector c
    n_layer: int = 12
    n_head: int = 12
    block_size: int = 1024       # training length; rotary has no position table, so not a hard limit
    dropout: float = 0.1         # the paper's; 0 for tiny runs
    scale_by_sigma: bool = True  # absorbing graph only
    causal: bool = False         # True: the autoregressive twin, with no noise (see SEDD.forward)

    @classmethod
    def small(cls, vocab_size=50258, **kw):
        return cls(**{**dict(vocab_size=vocab_size, n_embd=768, n_layer=12, n_head=12,
                             block_size=1024, cond_dim=128), **kw})

    @classmethod
    def medium(cls, vocab_size=50258, **kw):
        return cls(**{**dict(vocab_size=vocab_size, n_embd=1024, n_layer=24, n_head=16,
                             block_size=1024, cond_dim=128), **kw})


class LayerNormWeight(nn.Module):
    """The weight (no bias) of a LayerNorm, and nothing else: norm_modulate applies it together
    with adaLN. A module of its own for the official state-dict names (norm1.weight, ...)."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


def norm_modulate(norm, x, shift, scale):
    """adaLN: LayerNorm(x) * (1 + scale) + shift, with shift and scale [B, 1, H] from the
    conditioning; the normalisation runs in float32 even under autocast.

    The same numbers up to float rounding in fewer passes over the [B, L, H] activations, which
    cost as much as the matmuls of a small model on a CPU: the [B, 1, H] factors
    norm.weight * (1 + scale) are multiplied first, then one fused multiply-add (torch.addcmul)
    follows the normalisation: 2 passes instead of 4, forward and backward 1.8x faster.
    """
    x = F.layer_norm(x.float(), (x.shape[-1],)).type_as(x)
    return torch.addcmul(shift, x, norm.weight * (1 + scale))


class EmbeddingLayer(nn.Module):
    """Token embedding as a raw [vocab, H] parameter (the official name is .embedding)."""

    def __init__(self, vocab_size, dim):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.uniform_(self.embedding, -dim ** -0.5, dim ** -0.5)

    def forward(self, x):
        return F.embedding(x, self.embedding)


class TimestepEmbedder(nn.Module):
    """sigma_bar -> 256 sinusoidal features (cos half, then sin; periods up to 10000) -> MLP."""

    def __init__(self, cond_dim, n_freq=256):
        super().__init__()
        self.n_freq = n_freq
        self.mlp = nn.Sequential(nn.Linear(n_freq, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma):
        half = self.n_freq // 2
        k = torch.arange(half, dtype=torch.float32, device=sigma.device)
        freqs = torch.exp(-math.log(10000) * k / half)
        args = sigma[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Rotary(nn.Module):
    """cos and sin tables of rotary embeddings (base 10000, full head dimension)."""

    def __init__(self, head_dim, base=10000):
        super().__init__()
        # persistent because the official state dict carries it
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, seq_len):
        t = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.float())
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, None, :]  # [L, 1, 1, head_dim]
        return emb.cos(), emb.sin()


def apply_rotary(x, cos, sin):
    """Rotate pairs (d, d + head_dim/2) by position * inv_freq[d] (GPT-NeoX half-split layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((-x2, x1), dim=-1), sin)  # x cos + rotate_half(x) sin


def attention(qkv, causal=False):
    """Multi-head attention: qkv [B, L, 3, n_head, head_dim] -> [B, L, n_head * head_dim]. SEDD's
    is non-causal (every position sees the whole noised sequence); the autoregressive twin's is
    causal (position i sees positions <= i)."""
    B, L, _, nh, hd = qkv.shape
    use_flash = flash_attn_varlen_qkvpacked_func is not None and qkv.is_cuda
    if use_flash and qkv.dtype in (torch.float16, torch.bfloat16):
        # the official call: sequences packed end to end, here all of length L
        cu_seqlens = torch.arange(0, (B + 1) * L, L, dtype=torch.int32, device=qkv.device)
        packed = qkv.reshape(B * L, 3, nh, hd)
        out = flash_attn_varlen_qkvpacked_func(packed, cu_seqlens, L, 0.0, causal=causal)
    else:
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, n_head, L, head_dim]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)
    return out.reshape(B, L, nh * hd)


class DDiTBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        H = config.n_embd
        self.n_head, self.causal = config.n_head, config.causal
        self.norm1 = LayerNormWeight(H)
        self.attn_qkv = nn.Linear(H, 3 * H, bias=False)  # rows Q | K | V
        self.attn_out = nn.Linear(H, H, bias=False)
        self.norm2 = LayerNormWeight(H)
        self.mlp = nn.Sequential(nn.Linear(H, 4 * H), nn.GELU(approximate="tanh"), nn.Linear(4 * H, H))
        self.dropout = nn.Dropout(config.dropout)
        # adaLN-zero: zero gates make every block the identity at initialisation
        self.adaLN_modulation = nn.Linear(config.cond_dim, 6 * H)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, c, cos, sin):
        B, L, H = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c)[:, None].chunk(6, dim=2)  # each [B, 1, H]
        qkv = self.attn_qkv(norm_modulate(self.norm1, x, shift_msa, scale_msa))
        # split, not slicing: its backward is one concatenation instead of zero-filled copies
        qk, v = qkv.view(B, L, 3, self.n_head, H // self.n_head).split([2, 1], dim=2)
        qk = apply_rotary(qk, cos.to(qk.dtype), sin.to(qk.dtype))  # v is not rotated
        qkv = torch.cat([qk, v], dim=2)
        x = x + gate_msa * self.dropout(self.attn_out(attention(qkv, self.causal)))
        x = x + gate_mlp * self.dropout(self.mlp(norm_modulate(self.norm2, x, shift_mlp, scale_mlp)))
        return x


class DDitFinalLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        H = config.n_embd
        self.norm_final = LayerNormWeight(H)
        self.linear = nn.Linear(H, config.vocab_size)
        self.adaLN_modulation = nn.Linear(config.cond_dim, 2 * H)
        # zero output at initialisation: the score is then exactly the scale_by_sigma prior
        for p in (*self.linear.parameters(), *self.adaLN_modulation.parameters()):
            nn.init.zeros_(p)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(norm_modulate(self.norm_final, x, shift, scale))


class SEDD(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.vocab_embed = EmbeddingLayer(config.vocab_size, config.n_embd)
        if not config.causal:
            self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = Rotary(config.n_embd // config.n_head)
        self.blocks = nn.ModuleList(DDiTBlock(config) for _ in range(config.n_layer))
        self.output_layer = DDitFinalLayer(config)

    def forward(self, x_t, sigma=None):
        """x_t [B, L] int64, sigma = sigma_bar [B] or [B, 1] -> log_score [B, L, vocab_size] float32.

        The autoregressive twin (config.causal; train.py's ar setting) is this same network with
        causal attention and no sigma: x [B, L] starting with BOS -> logits [B, L, vocab_size],
        those at position i being of the token at i + 1 (loss.ar_nll)."""
        B, L = x_t.shape
        x = self.vocab_embed(x_t)
        if self.config.causal:
            # The twin has no noise to condition on: the adaLN layers keep their shapes but see
            # c = 0, so only their biases act (a learned constant shift, scale and gate per
            # block, with the same adaLN-zero start); their weights get zero gradient.
            c = x.new_zeros(B, self.config.cond_dim)
        else:
            sigma = sigma.float().reshape(-1).expand(B)
            # float32 as in the official release, whose autocast covers only the blocks
            with torch.autocast(x.device.type, enabled=False):
                c = F.silu(self.sigma_map(sigma))
        cos, sin = self.rotary_emb(L)
        for block in self.blocks:
            x = block(x, c, cos, sin)
        x = self.output_layer(x, c).float()  # float32: the loss needs the precision
        if self.config.causal:
            return x
        if self.config.scale_by_sigma:
            # log((e^sigma - 1)(dim - 1)) with expm1 for small sigma: the exact sigma factor of
            # the absorbing score. (One pass over the [B, L, dim] output: the logs are added first.)
            x = x - (torch.expm1(sigma).log() + math.log(self.config.vocab_size - 1))[:, None, None]
        # log of the ratio of x_t to itself; in place (x is a fresh tensor that autograd does not
        # keep), which saves a copy of the largest tensor of the network at a 50k vocabulary
        return x.scatter_(-1, x_t[..., None], 0.0)

    @property
    def bos(self):
        """The autoregressive twin's start token: the extra last id (where the absorbing graph
        keeps MASK), read before the first token and never predicted (loss.ar_nll)."""
        return self.config.vocab_size - 1

    def num_params(self, non_embedding=False):
        """Parameters (not buffers); non_embedding leaves out the token embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.vocab_embed.embedding.numel() if non_embedding else n

    def estimate_flops_per_token(self):
        """Training FLOPs per token = 6 N + 12 n_layer n_embd block_size, as in nanoGPT's MFU.

        N counts the per-token path: qkv, attention out, MLP, LayerNorm weights and the output
        linear; not the input embedding (a lookup), nor the adaLN layers or sigma_map (once per
        sequence). The second term is attention's q k^T and (softmax) v, forward and backward.
        """
        mods = [m for b in self.blocks for m in (b.norm1, b.attn_qkv, b.attn_out, b.norm2, b.mlp)]
        mods += [self.output_layer.norm_final, self.output_layer.linear]
        N = sum(p.numel() for m in mods for p in m.parameters())
        c = self.config
        return 6 * N + 12 * c.n_layer * c.n_embd * c.block_size

    # ---- checkpoints in the official Hugging Face layout: config.json + weights ----

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=None):
        """Load an SEDD checkpoint from a local directory or a hub id such as louaaron/sedd-small.

        Returns the network in eval mode. Its vocabulary is the checkpoint's tokens plus MASK for
        the absorbing graph, or plus BOS for an autoregressive twin ("causal": true); the graph and
        noise schedule it was trained for are checkpoint.load's to read.
        dropout: replaces the checkpoint's rate (fine-tuning chooses its own, as in nanoGPT).
        """
        path = checkpoint_dir(name_or_dir)
        cfg_file = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_file):
            raise FileNotFoundError(f"{path} is not an SEDD checkpoint: it has no config.json")
        with open(cfg_file) as f:
            hf = json.load(f)
        try:
            m, causal = hf["model"], hf["model"].get("causal", False)
            graph = None if causal else hf["graph"]["type"]
            if graph not in ("absorb", "uniform", None):
                raise ValueError(f"{cfg_file}: unknown graph.type {graph!r}")
            # "length" is optional: the official code never reads it (rotary has no position
            # table), and the official models were trained at the default 1024 tokens
            config = SEDDConfig(vocab_size=hf["tokens"] + (graph == "absorb" or causal),
                                n_embd=m["hidden_size"],
                                cond_dim=m["cond_dim"], n_layer=m["n_blocks"], n_head=m["n_heads"],
                                block_size=m.get("length", SEDDConfig.block_size),
                                dropout=m["dropout"] if dropout is None else dropout, causal=causal,
                                scale_by_sigma=m["scale_by_sigma"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{cfg_file} is not an SEDD config (missing or malformed entry {e})") from None
        st_file, pt_file = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
        if os.path.isfile(st_file):
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ImportError(f"{st_file} needs the safetensors package: "
                                  "pip install safetensors") from None
            state = load_file(st_file)
        elif os.path.isfile(pt_file):
            state = torch.load(pt_file, map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")
        model = cls(config)
        try:
            model.load_state_dict(state)  # strict: every name and shape must match
        except RuntimeError as e:
            raise RuntimeError(f"the weights in {path} do not match its config.json:\n{e}") from None
        return model.eval()

    def save_pretrained(self, out_dir, graph_name=None, noise_config=None):
        """Write config.json + pytorch_model.bin in the layout from_pretrained reads.
        noise_config: {"type": "loglinear" | "geometric", its parameters} (noise.noise_config).
        The autoregressive twin has neither a graph nor a noise schedule."""
        c = self.config
        if (graph_name is None) != c.causal or graph_name not in ("absorb", "uniform", None):
            raise ValueError(f"graph_name must be 'absorb' or 'uniform' (None for the autoregressive twin), "
                             f"not {graph_name!r}")
        hf = {"tokens": c.vocab_size - (graph_name == "absorb" or c.causal),
              "model": {"hidden_size": c.n_embd, "cond_dim": c.cond_dim, "length": c.block_size,
                        "n_blocks": c.n_layer, "n_heads": c.n_head, "scale_by_sigma": c.scale_by_sigma,
                        "dropout": c.dropout, "causal": c.causal}}
        if not c.causal:
            hf.update(graph={"type": graph_name}, noise=dict(noise_config))
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(hf, f, indent=2)
        torch.save(self.state_dict(), os.path.join(out_dir, "pytorch_model.bin"))


def checkpoint_dir(name_or_dir):
    """A local directory as is; an 'owner/name' hub id downloaded (cached) by huggingface_hub."""
    name_or_dir = os.path.expanduser(os.fspath(name_or_dir))
    if os.path.isdir(name_or_dir):
        return name_or_dir
    if os.path.exists(name_or_dir) or name_or_dir.startswith((".", "/")) or name_or_dir.count("/") != 1:
        raise FileNotFoundError(f"{name_or_dir!r} is neither a checkpoint directory "
                                "nor a hub id like louaaron/sedd-small")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"{name_or_dir!r} is not a local directory; to download it from the Hugging Face "
                          "hub: pip install huggingface_hub safetensors") from None
    try:  # one weights file only: prefer safetensors, fall back to the .bin of older uploads
        path = snapshot_download(name_or_dir, allow_patterns=["config.json", "model.safetensors"])
        if not os.path.isfile(os.path.join(path, "model.safetensors")):
            path = snapshot_download(name_or_dir, allow_patterns=["config.json", "pytorch_model.bin"])
    except Exception as e:  # offline, no such repository, ...: one line, not the hub's traceback
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FileNotFoundError(f"{name_or_dir!r} is not a local directory (train.py writes one per run), "
                                f"and downloading it as a Hugging Face hub id failed: {first_line}") from None
    return path
