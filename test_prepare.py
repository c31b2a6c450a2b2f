"""prepare.py: every corpus to token memmaps, written safely, on text the tests make (no
network): text8, your own text, the toy with a known entropy, GPT-2 BPE corpora, zero-shot sets.
"""
import importlib
import importlib.util
import itertools
import os
import sys
import types
import zipfile

import numpy as np
import pytest

import prepare


# ---------------------------------------------------------------- prepare.py

def text8_like(n, seed):
    return "".join(np.random.default_rng(seed).choice(list(" abcdefghijklmnopqrstuvwxyz"), size=n))


def write_zip(path, text, member="text8"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, text)
    return str(path)


def read_splits(out, splits=("train", "val", "test")):
    """meta.json, the splits' token arrays, and the text of all splits in order, decoded."""
    meta = prepare.load_meta(out)
    bins = {s: np.fromfile(os.path.join(out, s + ".bin"), dtype=meta["dtype"]) for s in splits}
    return meta, bins, prepare.get_tokenizer(meta)[1](np.concatenate(list(bins.values())).tolist())


def test_toy_language_and_its_entropy(tmp_path):
    """prepare.py toy: a Markov chain whose samples look like words; the entropy it records for
    windows of L tokens equals -sum p log2 p over all 14^3 windows of 3 (enumeration), and the
    corpus's transition frequencies are the chain's."""
    chars, P = prepare.toy_chain()
    assert np.allclose(P.sum(1), 1) and chars[0] == " "
    prepare.main(["toy", "--out_dir", str(tmp_path), "--n", "200000", "--block_size", "3"])
    meta, bins, text = read_splits(tmp_path / "toy")
    pi = np.linalg.matrix_power(P, 200)[0]  # the stationary law: every row of P^n converges to it
    windows = np.array(list(itertools.product(range(len(chars)), repeat=3)))
    p = pi[windows[:, 0]] * P[windows[:, 0], windows[:, 1]] * P[windows[:, 1], windows[:, 2]]
    p = p[p > 0]
    assert meta["entropy_bits_per_token"] == pytest.approx(-(p * np.log2(p)).sum() / 3, rel=1e-9)
    assert meta["entropy_first_bits"] == pytest.approx(-(pi * np.log2(pi)).sum(), rel=1e-9)
    ids = np.concatenate(list(bins.values()))
    counts = np.zeros_like(P)
    np.add.at(counts, (ids[:-1], ids[1:]), 1)
    assert np.abs(counts / counts.sum(1, keepdims=True) - P).max() < 0.02
    words = text.split()
    assert 3 < np.mean([len(w) for w in words]) < 6 and len(set(words)) > 1000


def test_text8_partial_corpus_refused_then_proportional_and_idempotent(tmp_path, capsys, monkeypatch):
    text = text8_like(10_000, 0)
    src, out = write_zip(tmp_path / "small.zip", text), tmp_path / "data"
    with pytest.raises(SystemExit, match="--proportional") as e:
        prepare.main(["text8", "--src", src, "--out_dir", str(out)])
    assert "10,000 characters" in str(e.value) and "100,000,000" in str(e.value)
    assert not (out / "text8" / "meta.json").exists()
    prepare.main(["text8", "--src", src, "--out_dir", str(out), "--proportional"])
    meta, _, decoded = read_splits(out / "text8")
    assert meta["chars"] == list(" abcdefghijklmnopqrstuvwxyz") and meta["n_tokens"] == 27 and decoded == text
    assert meta["counts"] == {"train": 9000, "val": 500, "test": 500} and meta["dtype"] == "uint16"
    assert "proportional" in meta["split"] and "not the standard" in meta["split"]
    assert prepare.get_tokenizer(meta)[0]("ab z") == [1, 2, 0, 26]
    # a finished dataset is not rebuilt, even from another source, unless --force
    train_bin = out / "text8" / "train.bin"
    before = (train_bin.read_bytes(), train_bin.stat().st_mtime_ns)
    src2 = write_zip(tmp_path / "other.zip", text8_like(10_000, 1))
    prepare.main(["text8", "--src", src2, "--out_dir", str(out), "--proportional"])
    assert "already prepared" in capsys.readouterr().out
    assert (train_bin.read_bytes(), train_bin.stat().st_mtime_ns) == before
    prepare.main(["text8", "--src", src2, "--out_dir", str(out), "--proportional", "--force"])
    assert read_splits(out / "text8")[2] == text8_like(10_000, 1) and not list((out / "text8").glob("*.tmp"))
    # the standard split of a full corpus (here 1,000 characters), unzipped corpora accepted too
    monkeypatch.setattr(prepare, "TEXT8_SPLIT", (900, 50, 50))
    (tmp_path / "text8.txt").write_text(text8_like(1000, 2))
    prepare.main(["text8", "--src", str(tmp_path / "text8.txt"), "--out_dir", str(tmp_path / "full")])
    meta = prepare.load_meta(tmp_path / "full" / "text8")
    assert meta["counts"] == {"train": 900, "val": 50, "test": 50} and meta["split"].startswith("standard")


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (("abc", "enwik8"), "no member named 'text8'"),
    (("hello World",), "other than a-z and space"), (b"PK\x03\x04 truncated", "not a valid zip")])
