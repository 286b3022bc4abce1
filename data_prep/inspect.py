"""``data-prep inspect DIR``: what a shard directory holds, in plain text.

Prints the data-prep counters from the manifest (with the input format's own: pairs and
their labels, short targets, truncated pairs, one-sentence documents), per split the
sequences, tokens, copies and masking, a histogram of sequence lengths, the pair-label
balance (``next_sentence_label``: 0 = IsNext, 1 = NotNext, Devlin et al. 2019, §3.1;
``sentence_order_label``: 0 = in order, 1 = swapped, Lan et al. 2020, §3.1), the
masked-token rate (of non-special tokens, with its 80/10/10 breakdown: Devlin et al. 2019,
§3.1) and decoded examples, pairs shown as their A and B segments with the
``token_type_ids`` layout, in which every predicted position is marked:

    [MASK:word]        replaced by the mask token (80 %)
    [RAND:word>other]  replaced by a random token ``other`` (10 %)
    [KEEP:word]        left unchanged but still predicted (10 %)
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, TextIO

import numpy as np

from common.errors import UserError
from common.schema import IGNORE_INDEX
from data_prep.shards import ShardSet, SplitData
from data_prep.tokenizer import TokenizerInfo, load_tokenizer

HIST_BINS = 10
BAR_WIDTH = 40


def inspect(directory: str | Path, num_examples: int = 3, split: str = "train", out: TextIO | None = None) -> Dict[str, Dict[str, float]]:
    """Print a report of shard directory ``directory`` to ``out`` (stdout by default).

    Args:
        directory: a complete shard directory (verified: sha256 of every shard).
        num_examples: decoded sequences to show from ``split``.
        split: the split whose examples are shown (all splits are counted).
    Returns:
        split → {"rows", "tokens", "copies", "mask_rate", "mask_share", "random_share",
        "keep_share"} and, for pair data, "<label column>_share" (the share of label 1);
        rates are fractions (NaN where the split is not masked).
    Raises:
        UserError: not a shard directory, a corrupt shard, or an unknown ``split``.
    """
    import os
    import sys

    if out is not None:
        return _report(directory, num_examples, split, out)
    try:
        return _report(directory, num_examples, split, sys.stdout)
    except BrokenPipeError:
        # `data-prep inspect DIR | head`: the reader left; stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return {}


def _report(directory: str | Path, num_examples: int, split: str, out: TextIO) -> Dict[str, Dict[str, float]]:
    ds = ShardSet(directory)
    m = ds.manifest
    info = load_tokenizer(ds.tokenizer_path, m["tokenizer"]["kind"])
    if split not in ds.splits:
        raise UserError(f"{directory} has no split {split!r}; use --split with one of: {', '.join(ds.splits)}")
    w = lambda s="": print(s, file=out)  # noqa: E731
    cfg = m["data_config"]
    w(f"{ds.directory}  (fingerprint {m['fingerprint']}, format {m['format_version']})")
    w(
        f"corpus {cfg['corpus']}  format {cfg['format']} (sentence objective {cfg['sentence_objective']})  "
        f"max_seq_length {cfg['max_seq_length']}  "
        f"masking {cfg['masking']['mode']}  tokenizer {info.kind} vocab {info.vocab_size}"
    )
    st = m["stats"]
    w(
        "documents {documents} (train {train_documents}, validation {validation_documents}); "
        "sentences {sentences}; truncated sentences {truncated_sentences} ({truncated_tokens} tokens dropped)".format(
            **{k: st.get(k, 0) for k in ("documents", "train_documents", "validation_documents", "sentences", "truncated_sentences", "truncated_tokens")}
        )
    )
    w(
        f"skipped: {st.get('empty_documents', 0)} empty documents, {st.get('skipped_members', 0)} metadata members; "
        f"{st.get('replaced_characters', 0)} undecodable bytes replaced"
    )
    if st.get("sources"):
        w("sources: " + ", ".join(f"{k} {v}" for k, v in st["sources"].items()))
    if "chunks" in m:
        c = m["chunks"]
        w(f"chunks of {c['documents_per_chunk']} documents: train {c['train']}, validation {c['validation']}")
    for name, counts in st.get("instances", {}).items():
        w(f"{name} instances: " + format_counters(cfg["format"], counts))
    report: Dict[str, Dict[str, float]] = {}
    for name, sd in ds.splits.items():
        w()
        report[name] = _split_report(name, sd, info, w)
    if num_examples > 0:
        w()
        w(f"examples from {split} (copy 0):")
        sd = ds[split]
        for row in np.linspace(0, len(sd) - 1, num=min(num_examples, len(sd))).astype(int):
            r = sd.row(int(row))
            w(f"--- row {row} ({len(r['input_ids'])} tokens)")
            if "token_type_ids" in r:
                for line in render_pair(r, info):
                    w(line)
            else:
                w(render(r["input_ids"], r.get("labels"), info))
    return report


LABEL_NAMES = {"next_sentence_label": ("IsNext", "NotNext"), "sentence_order_label": ("in order", "swapped")}


def format_counters(fmt: str, c: Dict[str, int]) -> str:
    """One line of a split's ``stats.instances`` counters relevant to format ``fmt``."""
    if fmt in ("segment_pair", "sentence_pair"):
        labels = (
            f"IsNext {c.get('is_next', 0)} / NotNext {c.get('not_next', 0)}"
            if c.get("is_next", 0) + c.get("not_next", 0)
            else f"in order {c.get('in_order', 0)} / swapped {c.get('swapped', 0)}"
        )
        return (
            f"{c.get('sequences', 0)} pairs ({labels}); {c.get('short_targets', 0)} short targets; "
            f"{c.get('truncated_pairs', 0)} pairs truncated ({c.get('truncated_tokens', 0)} tokens); "
            f"{c.get('one_sentence_documents', 0)} one-sentence documents (no pair of their own); "
            f"{c.get('unpaired_sentences', 0)} unpaired sentences dropped"
        )
    per_doc = c.get("sequences", 0) / max(1, c.get("documents", 0))
    return (
        f"{c.get('sequences', 0)} sequences from {c.get('documents', 0)} documents ({per_doc:.2f} per document); "
        f"{c.get('truncated_sentences', 0)} sentences truncated ({c.get('truncated_tokens', 0)} tokens)"
    )


