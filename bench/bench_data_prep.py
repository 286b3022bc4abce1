"""Data-prep benchmark, run by hand; prints markdown tables (results: bench/data_prep.md).

    python bench/bench_data_prep.py                  # sentence splitters + builds
    python bench/bench_data_prep.py --sentences      # only the splitter comparison
    python bench/bench_data_prep.py --builds         # only the builds
    python bench/bench_data_prep.py --formats        # every format x num_workers vs HF run_mlm
    python bench/bench_data_prep.py --scale          # nltk-corpora x 20 (~150M words), streaming
    python bench/bench_data_prep.py --nsp-balance    # NotNext share: BERT's reference rule vs ours

Sentence splitters (``data_prep.sentences.BACKENDS``) on the same line units: speed on a
sample of the real corpora (300 reuters articles + the first 100 kB of each of the 15
gutenberg books), agreement between the two, and exact-match accuracy on hand-checked
tricky cases (abbreviations, initials, decimals, quotes, lower-cased text). Then three
ways of reading line breaks (``data_prep.sentences.line_units`` and two simpler rules)
over all of nltk-corpora.

Builds: wall time, throughput (tokens of packed sequences per wall second) and peak RSS of
``data_prep.build.build`` with the smoke preset's tokenizer settings (byte-level BPE,
vocab 4096, min_frequency 2), max_seq_length 128, static (dupe_factor 2) and dynamic
masking, on the embedded pydoc corpus and on all of nltk-corpora. Each build runs in its
own process so its peak RSS is its own; output goes to a temporary directory.

Formats (``--formats``): one byte-level BPE tokenizer (vocab 8192) is trained on
nltk-corpora first (its time is reported on its own), then every input format is built
from it (``tokenizer.path``; dynamic masking, max_seq_length 128) at num_workers 1 and 2,
next to the route users would otherwise take, Hugging Face's ``run_mlm.py``
preprocessing: a ``datasets.Dataset`` of the same documents (read by
``data_prep.corpus``, timed), ``.map`` tokenization with the same tokenizer through
``PreTrainedTokenizerFast`` (``return_special_tokens_mask=True``, as run_mlm does), then
``group_texts`` into 128-token blocks, both maps with ``num_proc=2``. tokens/s = tokens of
the output rows per wall second; peak RSS = the largest sum of RSS over the process and
its children, sampled every 50 ms (PSS, so pages forked workers share with the main
process count once). Each route runs twice; the faster run is reported (both walls shown).

Scale (``--scale``): nltk-corpora read 20 times through a temporary directory of
symlinks (``rep00/abc.zip`` … ``rep19/webtext.zip``: distinct document ids, nothing
copied), built end to end (tokenizer trained on the streamed training split, then
FULL-SENTENCES, dynamic masking) with num_workers 2; wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.corpus import read_documents  # noqa: E402
from data_prep.sentences import BACKENDS, line_units  # noqa: E402

DATA = Path(os.environ.get("BERT_RECIPES_DATA", REPO.parent / "shared" / "data"))
NLTK = DATA / "nltk-corpora"

# Hand-checked: the sentences each case must split into.
CASES: List[List[str]] = [
    ["Dr. Smith arrived at 5 p.m. on Friday.", "He left early."],
    ["The U.S. economy grew 2.5% in 1987.", "Exports rose."],
    ["He paid $3.50 for it.", "That was cheap."],
    ["Mr. and Mrs. Jones live on Baker St. in London.", "They like tea."],
    ['"Is it true?" she asked.', '"Yes."'],
    ["Acme Inc. reported profits of 1.2 billion dlrs.", "Shares rose 3 pct."],
    ["I live in the U.S.", "He lives in Canada."],
    ["See e.g. the appendix.", "It is short."],
    ["Version 3.11 was released in Oct. 2022.", "It added speedups."],
    ["Wait... what happened?", "Nobody knows!"],
    ["Prof. J. R. R. Tolkien wrote it.", "It is long."],
    ["The meeting is at 10 a.m. tomorrow.", "Be on time."],
    ["She said: 'I will go.'", "Then she went."],
    ["It costs approx. 20 dollars.", "OK?"],
    ["Gen. Grant and Col. Sanders met in Washington, D.C. last year."],
    ["The ratio was 3.5 to 1.", "No. 5 was best."],
    ["He was born in 1809 (Feb. 12).", "He died in 1865."],
    ["The file is called data.txt.", "Open it."],
    ["U.K. exports to the E.U. fell 4.2 pct in March, the ministry said.", "Imports rose."],
    ["what's the deal ?", "watch the movie and find out ."],
]


def sentence_sample() -> List[str]:
    """Line units (see data_prep.sentences) of the reuters + gutenberg sample."""
    texts = [d.text for d in read_documents(str(NLTK / "reuters.zip"), max_documents=300)]
    for d in read_documents(str(NLTK / "gutenberg.zip")):
        cut = d.text.find("\n\n", 100_000)
        texts.append(d.text[: cut if cut > 0 else None])
    return [u for t in texts for u in line_units(t)]


def bench_sentences() -> None:
    units = sentence_sample()
    words = sum(len(u.split()) for u in units)
    print(f"\nSentence splitters on {len(units)} line units, {words} words (300 reuters + 15 x 100 kB gutenberg)\n")
    print("| backend | seconds | words/s | sentences | mean words/sentence | hand-checked cases exact |")
    print("|---|---|---|---|---|---|")
    out = {}
    for name, split in BACKENDS.items():
        t = time.perf_counter()
        sents = [s for u in units for s in split(u)]
        dt = time.perf_counter() - t
        out[name] = sents
        ok = sum(split(" ".join(gold)) == gold for gold in CASES)
        print(f"| {name} | {dt:.2f} | {words / dt:,.0f} | {len(sents)} | {words / len(sents):.1f} | {ok}/{len(CASES)} |")
    a, b = (set(map(" ".join, map(str.split, out[k]))) for k in ("blingfire", "pysbd"))
    print(f"\nAgreement: {len(a & b) / len(a):.1%} of blingfire's sentences are also pysbd's, {len(a & b) / len(b):.1%} vice versa.")
    for name, split in BACKENDS.items():
        wrong = [gold for gold in CASES if split(" ".join(gold)) != gold]
        for gold in wrong:
            print(f"- {name} misses: {' '.join(gold)!r} -> {split(' '.join(gold))}")


def _join_paragraph_lines(text: str) -> List[str]:
    return [" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _every_line(text: str) -> List[str]:
    return [" ".join(line.split()) for line in text.split("\n") if line.strip()]


def bench_newlines() -> None:
    """How line breaks are read decides whether one-sentence-per-line corpora keep their
    boundaries and whether wrapped prose is cut at every wrap; words in "sentences" of
    more than 90 words (~120 BPE tokens) are at risk of truncation at max_seq_length 128."""
    docs = list(read_documents(str(NLTK), ["brown"]))
    rules = {"join lines of a paragraph": _join_paragraph_lines, "every line is a unit": _every_line, "line_units (chosen)": line_units}
    split = BACKENDS["blingfire"]
    print(f"\nLine-break handling, blingfire inside each unit, all nltk-corpora ({len(docs)} documents)\n")
    print("| rule | sentences | mean words | words in >90-word sentences | gutenberg mean / >90 | reuters mean / >90 | movie_reviews mean / >90 | webtext mean / >90 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rule in rules.items():
        per: Dict[str, List[int]] = {}
        for d in docs:
            c = per.setdefault(d.source, [0, 0, 0])
            for unit in rule(d.text):
                for sent in split(unit):
                    n = len(sent.split())
                    c[0] += 1
                    c[1] += n
                    c[2] += n if n > 90 else 0
        tot = [sum(c[i] for c in per.values()) for i in range(3)]

        def cell(k: str, per: Dict[str, List[int]] = per) -> str:
            return f"{per[k][1] / per[k][0]:.1f} / {100 * per[k][2] / per[k][1]:.1f}%"

        print(
            f"| {name} | {tot[0]} | {tot[1] / tot[0]:.1f} | {100 * tot[2] / tot[1]:.2f}% | "
            f"{cell('gutenberg')} | {cell('reuters')} | {cell('movie_reviews')} | {cell('webtext')} |"
        )


_CHILD = r"""
import json, resource, sys, time
from data_prep.build import build
from data_prep.config import DataConfig, MaskingConfig, TokenizerConfig
corpus, mode, out = sys.argv[1:4]
cfg = DataConfig(corpus=corpus, tokenizer=TokenizerConfig(vocab_size=4096, min_frequency=2), max_seq_length=128,
                 validation_fraction=0.05, rows_per_shard=16384, masking=MaskingConfig(mode=mode, dupe_factor=2), output_dir=out)
