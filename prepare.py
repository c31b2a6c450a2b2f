"""Prepare datasets: turn a text corpus into flat arrays of token ids on disk, and read them back.

Every dataset becomes data/<name>/{train,val,test}.bin: each split is ONE long stream of
token ids (uint16, or uint32 for vocabularies above 65,536 symbols) that Data (below) opens with
np.memmap and reads windows from, so no corpus ever has to fit in memory. Beside them,
meta.json says how to turn ids back into text:

    name, tokenizer ("chars" or "gpt2"), chars (the vocabulary, chars only), n_tokens
    (vocabulary size WITHOUT the MASK token: the absorbing graph adds it as id n_tokens),
    eot (gpt2 only), dtype, counts (tokens per split), source, split (the rule used),
    block_size (zero-shot sets only: the test stream is rows of this many tokens)

    python prepare.py text8 [--src text8.zip] [--proportional]  27 characters, 90M/5M/5M split
    python prepare.py chars --src input.txt [--name NAME]       your own text, character level
    python prepare.py toy                                       offline, with an exactly known entropy
    python prepare.py owt [--num_proc 8]                        OpenWebText, GPT-2 BPE
    python prepare.py zeroshot --set lambada|wikitext2|wikitext103|ptb|lm1b|...|all   (Table 1)

Every command takes --out_dir (default data) and --force. owt and zeroshot need the
`datasets` package (pip install datasets). meta.json is written last, after every .bin is
complete and renamed into place: a directory with a meta.json is a finished dataset, which is
never rebuilt without --force, and an interrupted run leaves only *.tmp files behind.
"""
import argparse
import functools
import json
import os
import re
import sys
import urllib.request
import zipfile

import numpy as np
import torch

from progress import Progress

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_CHARS = " abcdefghijklmnopqrstuvwxyz"  # fixed order: ids 0..26 whatever the file holds
TEXT8_SPLIT = (90_000_000, 5_000_000, 5_000_000)  # the standard split of the 100M characters
OWT_REPO = "Skylion007/openwebtext"
ZEROSHOT_BLOCK = 1024  # GPT-2's context: the paper scores 1024-token rows, no sliding window


def fail(msg):
    """Stop a command-line tool (this one, train.py, sampling.py, bench.py) on a mistake the user
    can fix: one readable line naming the problem and the fix, exit status 1, no traceback."""
    raise SystemExit(f"{os.path.basename(sys.argv[0])}: error: {msg}")


# -----------------------------------------------------------------------------
# tokenizers: also used by train.py and sampling.py to turn ids back into text

@functools.lru_cache(maxsize=None)
def gpt2_encoding():
    """GPT-2's byte-pair encoding as a tiktoken Encoding (<|endoftext|> = 50256), online or off.

    tiktoken's "r50k_base" is the same encoding as "gpt2" (same ranks, split pattern and
    <|endoftext|>) stored in ONE file, r50k_base.tiktoken, which a machine without internet can
    provide: copy it into a directory under the name 0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4
    (the sha1 of its URL) and set TIKTOKEN_CACHE_DIR to that directory. ("gpt2" needs two other
    files from the network, and tries to fetch them with no timeout.)"""
    import tiktoken
    try:
        return tiktoken.get_encoding("r50k_base")
    except Exception as e:
        raise RuntimeError(
            "cannot load GPT-2's BPE (tiktoken's r50k_base): no network? Offline: copy "
            "r50k_base.tiktoken into a directory as 0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4 and set "
            "TIKTOKEN_CACHE_DIR to it") from e


