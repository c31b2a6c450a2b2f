"""Where a run computes: the device, its dtype and compilation, the peak FLOP/s that MFU is
measured against, the dtype of sampling's draws (float64 where the device has it), and the
random generators of each device: their states for checkpoints, and blocks that draw from their
own seeds without moving the training's streams.

Every choice is "auto" by default: CUDA, then Apple's MPS, then the CPU; bf16 autocast where the
hardware has bf16 units (CUDA cards of compute capability 8.0 or later, CPUs with avx512_bf16 or
AMX), float32 elsewhere; torch.compile on CUDA only (it gave no speed-up on the CPU, see
config/text8_tiny.py).
"""
import time

import torch


def pick_device(name="auto", local_rank=None):
    """The torch device called `name`: "auto" (CUDA, then Apple MPS, then the CPU), "cpu",
    "cuda" (GPU `local_rank`: torchrun's LOCAL_RANK of this process, None for a lone process, which
    takes GPU 0), "cuda:N" or "mps". Raises ValueError, naming the fix, for an unknown or unavailable
    device, and for "cuda:N" under torchrun (every process would compute on the same GPU)."""
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
    if kind == "cuda" and name != "cuda" and local_rank is not None:
        raise ValueError(f"device {name!r} under torchrun puts every process on one GPU: use --device=cuda "
                         "(or auto), and each process takes the GPU of its LOCAL_RANK")
    return torch.device(f"cuda:{local_rank or 0}" if name == "cuda" else name)


# Dense (no 2:4 sparsity) peak TFLOP/s from NVIDIA's datasheets, as (bf16 tensor cores, tf32 tensor
# cores, fp32 without tensor cores); half the figure "with sparsity" where that is all a datasheet
# prints. None: the card has no such units (before compute capability 8.0: no bf16, no tf32).
# Keyed by words of torch.cuda.get_device_name; the key with the most words wins: "NVIDIA H100 80GB
# HBM3" is the SXM card, "NVIDIA H100 PCIe" and "NVIDIA H100 NVL" are not, "L4" is not "L40" or "L40S".
DATASHEETS = {
    "B200": (2250, 1100, 75),  # HGX B200, 1000 W
    "H200": (989.5, 494.5, 67),  # SXM
    "H200 NVL": (835.5, 417.5, 60),
    "H100": (989.5, 494.5, 67),  # SXM
    "H100 PCIe": (756.5, 378, 51),
    "H100 NVL": (835.5, 417.5, 60),
    "H800": (989.5, 494.5, 67),  # SXM
    "H800 PCIe": (756.5, 378, 51),
    "H20": (148, 74, 44),
    "A100": (312, 156, 19.5),  # SXM4 and PCIe, 40 and 80 GB alike
    "A40": (149.7, 74.8, 37.4),
    "A10": (125, 62.5, 31.2),
    "L40S": (362.05, 183, 91.6),
    "L40": (181.05, 90.5, 90.5),
    "L4": (121, 60, 30.3),
    "RTX 4090": (165.2, 82.6, 82.6),  # with fp32 accumulation, as PyTorch's matmuls use
    "V100 SXM2": (None, None, 15.7),
    "V100 PCIe": (None, None, 14),
    "T4": (None, None, 8.1),
}


def datasheet(name):
    """The DATASHEETS entry of the card called `name` (torch.cuda.get_device_name), or None."""
    words = set(name.upper().replace("-", " ").split())
    keys = [k for k in DATASHEETS if set(k.upper().split()) <= words]
    return DATASHEETS[max(keys, key=lambda k: len(k.split()))] if keys else None


def peak_flops(device, dtype, n=2048, repeats=10):
    """Peak FLOP/s for MFU, of the arithmetic that `dtype` runs on. A CUDA card in DATASHEETS: its
    dense bf16 tensor-core figure for bfloat16 (its fp32 figure on a card without bf16 units, where
    bf16 matmuls run on the fp32 cores); for float32 its tf32 tensor-core figure where float32
    matmuls run in tf32 (torch.set_float32_matmul_precision "high" or "medium", as a run may set on
    CUDA), else its plain fp32 figure: a float32 run held to the bf16 peak, or a tf32 one to the
    fp32 peak, would misstate its MFU several times over. Any other device, or a card not in
    DATASHEETS (a note says so): measure_flops. bench.py uses this same function."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        figures = datasheet(name)
        if figures is not None:
            bf16, tf32, fp32 = figures
            if dtype == torch.bfloat16:
                return (bf16 or fp32) * 1e12
            return (tf32 if tf32 and torch.get_float32_matmul_precision() != "highest" else fp32) * 1e12
        print(f"note: {name} has no datasheet figure in device.py; its {str(dtype)[6:]} peak FLOP/s is "
              f"measured (a {n}^3 matmul), and MFU is relative to that")
    return measure_flops(device, dtype, n, repeats)


def measure_flops(device, dtype, n=2048, repeats=10):
    """The measured throughput of an n x n matmul in `dtype`: the FASTEST of `repeats` timings after
    a warm-up, since another load on the machine only ever slows a timing down (a median swings
    with it)."""
    # ones, not random numbers: a matmul's speed does not depend on the values, and the run's
    # generators stay untouched (a resumed run's dropout must continue exactly)
    a = torch.ones(n, n, device=device, dtype=dtype)
    b = torch.ones(n, n, device=device, dtype=dtype)
    for _ in range(2):
        (a @ b).sum().item()  # warm-up: the first calls of a dtype set up its kernels and threads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        (a @ b).sum().item()  # .item() waits for an asynchronous device (CUDA, MPS)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def pick_compile(setting, device):
    """torch.compile or not: "auto" compiles on CUDA only."""
    return device.type == "cuda" if setting == "auto" else setting


def pick_dtype(name, device):
    """The autocast dtype called `name`; "auto": bfloat16 where the device has bf16 units (a CUDA card
    of compute capability 8.0 or later, not torch.cuda.is_bf16_supported(), which also says yes on a
    V100 or T4, where bf16 is only emulated), else float32."""
    if name == "auto":
        bf16 = torch.cuda.get_device_capability(device) >= (8, 0) if device.type == "cuda" else (
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
