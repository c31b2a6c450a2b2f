"""The settings of a training run: every one with its default and meaning (DEFAULTS), config
files and --key=value overrides over them, and the checks that turn a mistake into one line.

A config file is plain Python assignments (config/*.py), read in order with the overrides:

    python train.py config/text8_tiny.py --batch_size=32 --dropout=0.1

An unknown key or a value of the wrong type stops with one line naming it (and the closest known
key); `python train.py --help` prints DEFAULTS with their comments, read from this file's source,
so the help and the defaults cannot disagree.
"""
import ast
import difflib
import os
import re

from graph import GRAPHS
from noise import NOISES
from prepare import fail

DEFAULTS = dict(
    # I/O
    out_dir="out",
    init_from="scratch",   # "scratch" | "resume" (out_dir/ckpt.pt) | "pretrained:<hub id or dir>"
    eval_interval=500,     # evaluate, print a sample and checkpoint every this many iterations
    ckpt_interval=0,       # also checkpoint every this many iterations; 0: only at evaluations
    eval_only=False,       # evaluate the ELBO once (EMA weights) and exit
    eval_split="val",      # "val" or "test"
    eval_batches=8,        # sequences evaluated = eval_batches * batch_size, spread over the split; 0: all
    eval_n_t=8,            # stratified t samples per sequence for the ELBO (the paper uses 1000)
    sample_steps=128,      # sampling steps of the sample printed at each evaluation
    log_interval=10,
    # data: data_dir/dataset/{train,val,test}.bin from prepare.py
    dataset="text8",
    data_dir="data",
    block_size=256,
    batch_size=16,         # sequences per micro-batch per process
    gradient_accumulation_steps=1,  # global: split across processes under torchrun
    train_tokens=0,        # >0: train on the first this many tokens only, repeated (epochs logged); 0: all
    # diffusion
    graph="absorb",        # "absorb" | "uniform"
    noise="loglinear",     # "loglinear" | "geometric"
    sampling_eps=1e-3,     # t ~ U[sampling_eps, 1]
    # model (the paper's small model; fine-tuning takes the pretrained model's shape)
    n_layer=12,
    n_head=12,
    n_embd=768,
    cond_dim=128,
    dropout=0.1,           # also replaces a pretrained model's rate when fine-tuning
    ar=False,              # True: the autoregressive twin: causal attention, no noise, next-token loss
    ar_input_mask=0.0,     # the twin's training inputs masked at this rate, as SEDD's are (targets clean)
    # optimiser (paper / release)
    learning_rate=3e-4,
    max_iters=400_000,
    warmup_iters=2500,
    decay_lr=False,        # the paper keeps lr constant after warmup; short runs gain from a cosine decay
    min_lr=3e-5,           # floor of the cosine decay (reached at max_iters)
    beta1=0.9,
    beta2=0.999,
    weight_decay=0.0,
    grad_clip=1.0,
    ema_decay=0.9999,
    # system
    device="auto",         # "auto" | "cpu" | "cuda" | "mps" (auto: cuda, then mps, then cpu)
    dtype="auto",          # "auto" | "float32" | "bfloat16" (autocast); auto: bf16 on CUDA, bf16 CPUs
    compile="auto",        # "auto" | True | False; auto: on for CUDA
    seed=1337,
)

def settings_help(path, name):
    """Every setting of the `name = dict(...)` block in the file `path` as --key=default and its
    comment, read from the source so that the help and the defaults cannot disagree."""
    source = open(path).read()
    block = source[source.index(f"{name} = dict(\n"):].split("\n)\n", 1)[0].splitlines()[1:]
    lines = []
    for line in block:
        line = line.strip()
        key_value = re.match(r"(\w+)=(.*?),\s*(#.*)?$", line)
        if key_value:
            key, value, comment = key_value.groups()
            lines.append(f"  --{key}={ast.literal_eval(value)!s:<14} {comment or ''}".rstrip())
        else:
            lines.append(line.lstrip("# "))
    return "\n".join(lines)