def label_balance(sd: SplitData) -> Dict[str, float]:
    """``{column: share of label 1}`` for each sentence-label column of ``sd``."""
    return {col: float(sd.scalar_column(col).astype(np.float64).mean()) if len(sd) else float("nan") for col in LABEL_NAMES if col in sd.columns}


def render_pair(row: Dict[str, np.ndarray], info: TokenizerInfo) -> List[str]:
    """Lines showing a pair row: its ``token_type_ids`` layout and label, then segments
    A and B decoded with predicted positions marked (``render``)."""
    ids, types, labels = row["input_ids"], row["token_type_ids"], row.get("labels")
    b_start = int(np.argmax(types == 1)) if (types == 1).any() else len(ids)
    la, lb = b_start - 2, len(ids) - b_start - 1
    label = ""
    for col, names in LABEL_NAMES.items():
        if col in row:
            label = f"  {col}={int(row[col])} ({names[int(row[col])]})"
    lines = [f"  layout: [CLS] A({la}) [SEP] | B({lb}) [SEP]   token_type_ids: 0 x {b_start}, 1 x {len(ids) - b_start}{label}"]
    for name, lo, hi in (("A", 1, 1 + la), ("B", b_start, b_start + lb)):
        lines.append(f"  {name}: " + render(ids[lo:hi], None if labels is None else labels[lo:hi], info).strip())
    return lines


