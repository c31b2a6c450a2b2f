"""device.py on CUDA cards this machine does not have (torch.cuda mocked): each card named gets its
own datasheet peak (H100 SXM, PCIe and NVL apart; L4, L40 and L40S apart), float32 is held to the
card's tf32 or fp32 figure and bf16 to its bf16 one, an unknown card's peak is measured and says
so, "auto" picks bf16 only on cards with bf16 units, and cuda:N is refused under torchrun.

Then the CUDA path itself (python -m pytest -m cuda), which skips, saying why, without a GPU: bf16,
train.py's step compiled with its loss, a step that never waits for the GPU, attention, sampling,
resume, torchrun with compile and bf16, and the memory of owt_small's step for both graphs.
"""
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import device
import model as M
import train
from graph import Absorbing, get_graph
from noise import LogLinearNoise
from sampling import sample
from testing import TINY_RUN, randomized, tiny

HERE = Path(__file__).resolve().parent

CUDA = torch.device("cuda:0")

# torch.cuda.get_device_name -> the dense bf16 peak in TFLOP/s: the datasheet's, or its fp32 one
# on a card without bf16 units (V100, T4)
BF16_PEAKS = {
    "NVIDIA H100 80GB HBM3": 989.5,  # SXM
    "NVIDIA H100 PCIe": 756.5,
    "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.5,
    "NVIDIA H800": 989.5,
    "NVIDIA H20": 148,
    "NVIDIA B200": 2250,
    "NVIDIA A100-SXM4-80GB": 312,
    "NVIDIA A100-SXM4-40GB": 312,
    "NVIDIA A100-PCIE-40GB": 312,
    "NVIDIA A100 80GB PCIe": 312,
    "NVIDIA A10": 125,
    "NVIDIA A40": 149.7,
    "NVIDIA L4": 121,
    "NVIDIA L40": 181.05,
    "NVIDIA L40S": 362.05,
    "NVIDIA GeForce RTX 4090": 165.2,
    "Tesla V100-SXM2-16GB": 15.7,
    "Tesla T4": 8.1,
}


@pytest.fixture
def card(monkeypatch):
    """card(name, capability) makes torch.cuda report that one GPU; nothing may measure a peak."""
    def use(name, capability=(9, 0)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(device, "measure_flops", lambda *a: pytest.fail("a datasheet card was measured"))
    return use


@pytest.fixture
def precision():
    """torch.set_float32_matmul_precision ("high": float32 matmuls in tf32, as a CUDA run may ask),
    restored after the test."""
    old = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize("name", BF16_PEAKS)
def test_each_card_has_its_own_bf16_peak(card, name):
    card(name)
    assert device.peak_flops(CUDA, torch.bfloat16) == pytest.approx(BF16_PEAKS[name] * 1e12)


def test_float32_is_held_to_the_fp32_figure(card, precision):
    precision("highest")
    for name, fp32 in (("NVIDIA H100 80GB HBM3", 67), ("NVIDIA A100-SXM4-80GB", 19.5), ("NVIDIA L4", 30.3)):
        card(name)
        assert device.peak_flops(CUDA, torch.float32) == pytest.approx(fp32 * 1e12)


def test_float32_in_tf32_is_held_to_the_tf32_figure(card, precision):
    precision("high")
    for name, peak in (("NVIDIA H100 80GB HBM3", 494.5), ("NVIDIA A100-SXM4-80GB", 156),
                       ("NVIDIA L40S", 183), ("Tesla V100-SXM2-16GB", 15.7)):  # V100: no tf32 units
        card(name)
        assert device.peak_flops(CUDA, torch.float32) == pytest.approx(peak * 1e12)


def test_an_unknown_card_is_measured_and_says_so(card, monkeypatch, capsys):
    card("NVIDIA A10G")  # not the A10
    measured = []
    monkeypatch.setattr(device, "measure_flops", lambda d, dtype, n, repeats: measured.append(dtype) or 7e12)
    assert device.peak_flops(CUDA, torch.float32) == 7e12
    assert device.peak_flops(CUDA, torch.bfloat16) == 7e12
    assert measured == [torch.float32, torch.bfloat16]
    note = capsys.readouterr().out
    assert "NVIDIA A10G" in note and "float32 peak FLOP/s is measured" in note and "bfloat16" in note


@pytest.mark.parametrize("name, capability, dtype", [
    ("Tesla V100-SXM2-16GB", (7, 0), torch.float32), ("Tesla T4", (7, 5), torch.float32),
    ("NVIDIA A100-SXM4-80GB", (8, 0), torch.bfloat16), ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16)],
    ids=["V100", "T4", "A100", "H100"])
