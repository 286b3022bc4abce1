"""Data-prep benchmark, run by hand; prints markdown tables (results: bench/data_prep.md).

    python bench/bench_data_prep.py                  # sentence splitters + builds
    python bench/bench_data_prep.py --sentences      # only the splitter comparison
    python bench/bench_data_prep.py --builds         # only the builds

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", action="store_true", help="only the sentence-splitter comparison")
    ap.add_argument("--builds", action="store_true", help="only the build benchmark")
    args = ap.parse_args()
    both = not (args.sentences or args.builds)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {load} (other jobs share the cores); python {sys.version.split()[0]}")
    if (args.sentences or both) and NLTK.is_dir():
        bench_sentences()
        bench_newlines()
    if args.builds or both:
        bench_builds()


if __name__ == "__main__":
    main()
