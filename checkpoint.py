"""A trained model on disk, in the layout of the official release (Hugging Face's): config.json
(the network and, for SEDD, the diffusion it was trained for: its graph and noise schedule), the
weights (model.safetensors or pytorch_model.bin), and from train.py also meta.json (the
tokenizer of the run's dataset).

load() is the one way every script opens a model: sampling.py, compare.py, the twin as a judge,
and fine-tuning (train.py --init_from=pretrained:DIR). export() writes one beside train.py's
ckpt.pt, which holds what resuming needs (optimiser, generators, counters: load_training_state).
"""
import json
import os
import shutil

import torch

from graph import get_graph
from model import SEDD, checkpoint_dir
from noise import noise_config, noise_from_config
from prepare import load_meta

GPT2_META = {"name": "GPT-2 BPE", "tokenizer": "gpt2", "n_tokens": 50257}  # the official checkpoints'


def load(name_or_dir, dropout=None, tokenizer=True):
    """(model, graph, noise, meta) of a training output directory or a hub id such as
    louaaron/sedd-small: the network in eval mode, the graph and noise schedule it was trained
    with (None for the autoregressive twin), and its tokenizer (the run's meta.json; without one,
    GPT-2 BPE, as the official checkpoints use). dropout replaces the checkpoint's rate;
    tokenizer=False skips the tokenizer (meta None), as fine-tuning brings its dataset's.
    Raises OSError, ValueError, RuntimeError or ImportError with a one-line reason."""
    path = checkpoint_dir(name_or_dir)
    model = SEDD.from_pretrained(path, dropout=dropout)
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    graph = noise = None
    n_tokens = model.bos  # the twin: every id below its start token
    if not model.config.causal:
        try:
            graph = get_graph(hf["graph"]["type"], hf["tokens"])
            noise = noise_from_config(hf["noise"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}/config.json has no valid noise schedule ({e})") from None
        n_tokens = graph.n_tokens
    if not tokenizer:
        return model, graph, noise, None
    has_meta = os.path.isfile(os.path.join(path, "meta.json"))
    meta = load_meta(path) if has_meta else GPT2_META
    if meta["n_tokens"] != n_tokens:
        assumed = "" if has_meta else f" (no meta.json in {path}, so GPT-2 BPE was assumed)"
        raise ValueError(f"the model has {n_tokens} tokens but the tokenizer of {meta['name']} has "
                         f"{meta['n_tokens']}{assumed}")
    return model, graph, noise, meta


def export(model, out_dir, graph, noise, meta_dir):
    """The model (train.py: its EMA weights) with its graph and noise (None for the twin) in the
    layout load() reads, with the meta.json of meta_dir, written to a temporary folder first and
    then moved into out_dir file by file."""
    tmp = os.path.join(out_dir, ".export")
    graph_name, schedule = (None, None) if graph is None else (graph.name, noise_config(noise))
    model.save_pretrained(tmp, graph_name, schedule)
    shutil.copy(os.path.join(meta_dir, "meta.json"), os.path.join(tmp, "meta.json"))
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    os.rmdir(tmp)


def save_atomic(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash before this line leaves the previous file intact


def load_training_state(out_dir):
    """What train.py --init_from=resume continues from: out_dir/ckpt.pt (weights, EMA, optimiser,
    generators, counters, config). Raises FileNotFoundError, or ValueError for a damaged file,
    with what can still be done."""
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"init_from='resume' but {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a cut or corrupted file fails in many ways: zip, pickle, end of file
        reason = str(e).split("\n")[0].split(". ")[0] or type(e).__name__  # not torch's advice after it
        raise ValueError(f"{path} is damaged ({reason}); nothing was changed. The EMA weights exported "
                         f"with it (config.json, pytorch_model.bin) can start a new run in another "
                         f"--out_dir with --init_from=pretrained:{out_dir}") from None
