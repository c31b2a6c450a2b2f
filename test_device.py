"""device.py on CUDA cards this machine does not have (torch.cuda mocked): each card named gets its
own datasheet peak (H100 SXM, PCIe and NVL apart; L4, L40 and L40S apart), float32 is held to the
card's tf32 or fp32 figure and bf16 to its bf16 one, an unknown card's peak is measured and says
so, "auto" picks bf16 only on cards with bf16 units, and cuda:N is refused under torchrun.
"""
import pytest
import torch

import device
import train

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