def load_meta(data_dir):
    """The meta.json of a prepared dataset directory, e.g. load_meta("data/text8")."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        name = os.path.basename(os.path.normpath(data_dir))
        known = {"text8": "text8", "openwebtext": "owt", "toy": "toy"}
        cmd = known.get(name, f"chars --src FILE --name {name}")
        cmd = f"zeroshot --set {name}" if name in ZEROSHOT else cmd
        raise FileNotFoundError(f"{path} not found: prepare the dataset first with "
                                f"`python prepare.py {cmd}`")
    with open(path) as f:
        return json.load(f)


class Data:
    """A prepared split read back: random windows of block_size tokens from its token memmap, for
    training, and fixed windows spread over it, for evaluation."""

    def __init__(self, cfg, split):
        self.dir = os.path.join(cfg["data_dir"], cfg["dataset"])
        try:
            self.meta = load_meta(self.dir)
        except FileNotFoundError as e:
            fail(e)
        self.path = os.path.join(self.dir, f"{split}.bin")
        if not os.path.exists(self.path):
            fail(f"{self.path} not found: prepare the {split} split with prepare.py")
        self.dtype, self.L = np.dtype(self.meta["dtype"]), cfg["block_size"]
        self.n = os.path.getsize(self.path) // self.dtype.itemsize
        if self.n < self.L:
            fail(f"{self.path} has {self.n} tokens, fewer than block_size = {self.L}")
        if split == "train" and cfg["train_tokens"]:  # limited unique data, repeated for many epochs
            self.n = min(self.n, cfg["train_tokens"])

    def windows(self, starts):
        """The windows that begin at `starts` [B] (a LongTensor): [B, block_size] int64, read in
        one gather (starts[:, None] + arange(L) indexes the file: no Python loop over windows)."""
        data = np.memmap(self.path, dtype=self.dtype, mode="r")  # reopened per batch: no memory growth
        return torch.from_numpy(data[starts.numpy()[:, None] + np.arange(self.L)].astype(np.int64))

    def random_starts(self, n, generator):
        # n - L + 1 possible starts: the last window ends at the last token
        return torch.randint(self.n - self.L + 1, (n,), generator=generator)

    def eval_batches(self, n_seq, batch_size):
        """Fixed windows aligned to multiples of block_size (the rows of zero-shot sets), spread
        evenly over the split, so every evaluation sees the same sequences."""
        rows = self.n // self.L
        n_seq = rows if n_seq <= 0 else min(n_seq, rows)
        starts = torch.arange(n_seq) * (rows // n_seq) * self.L
        return [self.windows(starts[i:i + batch_size]) for i in range(0, n_seq, batch_size)]


def get_tokenizer(meta):
    """(encode, decode) for a dataset: encode(str) -> list[int], decode(list[int]) -> str.

    Give decode Python ints (tensor.tolist()); encode raises ValueError on unknown characters."""
    if meta["tokenizer"] == "gpt2":
        enc = gpt2_encoding()
        # a prompt may spell the document separator as <|endoftext|>; corpora never do (see below)
        return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode
    chars = meta["chars"]
    stoi = {c: i for i, c in enumerate(chars)}

    def encode(s):
        unknown = sorted(set(s) - stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary of {meta['name']} "
                             f"({len(chars)} characters): {unknown}")
        return [stoi[c] for c in s]

    def decode(ids):
        return "".join(chars[i] for i in ids)
    return encode, decode


# -----------------------------------------------------------------------------
# writing a dataset: safe to interrupt, never silently overwritten

def already_prepared(out, force):
    """True (after saying so) if `out` holds a finished dataset that --force was not given for."""
    if force:
        return False
    if os.path.exists(os.path.join(out, "meta.json")):
        print(f"{out} is already prepared ({out}/meta.json exists); pass --force to rebuild it")
        return True
    bins = [f for f in ("train.bin", "val.bin", "test.bin")
            if os.path.exists(os.path.join(out, f))]
    if bins:  # an interrupted --force rebuild, or files not written by prepare.py: don't touch
        fail(f"{out} holds {bins} but no meta.json; pass --force to replace them")
    return False


def write_dataset(out, splits, meta, block_size=None):
    """Stream each split's token chunks into <out>/<split>.bin, then write meta.json.

    splits: {split name: iterable of integer arrays}, concatenated in order. block_size: keep a
    whole number of rows of that many tokens, dropping the tail. Returns the meta written."""
    dtype = np.dtype(np.uint16 if meta["n_tokens"] <= 2**16 else np.uint32)
    os.makedirs(out, exist_ok=True)
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(meta_path):  # --force: unmark the old dataset before any of its files change
        os.remove(meta_path)
    counts = {}
    for split, chunks in splits.items():
        n = 0
        with open(os.path.join(out, split + ".bin.tmp"), "wb") as f:
            for chunk in chunks:
                chunk = np.asarray(chunk, dtype=dtype)
                f.write(chunk.tobytes())
                n += chunk.size
            if block_size:
                n -= n % block_size
                f.truncate(n * dtype.itemsize)
        if n == 0:
            fail(f"split {split!r} of {out} would be empty" +
                 (f" (fewer than {block_size} tokens)" if block_size else " (too little text)"))
        counts[split] = n
    for split in splits:  # all complete: move them into place, then mark the dataset finished
        os.replace(os.path.join(out, split + ".bin.tmp"), os.path.join(out, split + ".bin"))
    meta = {**meta, "dtype": dtype.name, "counts": counts}
    if block_size:
        meta["block_size"] = block_size
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    os.replace(meta_path + ".tmp", meta_path)
    print(f"wrote {out}: " + ", ".join(f"{s} {n:,} tokens" for s, n in counts.items()) +
          f" ({dtype.name}, vocabulary {meta['n_tokens']:,}; split: {meta['split']})")
    return meta


def proportional(n):
    """Split sizes 90% / 5% / 5% of n (test takes the rounding remainder)."""
    n_train, n_val = int(0.9 * n), int(0.05 * n)
    return n_train, n_val, n - n_train - n_val


def char_splits(ids, sizes):
    a, b = sizes[0], sizes[0] + sizes[1]
    return {"train": [ids[:a]], "val": [ids[a:b]], "test": [ids[b:]]}


# -----------------------------------------------------------------------------
# text8: 100M characters of cleaned Wikipedia, 27 characters

def download(url, path):
    if os.path.exists(path):  # complete: downloads are renamed into place only when finished
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    print(f"downloading {url} to {path}")
    try:
        with urllib.request.urlopen(url) as response, open(path + ".tmp", "wb") as f:
            bar = Progress(int(response.headers.get("Content-Length", 0)) / 1e6, "MB downloaded")
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar(f.tell() / 1e6)
    except OSError as e:
        fail(f"could not download {url} ({e}). Without internet, fetch it elsewhere and pass "
             f"--src PATH/TO/text8.zip")
    os.replace(path + ".tmp", path)
    return path


def read_text8(src):
    if not os.path.isfile(src):
        fail(f"--src {src}: no such file")
    if zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as z:
            if "text8" not in z.namelist():
                fail(f"{src} has no member named 'text8' (it has {z.namelist()[:5]}); "
                     f"text8.zip holds a single file text8")
            return z.read("text8")
    if src.endswith(".zip"):
        fail(f"{src} is not a valid zip archive (an interrupted download?)")
    with open(src, "rb") as f:  # the raw, unzipped corpus
        return f.read()


def prepare_text8(args):
    out = os.path.join(args.out_dir, "text8")
    if already_prepared(out, args.force):
        return
    src = args.src or download(TEXT8_URL, os.path.join(out, "text8.zip"))
    data = np.frombuffer(read_text8(src), dtype=np.uint8)
    # bytes -> ids in one vectorised pass; a byte outside the alphabet maps to 255
    lut = np.full(256, 255, dtype=np.uint8)
    lut[np.frombuffer(TEXT8_CHARS.encode(), dtype=np.uint8)] = np.arange(len(TEXT8_CHARS))
    ids = lut[data]
    bad = np.unique(data[ids == 255])
    if bad.size:
        fail(f"{src} holds bytes other than a-z and space, e.g. {bytes(bad[:10].tolist())!r}; "
             f"text8 is lower-case letters and single spaces only")
    n = len(ids)
    if n == sum(TEXT8_SPLIT):
        sizes = TEXT8_SPLIT
        rule = "standard text8 split: {:,} / {:,} / {:,} characters".format(*sizes)
    elif not args.proportional:
        fail(f"{src} holds {n:,} characters, not the {sum(TEXT8_SPLIT):,} of the full text8 "
             f"corpus, so the standard 90M / 5M / 5M split does not apply. Pass --proportional "
             f"to split it 90% / 5% / 5% instead (meta.json then records that it is not the "
             f"standard split; quote results on it as such)")
    else:
        sizes = proportional(n)
        rule = f"proportional 90/5/5 of {n:,} characters (not the standard text8 split)"
    write_dataset(out, char_splits(ids, sizes), {
        "name": "text8", "tokenizer": "chars", "chars": list(TEXT8_CHARS),
        "n_tokens": len(TEXT8_CHARS), "source": os.path.abspath(src) if args.src else TEXT8_URL,
        "split": rule})


# -----------------------------------------------------------------------------
# chars: any UTF-8 text file as a character-level dataset

def prepare_chars(args):
    if not os.path.isfile(args.src):
        fail(f"--src {args.src}: no such file")
    name = args.name or os.path.splitext(os.path.basename(args.src))[0]
    out = os.path.join(args.out_dir, name)
    if already_prepared(out, args.force):
        return
    try:  # newline="": keep the file's characters exactly, \r included
        with open(args.src, encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        fail(f"{args.src} is not UTF-8 text ({e})")
    if not text:
        fail(f"{args.src} is empty: there is nothing to learn from")
    # code points -> ids; np.unique sorts, so the vocabulary is sorted(set(text))
    vocab, ids = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32),
                           return_inverse=True)
    write_dataset(out, char_splits(ids, proportional(len(ids))), {
        "name": name, "tokenizer": "chars", "chars": [chr(c) for c in vocab],
        "n_tokens": len(vocab), "source": os.path.abspath(args.src),
        "split": f"first 90% / next 5% / last 5% of {len(ids):,} characters"})


# -----------------------------------------------------------------------------
# toy: an offline language whose entropy is known exactly

TOY_VOWELS, TOY_CONSONANTS = "aeiou", "bdklmnst"


def toy_chain():
    """The toy language: a first-order Markov chain over space, 5 vowels and 8 consonants whose
    samples look like words ("bato kinu sela"). After a space comes a consonant (0.8) or a vowel;
    after a consonant a vowel (0.9) or a consonant; after a vowel a consonant (0.6), a space
    (0.35) or a vowel; uniformly within each class. Returns (characters, transition matrix P with
    P[a, b] = p(next b | a))."""
    chars = " " + TOY_VOWELS + TOY_CONSONANTS
    kind = ["space"] + ["vowel"] * len(TOY_VOWELS) + ["consonant"] * len(TOY_CONSONANTS)
    follow = {"space": {"consonant": 0.8, "vowel": 0.2}, "consonant": {"vowel": 0.9, "consonant": 0.1},
              "vowel": {"consonant": 0.6, "space": 0.35, "vowel": 0.05}}
    P = np.array([[follow[kind[a]].get(kind[b], 0.0) / kind.count(kind[b]) for b in range(len(chars))]
                  for a in range(len(chars))])
    return chars, P


def markov_corpus(P, n, seed=0):
    """n tokens of the stationary Markov chain with transition matrix P, and its entropy in bits:
    (H of the first token, the entropy rate per later token). A window of L tokens of the
    stream has entropy H_first + (L - 1) H_rate bits exactly."""
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(abs(w - 1))])
    pi /= pi.sum()
    H = lambda p: -sum(x * np.log2(x) for x in p if x > 0)
    rng, cum = np.random.default_rng(seed), P.cumsum(1)
    ids, u = np.empty(n, dtype=np.int64), rng.random(n)
    ids[0] = np.searchsorted(pi.cumsum(), u[0])
    for i in range(1, n):
        ids[i] = min(np.searchsorted(cum[ids[i - 1]], u[i], side="right"), len(P) - 1)
    return ids, H(pi), sum(pi[a] * H(P[a]) for a in range(len(P)))


def prepare_toy(args):
    out = os.path.join(args.out_dir, "toy")
    if already_prepared(out, args.force):
        return
    chars, P = toy_chain()
    ids, h_first, h_rate = markov_corpus(P, args.n, args.seed)
    L = args.block_size
    write_dataset(out, char_splits(ids, proportional(len(ids))), {
        "name": "toy", "tokenizer": "chars", "chars": list(chars), "n_tokens": len(chars),
        "source": f"prepare.py toy: the Markov chain of prepare.toy_chain, seed {args.seed}",
        "split": f"first 90% / next 5% / last 5% of {len(ids):,} characters",
        "entropy_bits_per_token": (h_first + (L - 1) * h_rate) / L, "entropy_block_size": L,
        "entropy_first_bits": h_first, "entropy_rate_bits": h_rate})
    print(f"entropy: {(h_first + (L - 1) * h_rate) / L:.4f} bits per token in windows of {L} "
          f"({h_rate:.4f} bits per token in the long run)")


# -----------------------------------------------------------------------------
# GPT-2 BPE corpora: documents -> one packed stream with EOT after every document

def tokenize_gpt2(docs, key="text", detokenizer=None, num_proc=1):
    """Yield uint16 token arrays: each document's GPT-2 tokens followed by EOT, in order.

    docs: a `datasets.Dataset` with a `key` column (tokenised by a multiprocess map, which shows
    a progress bar and caches its result on disk), or any iterable of strings or of dicts."""
    enc = gpt2_encoding()

    def encode(text):
        if detokenizer is not None:
            text = detokenizer(text)
        # encode_ordinary: a document containing the text "<|endoftext|>" stays plain text, so
        # the only EOTs in the stream are the separators appended here
        return np.array(enc.encode_ordinary(text) + [enc.eot_token], dtype=np.uint16)

    datasets = sys.modules.get("datasets")
    if datasets is not None and isinstance(docs, datasets.Dataset):
        # uint16 arrays keep the on-disk cache 4x smaller than Python ints (int64)
        tokens = docs.map(lambda doc: {"ids": encode(doc[key])}, remove_columns=docs.column_names,
                          num_proc=num_proc, desc="tokenizing")
        for batch in tokens.with_format("numpy").iter(batch_size=4096):
            yield np.concatenate(list(batch["ids"]))
    else:
        for doc in docs:
            yield encode(doc if isinstance(doc, str) else doc[key])


def write_gpt2_dataset(out, docs_by_split, meta, key="text", detokenizer=None, num_proc=1,
                       block_size=None):
    """Tokenise each split's documents (see tokenize_gpt2) and write them with write_dataset."""
    enc = gpt2_encoding()
    splits = {s: tokenize_gpt2(d, key, detokenizer, num_proc) for s, d in docs_by_split.items()}
    meta = {"tokenizer": "gpt2", "n_tokens": enc.n_vocab, "eot": enc.eot_token, **meta}
    return write_dataset(out, splits, meta, block_size)


