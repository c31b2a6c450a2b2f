"""Where a run computes: the device, its dtype and compilation, the peak FLOP/s that MFU is
measured against, the dtype of sampling's draws (float64 where the device has it), and the
random generators of each device: their states for checkpoints, and blocks that draw from their
own seeds without moving the training's streams.

Every choice is "auto" by default: CUDA, then Apple's MPS, then the CPU; bf16 autocast where the
hardware has bf16 (CUDA, CPUs with avx512_bf16 or AMX), float32 elsewhere; torch.compile on CUDA
only (it gave no speed-up on the CPU, see config/text8_tiny.py).
"""
import time

import torch


def pick_device(name="auto", index=0):
    """The torch device called `name`: "auto" (CUDA, then Apple MPS, then the CPU), "cpu",
    "cuda" (GPU `index`, e.g. the process's local rank), "cuda:N" or "mps". Raises ValueError,
    naming the fix, for an unknown or unavailable device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda (or cuda:N) or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this machine has no CUDA GPU that PyTorch can use "
                         "(torch.cuda.is_available() is False); use device auto or cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: Apple's MPS is not available here; use device auto or cpu")
    return torch.device(f"cuda:{index}" if name == "cuda" else name)


def peak_flops(device, dtype, n=2048, repeats=10):
    """Peak FLOP/s for MFU: the vendor's dense bf16 figure on CUDA; on CPU (or MPS) the measured
    throughput of an n x n matmul in `dtype`: the FASTEST of `repeats` timings after a warm-up,
    since another load on the machine only ever slows a timing down (a median swings with it).
    bench.py uses this same function."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12, "4090": 165e12}
        return next((v for k, v in table.items() if k in name), 312e12)
    # ones, not random numbers: a matmul's speed does not depend on the values, and the run's
    # generators stay untouched (a resumed run's dropout must continue exactly)
    a = torch.ones(n, n, device=device, dtype=dtype)
    b = torch.ones(n, n, device=device, dtype=dtype)
    for _ in range(2):
        (a @ b).sum().item()  # warm-up: the first calls of a dtype set up its kernels and threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        (a @ b).sum().item()  # .item() waits for an asynchronous device (MPS)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def pick_compile(setting, device):
    """torch.compile or not: "auto" compiles on CUDA only."""
    return device.type == "cuda" if setting == "auto" else setting


def pick_dtype(name, device):
    if name == "auto":
        bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else (
            device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        name = "bfloat16" if bf16 else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def rng_state(device):
    """This process's own generators: the CPU's, and the device's (dropout on CUDA or MPS)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


def fork_rng(device):
    """The process's generators (CPU and the device's) restored after the block: evaluations and
    samples draw from their own seeds without moving the training's dropout stream."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device], device_type=device.type)


def draw_dtype(device):
    """float64 for sampling's probabilities and draws (see sample_categorical), or float32 on a
    device that has no float64, such as Apple's MPS. Asks the device itself."""
    try:
        torch.zeros(1, dtype=torch.float64, device=device)
        return torch.float64
    except (TypeError, RuntimeError):
        return torch.float32