def set_key(cfg, key, value, origin):
    if key not in cfg:
        close = difflib.get_close_matches(key, cfg, n=1)
        fail(f"unknown config key {key!r} in {origin}" + (f" (did you mean {close[0]!r}?)" if close else "")
             + "; python train.py --help lists them")
    default = cfg[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    compile_flag = key == "compile" and isinstance(value, bool)  # "auto" or a bool
    if default is not None and type(value) is not type(default) and not compile_flag:
        fail(f"{key} in {origin} must be {type(default).__name__}, got {value!r}")
    cfg[key] = value


def load_config(argv):
    """DEFAULTS, then each argument in order: a config file (plain Python assignments) or
    --key=value; checked as a whole (check_config). -h / --help prints every setting. A config
    file may start from another with include("other.py") (a file in the same folder)."""
    if "-h" in argv or "--help" in argv:
        print("usage: python train.py [config/NAME.py ...] [--key=value ...]   (torchrun: several processes)\n"
              "Config files and overrides apply in order, over these defaults:\n"
              + settings_help(__file__, "DEFAULTS"))
        raise SystemExit(0)
    cfg = dict(DEFAULTS)
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                fail(f"write overrides as --key=value, not {arg!r}")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string such as --dataset=text8
            set_key(cfg, key, value, arg)
        else:
            if not os.path.isfile(arg):
                fail(f"config file {arg!r} not found (see config/)")
            namespace = {}
            folder = os.path.dirname(arg)
            namespace["include"] = lambda name: exec(open(os.path.join(folder, name)).read(), namespace)
            exec(open(arg).read(), namespace)
            for key, value in namespace.items():
                if not key.startswith("_") and key != "include":
                    set_key(cfg, key, value, arg)
    check_config(cfg)
    return cfg


def check_config(cfg):
    """The settings that would otherwise fail deep inside a run (or silently), as one line each."""
    choices = dict(graph=sorted(GRAPHS), noise=sorted(NOISES), eval_split=["val", "test"],
                   dtype=["auto", "float32", "bfloat16"], compile=["auto", True, False])
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            float16 = " (float16 would need loss scaling, which this loop does not do)"
            hint = float16 if cfg[key] == "float16" else ""
            fail(f"--{key}={cfg[key]} is not one of {allowed}{hint}")
    if not (cfg["init_from"] in ("scratch", "resume") or cfg["init_from"].startswith("pretrained:")):
        fail(f"init_from must be 'scratch', 'resume' or 'pretrained:<hub id or dir>', "
             f"not {cfg['init_from']!r}")
    for key in ("block_size", "batch_size", "gradient_accumulation_steps", "eval_interval", "log_interval",
                "eval_n_t", "sample_steps", "n_layer", "n_head", "n_embd", "cond_dim"):
        if cfg[key] < 1:
            fail(f"--{key} must be at least 1, not {cfg[key]}")
    if cfg["train_tokens"] and cfg["train_tokens"] < cfg["block_size"]:
        fail(f"--train_tokens={cfg['train_tokens']} holds no window of block_size={cfg['block_size']} tokens "
             f"(0 trains on the whole split)")
    if not 0 <= cfg["ar_input_mask"] < 1 or (cfg["ar_input_mask"] and not cfg["ar"]):
        fail(f"--ar_input_mask={cfg['ar_input_mask']} must be in [0, 1) and is for the autoregressive twin "
             f"(--ar=True); SEDD masks its inputs by its noise schedule")
    if cfg["ckpt_interval"] < 0:
        fail(f"--ckpt_interval must be 0 (checkpoint at evaluations only) or more, "
             f"not {cfg['ckpt_interval']}")
    if cfg["n_embd"] % cfg["n_head"] or (cfg["n_embd"] // cfg["n_head"]) % 2:
        fail(f"--n_head={cfg['n_head']} must divide --n_embd={cfg['n_embd']} into heads of even size "
             f"(rotary embeddings rotate pairs)")
    if cfg["max_iters"] < cfg["warmup_iters"] and cfg["init_from"] != "resume" and not cfg["eval_only"]:
        print(f"warning: max_iters={cfg['max_iters']} < warmup_iters={cfg['warmup_iters']}: the learning "
              f"rate never reaches {cfg['learning_rate']}")