t = time.perf_counter()
d = build(cfg)
wall = time.perf_counter() - t
m = json.load(open(d / "manifest.json"))
print(json.dumps({"wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tokens": m["totals"]["tokens"], "sequences": m["totals"]["sequences"],
                  "documents": m["stats"]["documents"], "stages": m["build"]["stage_seconds"],
                  "bytes": m["totals"]["bytes"]}))
"""


def bench_builds() -> None:
    rows = []
    corpora = [("pydoc", "pydoc")] + ([("nltk-corpora", str(NLTK))] if NLTK.is_dir() else [])
    with tempfile.TemporaryDirectory(prefix="bench-data-prep-") as tmp:
        for label, corpus in corpora:
            for mode in ("static", "dynamic"):
                out = Path(tmp) / f"{label}-{mode}"
                p = subprocess.run(
                    [sys.executable, "-c", _CHILD, corpus, mode, str(out)],
                    capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                )
                if p.returncode != 0:
                    sys.exit(f"build of {label} ({mode}) failed:\n{p.stderr[-2000:]}")
                r = json.loads(p.stdout.strip().splitlines()[-1])
                rows.append((label, mode, r))
    print("\nBuilds (smoke tokenizer: BPE vocab 4096; max_seq_length 128; static dupe_factor 2)\n")
    print("| corpus | masking | documents | sequences | tokens | wall s | tokens/s | peak RSS MB | MB on disk | read+split / tokenizer / tokenize / pack / mask+write s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, mode, r in rows:
        st = r["stages"]
        stages = " / ".join(f"{st.get(k, 0):.1f}" for k in ("read_split", "tokenizer", "tokenize", "pack", "mask_write"))
        print(
            f"| {label} | {mode} | {r['documents']} | {r['sequences']} | {r['tokens']:,} | {r['wall']:.1f} | "
            f"{r['tokens'] / r['wall']:,.0f} | {r['rss_mb']:.0f} | {r['bytes'] / 1e6:.0f} | {stages} |"
        )


def _tree_rss_sum(proc) -> int:
    import psutil

    try:
        return sum(q.memory_info().rss for q in [proc] + proc.children(recursive=True))
    except psutil.NoSuchProcess:
        return 0


def _tree_rss(proc) -> int:
    import psutil

    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            # PSS: pages a forked worker shares with its parent are counted once, not per process.
            total += q.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            try:
                total += q.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    return total


def run_measured(args: List[str], repeat: int = 1) -> Dict[str, float]:
    """Run ``args`` (a Python child printing one JSON line last) ``repeat`` times and keep
    the fastest run (other jobs share the cores); adds wall seconds, all walls, and the
    peak memory (MB: PSS summed over the child's process tree, sampled every 50 ms)."""
    runs = [_run_once(args) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["wall"])
    best["walls"] = [r["wall"] for r in runs]
    best["rss_mb"] = max(r["rss_mb"] for r in runs)
    return best


def _run_once(args: List[str]) -> Dict[str, float]:
    import psutil

    # Output goes to files: an unread pipe fills up with progress bars and blocks the child.
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t = time.perf_counter()
        p = subprocess.Popen(args, stdout=out_f, stderr=err_f, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        proc = psutil.Process(p.pid)
        peak = peak_sum = 0
        while p.poll() is None:
            peak = max(peak, _tree_rss(proc))
            peak_sum = max(peak_sum, _tree_rss_sum(proc))
            time.sleep(0.05)
        wall = time.perf_counter() - t
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if p.returncode != 0:
        sys.exit(f"{' '.join(args[:4])} failed:\n{err[-3000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    r.update(wall=wall, rss_mb=peak / 2**20, rss_sum_mb=peak_sum / 2**20)
    return r


_TRAIN_TOKENIZER = r"""
import json, sys, time
from data_prep.corpus import ReadStats, read_documents
from data_prep.instances import is_validation
from data_prep.sentences import line_units
from data_prep.tokenizer import train_tokenizer
corpus, out = sys.argv[1:3]
t = time.perf_counter()
texts = (u for d in read_documents(corpus, ["brown"]) if not is_validation(d.id, 0.05) for u in line_units(d.text))
train_tokenizer("bpe", texts, 8192, 2, __import__("pathlib").Path(out))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

_FORMAT_CHILD = r"""
import json, sys
from data_prep.build import build
from data_prep.config import DataConfig, MaskingConfig, TokenizerConfig
corpus, tok, fmt, obj, workers, out = sys.argv[1:7]
__import__("shutil").rmtree(out, ignore_errors=True)  # every run builds from scratch
cfg = DataConfig(corpus=corpus, tokenizer=TokenizerConfig(path=tok or None, vocab_size=8192), format=fmt, sentence_objective=obj,
                 max_seq_length=128, num_workers=int(workers), masking=MaskingConfig(mode="dynamic"), output_dir=out)
d = build(cfg)
m = json.load(open(d / "manifest.json"))
print(json.dumps({"tokens": m["totals"]["tokens"], "sequences": m["totals"]["sequences"], "documents": m["stats"]["documents"],
                  "stages": m["build"]["stage_seconds"], "worker": m["build"]["worker_seconds"], "bytes": m["totals"]["bytes"]}))
"""

# Hugging Face run_mlm.py (group_texts mode), written out: same documents, same tokenizer.
_HF_CHILD = r"""
import json, sys, time
from itertools import chain
t0 = time.perf_counter()
import datasets
from transformers import PreTrainedTokenizerFast
from data_prep.corpus import read_documents
corpus, tok_file = sys.argv[1:3]
block = 128
tok = PreTrainedTokenizerFast(tokenizer_file=tok_file, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                              unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
ds = datasets.Dataset.from_dict({"text": [d.text for d in read_documents(corpus, ["brown"])]})
t_read = time.perf_counter() - t0

def tokenize_function(examples):
    return tok(examples["text"], return_special_tokens_mask=True)

def group_texts(examples):
    concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
    total = (len(concatenated["input_ids"]) // block) * block
    return {k: [t[i : i + block] for i in range(0, total, block)] for k, t in concatenated.items()}

tokenized = ds.map(tokenize_function, batched=True, num_proc=2, remove_columns=["text"])
grouped = tokenized.map(group_texts, batched=True, num_proc=2)
print(json.dumps({"tokens": len(grouped) * block, "sequences": len(grouped), "read_seconds": t_read}))
"""

REPEAT = 2  # runs per route; the fastest counts
FORMATS = [("full_sentences", "none"), ("doc_sentences", "none"), ("segment_pair", "nsp"), ("segment_pair", "sop"), ("sentence_pair", "nsp")]


def bench_formats() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
        tok = str(Path(tmp) / "tokenizer.json")
        tr = run_measured([sys.executable, "-c", _TRAIN_TOKENIZER, str(NLTK), tok])
        load0 = os.getloadavg()[0]
        for fmt, obj in FORMATS:
            for workers in (1, 2):
                out = Path(tmp) / f"{fmt}-{obj}-{workers}"
                r = run_measured([sys.executable, "-c", _FORMAT_CHILD, str(NLTK), tok, fmt, obj, str(workers), str(out)], REPEAT)
                rows.append((f"{fmt}" + (f" + {obj}" if obj != "none" else ""), str(workers), r, os.getloadavg()[0]))
                import shutil

                shutil.rmtree(out)
        r = run_measured([sys.executable, "-c", _HF_CHILD, str(NLTK), tok], REPEAT)
        rows.append(("HF run_mlm: map(tokenize) + group_texts", "num_proc 2", r, os.getloadavg()[0]))
    print(f"\nFormats on nltk-corpora (BPE vocab 8192 trained once in {tr['seconds']:.1f} s, peak RSS {tr['rss_mb']:.0f} MB; "
          f"max_seq_length 128, dynamic masking; load average at start {load0:.1f})\n")
    print("| route | workers | sequences | tokens | wall s (runs) | tokens/s | peak memory MB | load avg (1 min, after) | worker CPU s: split / encode / instances / write |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, workers, r, load in rows:
        w = r.get("worker")
        cpu = " / ".join(f"{w.get(k, 0):.1f}" for k in ("split", "encode", "instances", "mask_write")) if w else f"(reading {r['read_seconds']:.1f} s incl.)"
        walls = ", ".join(f"{w:.1f}" for w in r["walls"])
        print(f"| {name} | {workers} | {r['sequences']:,} | {r['tokens']:,} | {r['wall']:.1f} ({walls}) | {r['tokens'] / r['wall']:,.0f} | "
              f"{r['rss_mb']:.0f} | {load:.1f} | {cpu} |")


def reference_nsp_labels(lengths: List[List[int]], max_seq_length: int, short_seq_prob: float, seed: int) -> List[int]:
    """NSP labels (1 = NotNext) that BERT's reference create_pretraining_data.py assigns,
    replayed on sentence lengths only (labels depend on nothing else): target drawn once
    per document, a chunk closed at the target or the document's end, a one-sentence chunk
    forced NotNext, unused sentences put back after a NotNext."""
    import random

    rng = random.Random(seed)
    max_tokens = max_seq_length - 3
    labels = []
    for doc in lengths:
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        chunk, length, i = [], 0, 0
        while i < len(doc):
            chunk.append(doc[i])
            length += doc[i]
            if i == len(doc) - 1 or length >= target:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                if len(chunk) == 1 or rng.random() < 0.5:
                    labels.append(1)
                    i -= len(chunk) - a_end
                else:
                    labels.append(0)
                chunk, length = [], 0
            i += 1
    return labels


def bench_nsp_balance() -> None:
    """Share of NotNext pairs on all of nltk-corpora (BPE 8192, length 128 and 512)."""
    import random

    from data_prep.instances import InstanceStats, create_pairs
    from data_prep.sentences import split_sentences
    from data_prep.tokenizer import load_tokenizer, train_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-nsp-") as tmp:
        tok = Path(tmp) / "tokenizer.json"
        docs = [d.text for d in read_documents(str(NLTK), ["brown"])]
        train_tokenizer("bpe", (u for t in docs for u in line_units(t)), 8192, 2, tok)
        info = load_tokenizer(tok, "bpe")
    ids = []
    for text in docs:
        sents = split_sentences(text)
        ids.append([np.asarray(e, dtype=np.int32) for e in info.encode_batch(sents) if e] if sents else [])
    lengths = [[len(s) for s in doc] for doc in ids if len(doc) >= 2]
    print(f"\nNSP label balance on nltk-corpora ({len(lengths)} documents with >= 2 sentences; short_seq_prob 0.1)\n")
    print("| max_seq_length | rule | pairs | NotNext share |")
    print("|---|---|---|---|")
    for max_len in (128, 512):
        ref = reference_nsp_labels(lengths, max_len, 0.1, 12345)
        print(f"| {max_len} | BERT reference (one-sentence chunks forced NotNext) | {len(ref):,} | {100 * np.mean(ref):.2f}% |")
        ours = []
        for c in range(0, len(ids), 1000):  # chunks of chunk_documents=1000, as the build
            st = InstanceStats()
            for _ in create_pairs(ids[c : c + 1000], max_len, 0, 2, "nsp", random.Random(c), stats=st):
                pass
            ours += [1] * st.not_next + [0] * st.is_next
        print(f"| {max_len} | data_prep.instances (every chunk splittable) | {len(ours):,} | {100 * np.mean(ours):.2f}% |")


def repeated_corpus(src: Path, times: int, into: Path) -> Path:
    """A directory holding ``times`` copies of ``src``'s corpus files as symlinks
    (``rep00/abc.zip`` …): the reader sees ``times`` x the documents, each with its own
    id, and nothing is copied."""
    for i in range(times):
        d = into / f"rep{i:02d}"
        d.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            if f.suffix == ".zip":
                (d / f.name).symlink_to(f)
    return into


def bench_scale(times: int = 20) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        corpus = repeated_corpus(NLTK, times, Path(tmp) / "corpus")
        load0 = os.getloadavg()
        r = run_measured([sys.executable, "-c", _FORMAT_CHILD, str(corpus), "", "full_sentences", "none", "2", str(Path(tmp) / "out")])
        load1 = os.getloadavg()
    st = r["stages"]
    print(f"\nStreaming: nltk-corpora x {times} ({r['documents']:,} documents), FULL-SENTENCES, dynamic, num_workers 2, "
          f"tokenizer trained on the stream (BPE 8192); load average before {load0[0]:.1f}, after (1/5/15 min) "
          f"{load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f}\n")
    print("| documents | sequences | tokens | wall s | tokenizer pass s | chunks pass s | tokens/s | peak memory MB (PSS, all processes) | peak RSS MB (sum) | GB on disk |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {r['documents']:,} | {r['sequences']:,} | {r['tokens']:,} | {r['wall']:.0f} | {st.get('tokenizer', 0):.0f} | {st.get('chunks', 0):.0f} | "
          f"{r['tokens'] / r['wall']:,.0f} | {r['rss_mb']:.0f} | {r['rss_sum_mb']:.0f} | {r['bytes'] / 1e9:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", action="store_true", help="only the sentence-splitter comparison")
    ap.add_argument("--builds", action="store_true", help="only the build benchmark")
    ap.add_argument("--formats", action="store_true", help="every input format at num_workers 1 and 2 vs HF run_mlm")
    ap.add_argument("--scale", action="store_true", help="nltk-corpora x 20 streamed (takes ~15 min)")
    ap.add_argument("--nsp-balance", action="store_true", help="NotNext share of BERT's reference rule vs ours")
    args = ap.parse_args()
    both = not (args.sentences or args.builds or args.formats or args.scale or args.nsp_balance)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {load} (other jobs share the cores); python {sys.version.split()[0]}")
    if (args.sentences or both) and NLTK.is_dir():
        bench_sentences()
        bench_newlines()
    if args.builds or both:
        bench_builds()
    if args.formats or both:
        bench_formats()
    if args.scale or both:
        bench_scale()
    if args.nsp_balance or both:
        bench_nsp_balance()


if __name__ == "__main__":
    main()