def test_text8_bad_input(tmp_path, content, message):
    src = tmp_path / "text8.zip"
    if isinstance(content, bytes):
        src.write_bytes(content)
    elif content:
        write_zip(src, *content)
    with pytest.raises(SystemExit, match=message):
        prepare.main(["text8", "--src", str(src), "--out_dir", str(tmp_path), "--proportional"])
    assert not (tmp_path / "text8" / "meta.json").exists()


def test_chars_round_trip_errors_and_large_vocabulary(tmp_path):
    text = "Où est la gare ?\r\nÀ gauche, 200 m — merci !\n" * 30
    (tmp_path / "french.txt").write_bytes(text.encode("utf-8"))
    prepare.main(["chars", "--src", str(tmp_path / "french.txt"), "--out_dir", str(tmp_path)])
    meta, bins, decoded = read_splits(tmp_path / "french")
    assert meta["chars"] == sorted(set(text)) and meta["n_tokens"] == len(set(text)) and decoded == text
    encode = prepare.get_tokenizer(meta)[0]
    assert encode(text) == np.concatenate(list(bins.values())).tolist()
    with pytest.raises(ValueError, match="'€'"):
        encode("5 €")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SystemExit, match="empty.txt is empty"):
        prepare.main(["chars", "--src", str(tmp_path / "empty.txt"), "--out_dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="python prepare.py chars"):
        prepare.load_meta(tmp_path / "empty")
    (tmp_path / "big.txt").write_text("".join(map(chr, range(0x10000, 0x10000 + 70_000))), encoding="utf-8")
    prepare.main(["chars", "--src", str(tmp_path / "big.txt"), "--out_dir", str(tmp_path)])
    meta, bins, _ = read_splits(tmp_path / "big")  # 70,000 distinct characters: uint32
    assert meta["dtype"] == "uint32" and bins["test"].max() == 69_999


def test_interrupted_rebuild_never_looks_finished(tmp_path):
    src, out = tmp_path / "a.txt", tmp_path / "a"
    src.write_text("hello world\n" * 100)
    prepare.main(["chars", "--src", str(src), "--out_dir", str(tmp_path)])

    def killed():  # a --force rebuild killed while writing
        yield np.zeros(10, dtype=np.uint16)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        prepare.write_dataset(str(out), {"train": killed()}, prepare.load_meta(out))
    assert not (out / "meta.json").exists() and (out / "train.bin.tmp").exists()
    with pytest.raises(SystemExit, match="no meta.json"):  # old bins, no meta: not silently reused
        prepare.main(["chars", "--src", str(src), "--out_dir", str(tmp_path)])
    prepare.main(["chars", "--src", str(src), "--out_dir", str(tmp_path), "--force"])
    assert read_splits(out)[2] == src.read_text()


def test_owt_path_packs_documents_with_eot(tmp_path, gpt2_bpe):
    docs = ["Hello world.", "A document mentioning <|endoftext|> as text.", "Ünïcode ☃\n\nend"]
    prepare.write_gpt2_dataset(str(tmp_path / "owt"), {"train": [{"text": d} for d in docs], "val": docs[:1]},
                               {"name": "owt-test", "source": "test", "split": "test"})
    expected = [t for d in docs for t in gpt2_bpe.encode_ordinary(d) + [50256]]
    meta, bins, _ = read_splits(tmp_path / "owt", ("train", "val"))
    assert (bins["train"].tolist() == expected and bins["train"][-1] == 50256
            and (bins["train"] == 50256).sum() == 3)
    assert bins["val"].tolist() == expected[:expected.index(50256) + 1]  # the first document
    assert meta["tokenizer"] == "gpt2" and meta["n_tokens"] == 50257 and meta["dtype"] == "uint16"
    encode, decode = prepare.get_tokenizer(meta)
    assert decode(bins["train"].tolist()) == "".join(d + "<|endoftext|>" for d in docs)
    # the, space, th, ing (merges by rank: th before " t", in before ing), then the separator
    assert encode("the thing<|endoftext|>") == [257, 32, 256, 262, 50256]


def test_detokenizers():
    wt = prepare.wikitext_detokenizer
    assert wt(" = = Early life = = \n") == " == Early life ==\n"
    assert (wt("The 2 @,@ 000 @-@ strong army , led by Smith 's son ( John ) , won 3 @.@ 5 % . \n")
            == "The 2,000-strong army, led by Smith's son (John), won 3.5 %.\n")
    assert (prepare.ptb_detokenizer("the firm 's stock fell N N to $ N and it does n't <unk> it")
            == "the firm's stock fell 1 1 to $1 and it doesn't ? it")
    assert (prepare.lm1b_detokenizer("Visit http : / / example.com , it costs $ 5 today .")
            == "Visit http://example.com, it costs $5 today.")
    assert prepare.lm1b_detokenizer('He said " fine " , then left') == 'He said "fine", then left'
    assert prepare.lambada_detokenizer("\u201cHi,\u201d she said.  \n") == '\n"Hi," she said.'


def test_zeroshot_path_writes_1024_token_rows(tmp_path, gpt2_bpe):
    lines = ["", " = Valkyria Chronicles III = \n", "",
             " The game 's battle system , the BliTZ system , is carried over directly from "
             "Valkyria Chronicles . During missions , players select each unit using a top @-@ "
             "down perspective of the battlefield map ( about 1 @,@ 000 units ) . \n"] * 40
    detok, info = prepare.wikitext_detokenizer, {"name": "wt", "source": "test", "split": "test"}
    meta = prepare.write_gpt2_dataset(str(tmp_path / "wt"), {"test": lines}, info, detokenizer=detok,
                                      block_size=1024)
    stream = [t for l in lines for t in gpt2_bpe.encode_ordinary(detok(l)) + [50256]]
    rows = np.fromfile(tmp_path / "wt" / "test.bin", dtype=np.uint16).reshape(-1, 1024)
    assert len(rows) == len(stream) // 1024 >= 2 and len(stream) % 1024 > 0  # tail dropped
    assert rows.ravel().tolist() == stream[:rows.size]
    assert meta["block_size"] == 1024 and meta["counts"] == {"test": rows.size}
    with pytest.raises(SystemExit, match="fewer than 1024 tokens"):
        prepare.write_gpt2_dataset(str(tmp_path / "tiny"), {"test": lines[:4]}, info, block_size=1024)


def test_zeroshot_sets_read_their_split(tmp_path, monkeypatch, gpt2_bpe):
    """WikiText-2's test split is WikiText-103's text, so wikitext2 reads its train split."""
    asked = []
    fake = types.ModuleType("datasets")  # the Hugging Face package, offline: each set one repeated row
    fake.Dataset = type("Dataset", (), {})
    fake.load_dataset = lambda repo, config, revision=None, split=None: (
        asked.append((config, split)) or [{"text": f" the {config} {split} text \n"}] * 400)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    for name in ("wikitext2", "wikitext2_test", "wikitext103"):
        prepare.main(["zeroshot", "--set", name, "--out_dir", str(tmp_path)])
    assert asked == [("wikitext-2-raw-v1", "train"), ("wikitext-2-raw-v1", "test"),
                     ("wikitext-103-raw-v1", "test")]
    text = lambda name: read_splits(tmp_path / name, ("test",))[2]
    assert text("wikitext2").startswith(" the wikitext-2-raw-v1 train text\n<|endoftext|>")
    assert ("train split" in prepare.load_meta(tmp_path / "wikitext2")["source"]
            and text("wikitext103") != text("wikitext2"))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets installed")
@pytest.mark.parametrize("argv", [["owt"], ["zeroshot", "--set", "ptb"]])
def test_hub_commands_say_how_to_install_datasets(tmp_path, argv):
    with pytest.raises(SystemExit, match="pip install datasets"):
        prepare.main(argv + ["--out_dir", str(tmp_path)])