def require_datasets():
    try:
        import datasets
    except ImportError:
        fail("this command loads its corpus with Hugging Face `datasets`: pip install datasets")
    return datasets


def prepare_owt(args):
    out = os.path.join(args.out_dir, "openwebtext")
    if already_prepared(out, args.force):
        return
    datasets = require_datasets()
    # OpenWebText (8,013,769 documents, ~9B tokens; tens of GB in the Hugging Face cache). The main
    # branch of Skylion007/openwebtext holds parquet shards since its loading script was removed
    # (datasets>=4 refuses scripts: "Dataset scripts are no longer supported, but found
    # openwebtext.py"). Not the auto-converted refs/convert/parquet branch: for a corpus this
    # large that conversion may hold only a prefix of the data.
    ds = datasets.load_dataset(OWT_REPO, split="train", num_proc=args.num_proc)
    # OpenWebText has no official split: hold out 0.05% of the documents (~4,000, ~4M tokens),
    # with nanoGPT's seed, as its validation set
    ds = ds.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    # Documents are packed into one stream with EOT between them; training draws random
    # 1024-token windows from it, which may span documents, as GPT-2 and SEDD train.
    write_gpt2_dataset(out, {"train": ds["train"], "val": ds["test"]}, {
        "name": "openwebtext", "source": f"{OWT_REPO} (Hugging Face, parquet)",
        "split": "val = 0.05% of the documents (train_test_split test_size=0.0005, seed=2357)"},
        num_proc=args.num_proc)