def _split_report(name: str, sd: SplitData, info: TokenizerInfo, w) -> Dict[str, float]:
    lengths = sd.lengths()
    masked_note = "masked" if sd.masked else "unmasked (masked by the trainer's collator)"
    w(f"[{name}] {len(sd)} sequences, {sd.num_tokens} tokens, {sd.num_copies} cop{'y' if sd.num_copies == 1 else 'ies'}, {masked_note}")
    w(f"  length: min {lengths.min()}  mean {lengths.mean():.1f}  max {lengths.max()}")
    for lo, hi, count in histogram(lengths):
        bar = "#" * int(round(BAR_WIDTH * count / max(1, len(lengths))))
        w(f"  {lo:>5}-{hi:<5} {count:>8}  {bar}")
    result = {"rows": float(len(sd)), "tokens": float(sd.num_tokens), "copies": float(sd.num_copies)}
    for col, share in label_balance(sd).items():
        names = LABEL_NAMES[col]
        n1 = int(round(share * len(sd)))
        w(f"  {col}: 0 ({names[0]}) {len(sd) - n1} = {100 * (1 - share):.1f}%, 1 ({names[1]}) {n1} = {100 * share:.1f}%")
        result[f"{col}_share"] = share
    rates = {"mask_rate": float("nan"), "mask_share": float("nan"), "random_share": float("nan"), "keep_share": float("nan")}
    if sd.masked:
        rates = mask_rates(sd, info)
        for copy in range(sd.num_copies):
            c = mask_rates(sd, info, copy=copy) if copy else rates
            w(
                f"  copy {copy}: {100 * c['mask_rate']:.2f}% of non-special tokens predicted; of those "
                f"{100 * c['mask_share']:.1f}% mask, {100 * c['random_share']:.1f}% random, {100 * c['keep_share']:.1f}% kept"
            )
    result.update(rates)
    return result


def histogram(lengths: np.ndarray, bins: int = HIST_BINS) -> List[tuple]:
    """``[(lo, hi, count)]`` over integer lengths in ``bins`` equal-width bins (inclusive)."""
    lo, hi = int(lengths.min()), int(lengths.max())
    edges = np.unique(np.linspace(lo, hi + 1, num=bins + 1).astype(int))
    counts, _ = np.histogram(lengths, bins=edges)
    return [(int(a), int(b) - 1, int(c)) for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)]


def mask_rates(sd: SplitData, info: TokenizerInfo, copy: int = 0) -> Dict[str, float]:
    """Share of non-special tokens with a label, and of those the shares replaced by the
    mask token, by another token, or kept (fractions in [0, 1])."""
    special = np.zeros(info.vocab_size, dtype=bool)
    special[info.special_ids] = True
    maskable = predicted = masked = replaced = 0
    for i in range(len(sd)):
        r = sd.row(i, copy)
        labels = r["labels"]
        ids = r["input_ids"]
        sel = labels != IGNORE_INDEX
        originals = np.where(sel, labels, ids)
        maskable += int((~special[originals]).sum())
        predicted += int(sel.sum())
        masked += int((ids[sel] == info.mask_id).sum())
        replaced += int(((ids[sel] != info.mask_id) & (ids[sel] != labels[sel])).sum())
    p = max(predicted, 1)
    return {
        "mask_rate": predicted / max(maskable, 1),
        "mask_share": masked / p,
        "random_share": replaced / p,
        "keep_share": (predicted - masked - replaced) / p,
    }


def render(input_ids: np.ndarray, labels: np.ndarray | None, info: TokenizerInfo) -> str:
    """Decoded text of one sequence with predicted positions marked (module docstring)."""
    parts: List[str] = []
    plain: List[int] = []

    def flush() -> None:
        if plain:
            parts.append(info.decode(plain))
            plain.clear()

    for pos, tok in enumerate(np.asarray(input_ids).tolist()):
        label = IGNORE_INDEX if labels is None else int(labels[pos])
        if label == IGNORE_INDEX:
            plain.append(tok)
            continue
        flush()
        word = info.decode([label])
        lead = " " if word.startswith(" ") else ""
        word = word.strip()
        if tok == info.mask_id:
            parts.append(f"{lead}[MASK:{word}]")
        elif tok != label:
            parts.append(f"{lead}[RAND:{word}>{info.decode([tok]).strip()}]")
        else:
            parts.append(f"{lead}[KEEP:{word}]")
    flush()
    return "".join(parts)
