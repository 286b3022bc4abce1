"""BLiMP (Warstadt et al. 2020): zero-shot grammatical acceptability of a masked LM, scored by
pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model Scoring", §2).

A sentence's PLL is the sum over its tokens of ``log P(w_t | W without w_t)``: the sentence is
copied once per token with that token replaced by the mask token, and each copy's MLM head
scores the true token at the masked position. ``[CLS]``/``[SEP]`` (``<s>``/``</s>``) are
added and never masked, as in Salazar et al.'s ``mlm-scoring``. A minimal pair counts as
correct when ``PLL(sentence_good) > PLL(sentence_bad)`` strictly (a tie is wrong; chance
is 50%). Accuracy is reported per phenomenon (the file, ``UID``), per ``field`` (morphology,
syntax, semantics, syntax_semantics) and overall over all scored pairs (the mean of the
phenomena when every phenomenon is scored on the same number of pairs, as ``limit`` does).

Data: ``<root>/data/*.jsonl`` (or ``root`` holding the jsonl files), one JSON object per line
with ``sentence_good``, ``sentence_bad``, ``field``, ``UID``. The released files spell the
fourth field both ``syntax_semantics`` and ``syntax/semantics``; both count as
``syntax_semantics`` (the paper's "syntax-semantics").

Resume: all 67,000 pairs are ~134,000 sentences, ~33 chunks of ``SENTENCES_PER_CHUNK``. With a
``resume`` file, the sums are saved after every chunk (written to a temporary name, then
renamed) under a key of the sentences, ``max_length`` and the model's weights; a rerun with
the same key continues after the last saved chunk, any other key starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.errors import UserError, not_utf8
from data_prep.tokenizer import TokenizerInfo
from pretrain.models.encoder import BertForPretraining

SENTENCES_PER_CHUNK = 4096
RECORD_KEYS = ("sentence_good", "sentence_bad", "field")  # what a pair needs of a BLiMP jsonl record


@dataclass(frozen=True)
class MinimalPair:
    """One BLiMP pair: ``good`` is the acceptable sentence."""

    phenomenon: str
    field: str
    good: str
    bad: str


def phenomenon_files(root: str | Path) -> List[Path]:
    """The 67 jsonl files (sorted) under ``root/data`` or ``root``; UserError if none."""
    root = Path(root)
    d = root / "data" if (root / "data").is_dir() else root
    files = sorted(d.glob("*.jsonl"))
    if not files:
        raise UserError(f"no BLiMP *.jsonl files in {d}; point --blimp at the blimp directory")
    return files


def load_pairs(root: str | Path, limit: Optional[int] = None, phenomena: Optional[Sequence[str]] = None) -> List[MinimalPair]:
    """Minimal pairs of every phenomenon (or only ``phenomena``, by file stem), the first
    ``limit`` of each (file order = pairID order). UserError for a line that is not a BLiMP
    record, a file with no pairs or not UTF-8, or an unknown phenomenon name."""
    files = phenomenon_files(root)
    if phenomena:
        known = {f.stem: f for f in files}
        unknown = sorted(set(phenomena) - set(known))
        if unknown:
            raise UserError(f"unknown BLiMP phenomena {', '.join(unknown)}; e.g. {', '.join(list(known)[:3])}")
        files = [known[p] for p in phenomena]
    out: List[MinimalPair] = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                lines = fh.readlines() if limit is None else [line for _, line in zip(range(limit), fh)]
        except UnicodeDecodeError:
            raise not_utf8(f) from None
        before = len(out)
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                texts = [r[k] for k in RECORD_KEYS]
            except (json.JSONDecodeError, KeyError, TypeError):
                texts = None
            if texts is None or not all(isinstance(t, str) for t in texts):
                raise UserError(f"{f}:{n}: not a BLiMP record (strings {', '.join(RECORD_KEYS)}); restore the file "
                                "from BLiMP's download")
            good, bad, field = texts
            out.append(MinimalPair(f.stem, field.replace("/", "_").replace("-", "_"), good, bad))
        if len(out) == before:
            # an empty phenomenon would drop out of the table and the overall score unnoticed
            raise UserError(f"{f}: no minimal pairs; restore the file from BLiMP's download, or leave the phenomenon "
                            "out with --phenomena")
    return out


@torch.no_grad()
def pseudo_log_likelihoods(
    model: BertForPretraining,
    info: TokenizerInfo,
    sentences: Sequence[str],
    max_length: int,
    batch_rows: int = 128,
    progress: bool = False,
    resume: Optional[Path] = None,
) -> np.ndarray:
    """PLL (natural log) of each sentence under ``model``'s MLM head.

    Args:
        model: encoder + MLM head (``BertForPretraining``), any objective; eval mode is set.
        info: its tokenizer.
        sentences: str items.
        max_length: the model's positions; longer sentences keep their first tokens.
        batch_rows: masked copies per forward pass.
        resume: an ``.npz`` file to save the sums to after each chunk and to continue from
            (module docstring); removed when all chunks are done.
    Returns:
        float64 ``[len(sentences)]``; 0.0 for a sentence with no token.
    """
    model.eval()
    device = next(model.parameters()).device
    encoded = info.encode_batch(list(sentences))
    total = np.zeros(len(encoded), dtype=np.float64)
    emb = model.encoder.embeddings.word_embeddings.weight
    # Sentences in chunks (bounded memory), each chunk's masked copies sorted by length so
    # padding stays low.
    chunks = range(0, len(encoded), SENTENCES_PER_CHUNK)
    key, start_chunk = "", 0
    if resume is not None:
        key = _resume_key(model, encoded, max_length)
        start_chunk, saved = _load_partial(resume, key, len(encoded))
        if saved is not None:
            total = saved
    for first in tqdm(chunks, desc="pll", unit="chunk", disable=not progress, initial=start_chunk):
        if first < start_chunk * SENTENCES_PER_CHUNK:
            continue
        rows = []
        for s in range(first, min(first + SENTENCES_PER_CHUNK, len(encoded))):
            ids = [info.cls_id, *encoded[s][: max_length - 2], info.sep_id]
            rows.extend((len(ids), s, pos, ids) for pos in range(1, len(ids) - 1))
        rows.sort(key=lambda r: r[0])
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            width = chunk[-1][0]
            ids = torch.full((len(chunk), width), info.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (n, _, _, toks) in enumerate(chunk):
                ids[i, :n] = torch.tensor(toks)
                mask[i, :n] = 1
            at = torch.arange(len(chunk))
            positions = torch.tensor([r[2] for r in chunk])
            target = ids[at, positions].clone()
            ids[at, positions] = info.mask_id
            h = model.encoder(ids.to(device), mask.to(device), torch.zeros_like(ids).to(device))
            logits = model.mlm(h[at.to(device), positions.to(device)], emb)
            logp = F.log_softmax(logits.float(), dim=-1).gather(1, target.to(device)[:, None])[:, 0]
            np.add.at(total, np.asarray([r[1] for r in chunk]), logp.double().cpu().numpy())
        if resume is not None:
            _save_partial(resume, key, first // SENTENCES_PER_CHUNK + 1, total)
    if resume is not None:
        resume.unlink(missing_ok=True)
    return total


def _resume_key(model: BertForPretraining, encoded: Sequence[Sequence[int]], max_length: int) -> str:
    """sha256 of the token ids, ``max_length``, the chunk size and every weight of ``model``."""
    h = hashlib.sha256(json.dumps([max_length, SENTENCES_PER_CHUNK, [list(x) for x in encoded]]).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_partial(path: Path, key: str, n: int):
    """``(chunks done, sums)`` saved under ``key`` at ``path``; ``(0, None)`` when there is
    none, it was saved for other sentences or weights, or it does not load (a rerun then
    starts over and overwrites it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key or z["total"].shape != (n,):
                return 0, None
            return int(z["chunks"]), z["total"].astype(np.float64)
    except (OSError, ValueError, KeyError, EOFError):
        return 0, None


def _save_partial(path: Path, key: str, chunks: int, total: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")  # np.savez appends .npz to other names
    np.savez(tmp, key=np.asarray(key), chunks=np.asarray(chunks), total=total)
    os.replace(tmp, path)


def accuracy_table(pairs: Sequence[MinimalPair], correct: Iterable[bool]) -> Dict[str, object]:
    """``{"overall": acc, "pairs": n, "fields": {field: acc}, "phenomena": {uid: acc}}`` with
    accuracies as fractions."""
    by_ph: Dict[str, List[bool]] = defaultdict(list)
    by_field: Dict[str, List[bool]] = defaultdict(list)
    flags = list(correct)
    for p, ok in zip(pairs, flags):
        by_ph[p.phenomenon].append(ok)
        by_field[p.field].append(ok)
    return {
        "overall": float(np.mean(flags)) if flags else float("nan"),
        "pairs": len(flags),
        "fields": {k: float(np.mean(v)) for k, v in sorted(by_field.items())},
        "phenomena": {k: float(np.mean(v)) for k, v in sorted(by_ph.items())},
    }


def score_blimp(
    model: BertForPretraining,
    info: TokenizerInfo,
    pairs: Sequence[MinimalPair],
    max_length: int,
    batch_rows: int = 128,
    progress: bool = False,
    resume: Optional[Path] = None,
) -> Dict[str, object]:
    """Score every pair by PLL and tabulate accuracy (``accuracy_table``); ``resume`` as in
    ``pseudo_log_likelihoods``."""
    if not pairs:
        raise UserError("no BLiMP pairs to score")
    sentences = [p.good for p in pairs] + [p.bad for p in pairs]
    pll = pseudo_log_likelihoods(model, info, sentences, max_length, batch_rows, progress, resume)
    good, bad = pll[: len(pairs)], pll[len(pairs):]
    return accuracy_table(pairs, (good > bad).tolist())