# -----------------------------------------------------------------------------
# zero-shot test sets (paper Table 1), detokenized as in the SEDD release for GPT-2 evaluation

def wikitext_detokenizer(s):
    """Undo WikiText's tokenisation (' @-@ ', spaces around punctuation and brackets)."""
    # The release also applies re.sub(r"/' [0-9]/", ...), whose slashes are literal characters,
    # so it matches (almost) nothing and would corrupt what it does match; left out.
    s = s.replace("s '", "s'")
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                 (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        s = s.replace(a, b)
    # brackets and quotes hug their contents
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"),
                 (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        s = s.replace(a, b)
    return s


def ptb_detokenizer(s):
    """Undo PTB's tokenisation; its number token N becomes 1 and <unk> becomes ?."""
    for a, b in ((" 's", "'s"), ("s ' ", "s' "), (" n't", "n't"), (" \n ", "\n"), ("\\/", "/")):
        s = s.replace(a, b)
    s = re.sub(r"(?<= )N(?= )", "1", s)  # every " N " (the release repeats a replace 10 times)
    return s.replace("$ 1", "$1").replace("# 1", "#1").replace("<unk>", "?")


def lm1b_detokenizer(s):
    """Undo One Billion Words' tokenisation (spaces around punctuation, quotes, URLs)."""
    s = s.replace("http : / / ", "http://").replace("https : / / ", "https://")
    s = re.sub(r" '(\w+)", r"'\1", s)
    s = re.sub(r" (\w+) \. ", r" \1. ", s)
    s = re.sub(r" (\w+) \.$", r" \1.", s)
    s = s.replace(" ? ", "? ")
    s = re.sub(r" \?$", "?", s)
    s = s.replace(" ! ", "! ")
    s = re.sub(r" \!$", "!", s)
    for a, b in ((" , ", ", "), (" : ", ": "), (" ; ", "; "), (" / ", "/")):
        s = s.replace(a, b)
    s = re.sub(r"\" ([^\"]+) \"", r'"\1"', s)
    s = re.sub(r"' ([^']+) '", r"'\1'", s)
    s = re.sub(r"\( ([^\(\)]+) \)", r"(\1)", s)
    s = re.sub(r"\[ ([^\[\]]+) \]", r"[\1]", s)
    return s.replace("$ ", "$").replace("\u00a3 ", "\u00a3")


def lambada_detokenizer(s):
    """Straight quotes, and each passage on a new line (as in GPT-2's LAMBADA evaluation)."""
    return "\n" + s.replace("\u201c", '"').replace("\u201d", '"').strip()


# set: (Hugging Face repo, config, revision, split, text column, detokenizer); all parquet.
# lambada is OpenAI's LAMBADA test file (the one the release downloads); the loading-script
# repos (ptb, lm1b) are read from the Hub's auto-converted parquet branch. WikiText-2's test
# split is the very text of WikiText-103's, so a WikiText2 column that differs from the
# WikiText103 one (as the paper's does) scores WikiText-2's train split: that is wikitext2;
# wikitext2_test scores the test split.
ZEROSHOT = {
    "lambada": ("EleutherAI/lambada_openai", "default", None, "test", "text", lambada_detokenizer),
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", None, "train", "text", wikitext_detokenizer),
    "wikitext2_test": ("Salesforce/wikitext", "wikitext-2-raw-v1", None, "test", "text", wikitext_detokenizer),
    "wikitext103": ("Salesforce/wikitext", "wikitext-103-raw-v1", None, "test", "text", wikitext_detokenizer),
    "ptb": ("ptb-text-only/ptb_text_only", "penn_treebank", "refs/convert/parquet", "test", "sentence",
            ptb_detokenizer),
    "lm1b": ("billion-word-benchmark/lm1b", "plain_text", "refs/convert/parquet", "test", "text",
             lm1b_detokenizer),
}


def prepare_zeroshot(args):
    for name in ZEROSHOT if args.set == "all" else [args.set]:
        out = os.path.join(args.out_dir, name)
        if already_prepared(out, args.force):
            continue
        datasets = require_datasets()
        repo, config, revision, split, key, detokenizer = ZEROSHOT[name]
        ds = datasets.load_dataset(repo, config, revision=revision, split=split)
        # As in the SEDD release: every row (a line, sentence or passage; empty WikiText lines
        # too) is detokenized, tokenised and followed by EOT, and the rows are concatenated.
        # Unlike the release, which cuts rows per batch of 1,000, the WHOLE stream is cut into
        # 1024-token rows, dropping only its final partial row.
        write_gpt2_dataset(out, {"test": ds}, {
            "name": name, "source": f"{repo} ({config}, {revision or 'main'}), {split} split",
            "split": f"{split} split only, detokenized, cut into rows of {ZEROSHOT_BLOCK} tokens"},
            key=key, detokenizer=detokenizer, num_proc=args.num_proc, block_size=ZEROSHOT_BLOCK)


# -----------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out_dir", default="data", help="datasets go to OUT_DIR/<name>/")
    common.add_argument("--force", action="store_true", help="rebuild a finished dataset")
    procs = argparse.ArgumentParser(add_help=False)
    procs.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                       help="processes for downloading and tokenising")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("text8", parents=[common], help="text8, 27 characters")
    p.add_argument("--src", help="a local text8.zip (or the unzipped text8) instead of downloading")
    p.add_argument("--proportional", action="store_true",
                   help="accept a corpus that is not the full 100M characters; split it 90/5/5")
    p.set_defaults(func=prepare_text8)
    p = sub.add_parser("chars", parents=[common], help="a UTF-8 text file, character level")
    p.add_argument("--src", required=True, help="the text file")
    p.add_argument("--name", help="dataset name (default: the file's name without extension)")
    p.set_defaults(func=prepare_chars)
    p = sub.add_parser("toy", parents=[common], help="an offline Markov-chain language with a known entropy")
    p.add_argument("--n", type=int, default=2_000_000, help="characters in all")
    p.add_argument("--block_size", type=int, default=64, help="the window the recorded entropy is for")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=prepare_toy)
    p = sub.add_parser("owt", parents=[common, procs], help="OpenWebText, GPT-2 BPE")
    p.set_defaults(func=prepare_owt)
    p = sub.add_parser("zeroshot", parents=[common, procs], help="zero-shot test sets, GPT-2 BPE")
    p.add_argument("--set", required=True, choices=[*ZEROSHOT, "all"])
    p.set_defaults(func=prepare_zeroshot)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