def test_auto_dtype_is_bf16_only_with_bf16_units(card, monkeypatch, name, capability, dtype):
    card(name, capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts here
    assert device.pick_dtype("auto", CUDA) is dtype
    assert device.pick_dtype("float32", CUDA) is torch.float32


def test_each_torchrun_process_takes_its_local_rank(card):
    card("NVIDIA H100 80GB HBM3")
    assert device.pick_device("cuda", 3) == device.pick_device("auto", 3) == torch.device("cuda:3")
    assert device.pick_device("cuda") == torch.device("cuda:0")
    assert device.pick_device("cuda:1") == torch.device("cuda:1")  # one process may pick its GPU
    with pytest.raises(ValueError, match=r"'cuda:1' under torchrun .* use --device=cuda .* LOCAL_RANK"):
        device.pick_device("cuda:1", 0)


def test_train_refuses_cuda_n_under_torchrun(card, monkeypatch):
    card("NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit, match="use --device=cuda"):
        train.setup_processes({"device": "cuda:0"})


# ---------------------------------------------------------------- CUDA (python -m pytest -m cuda)

def on_cuda(test):
    """Marks a test `cuda` and skips it, saying why, where PyTorch sees no CUDA GPU."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(),
                              reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    return pytest.mark.cuda(skip(test))


def cuda_trainer(tiny_data, graph, **overrides):
    """A Trainer of TINY_RUN on the GPU for graph "absorb", "uniform" or "ar" (the twin)."""
    cfg = {**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "device": "cuda", "ar": graph == "ar",
           "graph": "absorb" if graph == "ar" else graph, "n_embd": 128, "block_size": 64, **overrides}
    torch.manual_seed(0)
    diffusion = None if cfg["ar"] else get_graph(cfg["graph"], 28)
    model = train.build_model(cfg, 29 if cfg["ar"] else diffusion.dim)
    noise = None if cfg["ar"] else LogLinearNoise()
    return train.Trainer(cfg, model, diffusion, noise, train.Data(cfg, "train"), torch.device("cuda"))


@on_cuda
def test_cuda_bf16_step_matches_float32(tiny_data, float32):
    losses = {dtype: torch.stack([cuda_trainer(tiny_data, "absorb", dtype=dtype).step()[0] for _ in range(1)])
              for dtype in ("float32", "bfloat16")}
    assert torch.allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)


@on_cuda
@pytest.mark.parametrize("graph", ["absorb", "uniform", "ar"])
def test_cuda_compiled_bf16_steps_match_eager(tiny_data, graph, float32):
    """train.py's own step, compiled by inductor with its loss, against eager, both in bf16."""
    losses = {}
    for compiled in (False, True):
        run = cuda_trainer(tiny_data, graph, dtype="bfloat16", compile=compiled)
        losses[compiled] = torch.stack([run.step()[0] for _ in range(3)])
    assert torch.allclose(losses[True], losses[False], rtol=2e-2), losses


@on_cuda
@pytest.mark.parametrize("graph", ["absorb", "ar"])
def test_cuda_step_never_waits_for_the_gpu(tiny_data, graph, float32):
    """CUDA's sync debug mode raises on any wait for the device (a value read, a blocking copy)."""
    run = cuda_trainer(tiny_data, graph, dtype="bfloat16", gradient_accumulation_steps=2)
    run.step()  # the first step allocates AdamW's state
    torch.cuda.set_sync_debug_mode("error")
    try:
        run.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@on_cuda
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_attention_matches_float32_softmax(causal, float32):
    """M.attention on CUDA in bf16 (FlashAttention when flash-attn is installed, else SDPA)
    against softmax(q k^T / sqrt(d)) v written out in float32."""
    torch.manual_seed(0)
    qkv = torch.randn(4, 128, 3, 8, 64, device="cuda")
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    logits = q @ k.transpose(-1, -2) / math.sqrt(64)
    if causal:
        logits = logits.masked_fill(torch.ones(128, 128, dtype=torch.bool, device="cuda").triu(1),
                                    float("-inf"))
    ref = (logits.softmax(-1) @ v).transpose(1, 2).reshape(4, 128, 512)
    out = M.attention(qkv.bfloat16(), causal).float()
    assert (out - ref).abs().max() < 3e-2 * ref.abs().max()


@on_cuda
def test_cuda_sampling_draws_in_float64(float32):
    model = randomized(tiny(vocab_size=11), std=0.3).cuda()
    graph, noise = Absorbing(10), LogLinearNoise()
    assert device.draw_dtype(torch.device("cuda")) is torch.float64
    for predictor, steps in (("analytic", 16), ("first_hitting", None)):
        stats = {}
        x = sample(model, graph, noise, (4, 8), steps, predictor, prompt={2: 5}, device="cuda", stats=stats)
        assert x.is_cuda and (x < 10).all() and (x[:, 2] == 5).all()
    assert stats["network_evals"] == 7


def params(out_dir):
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=False)
    return torch.cat([p.flatten() for p in ckpt["model"].values()]), ckpt


@on_cuda
def test_cuda_resume_restores_the_cuda_generator(tiny_data, tmp_path, float32):
    """With dropout on, a resumed CUDA run follows the straight one (up to the float rounding of
    CUDA kernels): restoring only the CPU generator would change every dropout mask."""
    def run(out_dir, **kw):
        train.train({**train.load_config([]), **TINY_RUN, "data_dir": tiny_data, "out_dir": str(out_dir),
                     "device": "cuda", "max_iters": 6, "eval_interval": 3, "log_interval": 3, "dropout": 0.2,
                     **kw})
    run(tmp_path / "straight")
    run(tmp_path / "stopped", max_iters=3)
    run(tmp_path / "stopped", init_from="resume")
    a, b = params(tmp_path / "straight")[0], params(tmp_path / "stopped")[0]
    assert (a - b).norm() < 1e-5 * a.norm()


@on_cuda
def test_cuda_torchrun_compiled_bf16_trains_and_resumes(tiny_data, tmp_path):
    """The path users run: torchrun (NCCL), torch.compile and bf16 together, then a resume."""
    cfg = {**TINY_RUN, "device": "cuda", "dtype": "bfloat16", "compile": True, "data_dir": tiny_data,
           "max_iters": 4, "eval_interval": 2, "out_dir": str(tmp_path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py",
               *[f"--{k}={v}" for k, v in cfg.items()]]
    for extra in (["--max_iters=2"], ["--init_from=resume"]):
        done = subprocess.run(command + extra, cwd=HERE, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    weights, ckpt = params(tmp_path)
    assert ckpt["iter_num"] == 4 and torch.isfinite(weights).all()


@on_cuda
@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_cuda_owt_small_step_fits_an_80gb_card(graph, float32):
    """Two bf16 steps of train.py at config/owt_small.py's per-GPU shape (32 x 1024 tokens, 50,258
    outputs): peak memory with the weights, EMA and AdamW state leaves headroom on 80 GB."""
    cfg = {**train.load_config([str(HERE / "config" / "owt_small.py")]), "graph": graph, "compile": False}
    data = types.SimpleNamespace(random_starts=lambda n, g: torch.zeros(n, dtype=torch.long),
                                 windows=lambda starts: torch.randint(50257, (len(starts), cfg["block_size"])))
    torch.cuda.reset_peak_memory_stats()
    run = train.Trainer({**cfg, "gradient_accumulation_steps": 1}, train.build_model(cfg, 50258 - (graph == "uniform")),
                        get_graph(graph, 50257), LogLinearNoise(), data, torch.device("cuda"))
    losses = torch.stack([run.step()[0] for _ in range(2)])
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"owt_small per-GPU step ({graph}): peak {peak:.1f} GiB (batch {cfg['batch_size']} x {cfg['block_size']})")
    assert torch.isfinite(losses).all() and peak < 70
