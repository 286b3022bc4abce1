"""The intrinsic sentence tasks of ALBERT's Table 5 (Lan et al. 2020, §4.6): every model
scored on one shared held-out NSP set and one shared held-out SOP set, plus masked-token
accuracy on the same text.

The sets are built once, as *text*, from the validation documents of the pretraining corpus
(the documents ``data_prep.instances.is_validation`` holds out of every arm), so models with
different tokenizers answer the same questions. Pairs are made by the pipeline's own
``data_prep.instances.create_pairs`` (BERT's SEGMENT-PAIR rules for NSP, ALBERT's
consecutive-segment rule for SOP), run over sentences whose "tokens" are whitespace words;
each pair's text is read back from the row's ``source``. Labels follow the shards: 0 = B
follows A in the original text (IsNext / in order), 1 = it does not (NotNext / swapped).

Each model then encodes a pair with its own tokenizer in its pretraining layout
(``[CLS] A [SEP] B [SEP]``, longest-first truncation) and its sentence head answers
(``pretrain.criterions.pretraining.score_sentence_task``: a head trained for the other task
is reused as is; a model without one gets a seeded untrained head, Table 5's "None" row).

Masked-token accuracy: in each NSP pair, 15% of the non-special tokens (at least one; drawn
by a generator seeded from the row index) are replaced by the mask token and predicted by
the MLM head; the accuracy over all masked tokens is reported.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from common.atomic import write_text_atomic
from common.errors import UserError
from data_prep.tokenizer import TokenizerInfo

SET_VERSION = 1
PROBE_TASKS = ("nsp", "sop")
MLM_PROBABILITY = 0.15


@dataclass(frozen=True)
class TextPair:
    """One held-out pair: segment texts ``a``, ``b`` and ``label`` (0 = B follows A)."""

    a: str
    b: str
    label: int


def _validation_documents(corpus: str, validation_fraction: float, strip_pos_tags: Sequence[str], max_documents: Optional[int]):
    from data_prep.corpus import read_documents
    from data_prep.instances import is_validation
    from data_prep.sentences import split_sentences

    for doc in read_documents(corpus, list(strip_pos_tags), max_documents):
        if is_validation(doc.id, validation_fraction):
            sentences = [s.split() for s in split_sentences(doc.text)]
            yield doc.id, [s for s in sentences if s]


def build_pairs(
    corpus: str,
    task: str,
    validation_fraction: float,
    max_words: int = 96,
    max_pairs: int = 2000,
    seed: int = 12345,
    strip_pos_tags: Sequence[str] = ("brown",),
    max_documents: Optional[int] = None,
) -> List[TextPair]:
    """Held-out text pairs of ``task`` (nsp | sop) from the validation documents of ``corpus``.

    Args:
        corpus: a ``DataConfig.corpus`` spec (path or ``pydoc``).
        validation_fraction: the pretraining data's (``data.validation_fraction``): which
            documents are held out.
        max_words: a pair's length bound in whitespace words (``create_pairs``'s
            ``max_seq_length`` minus 3); models truncate further to their positions.
        max_pairs: keep this many pairs, a seeded sample when there are more.
        seed: seeds document order, pairing and the sample; fixed, so the set is shared.
    Raises:
        UserError: unknown task, no validation documents, or no pairs.
    """
    from data_prep.instances import create_pairs, document_order

    if task not in PROBE_TASKS:
        raise UserError(f"sentence task {task!r} is not one of: {', '.join(PROBE_TASKS)}")
    docs = list(_validation_documents(corpus, validation_fraction, strip_pos_tags, max_documents))
    if len(docs) < 2:
        raise UserError(f"corpus {corpus}: {len(docs)} validation document(s) at validation_fraction={validation_fraction}; need >= 2")
    order = document_order([d for d, _ in docs], seed)
    words = [docs[i][1] for i in order]
    as_ids = [[np.zeros(len(s), dtype=np.int32) for s in doc] for doc in words]
    rng = random.Random(f"probe:{task}:{seed}")
    pairs: List[TextPair] = []
    for row in create_pairs(as_ids, max_words + 3, -1, -2, task, rng):
        texts = []
        for d, first, end, lo, hi in row.source:
            flat = [w for s in words[d][first:end] for w in s]
            texts.append(" ".join(flat[lo:hi]))
        pairs.append(TextPair(texts[0], texts[1], int(row.label)))
    if not pairs:
        raise UserError(f"corpus {corpus}: no {task} pairs in the validation documents")
    if len(pairs) > max_pairs:
        keep = sorted(random.Random(f"probe-sample:{task}:{seed}").sample(range(len(pairs)), max_pairs))
        pairs = [pairs[i] for i in keep]
    return pairs


def load_or_build(out_dir: Path, corpus: str, validation_fraction: float, **kw) -> Dict[str, List[TextPair]]:
    """Both sets, read from ``out_dir/{nsp,sop}.jsonl`` when they were built with the same
    arguments (``meta.json``), else (or when those files do not parse) built and written
    there (atomically)."""
    out_dir = Path(out_dir)
    meta = {"version": SET_VERSION, "corpus": str(corpus), "validation_fraction": validation_fraction, **kw}
    meta_file = out_dir / "meta.json"
    sets: Dict[str, List[TextPair]] = {}
    try:
        if meta_file.is_file() and json.loads(meta_file.read_text()) == json.loads(json.dumps(meta)):
            for task in PROBE_TASKS:
                lines = (out_dir / f"{task}.jsonl").read_text().splitlines()
                sets[task] = [TextPair(**json.loads(x)) for x in lines]
            return sets
    except (OSError, ValueError, TypeError) as e:
        # A cache: damaged (cut short, edited), it is built again from the corpus, identically.
        print(f"held-out sets in {out_dir} are damaged ({type(e).__name__}: {e}); building them again")
        sets = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in PROBE_TASKS:
        sets[task] = build_pairs(corpus, task, validation_fraction, **kw)
        write_text_atomic(out_dir / f"{task}.jsonl", "".join(json.dumps(asdict(p)) + "\n" for p in sets[task]))
    write_text_atomic(meta_file, json.dumps(meta, indent=2) + "\n")
    return sets


def encode_pairs_batches(info: TokenizerInfo, pairs: Sequence[TextPair], column: str, max_length: int,
                         type_vocab_size: int, batch_size: int = 64) -> Iterator[Dict[str, torch.Tensor]]:
    """Padded int64 batches (``input_ids``, ``attention_mask``, ``token_type_ids`` ``[b, seq]``
    and ``column`` ``[b]``) of ``pairs`` in the pretraining pair layout (``[CLS] A [SEP] B
    [SEP]``, token types 0/1 when the model has two)."""
    enc_a = info.encode_batch([p.a for p in pairs])
    enc_b = info.encode_batch([p.b for p in pairs])
    for s in range(0, len(pairs), batch_size):
        rows = []
        for a, b in zip(enc_a[s : s + batch_size], enc_b[s : s + batch_size]):
            a, b = list(a), list(b)
            while len(a) + len(b) > max_length - 3:
                (a if len(a) > len(b) else b).pop()
            ids = [info.cls_id, *a, info.sep_id, *b, info.sep_id]
            types = [0] * (len(a) + 2) + [1 if type_vocab_size > 1 else 0] * (len(b) + 1)
            rows.append((ids, types))
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), info.pad_id, dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for i, (r, t) in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            types[i, : len(t)] = torch.tensor(t)
            mask[i, : len(r)] = 1
        labels = torch.tensor([p.label for p in pairs[s : s + batch_size]], dtype=torch.long)
        yield {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, column: labels}


@torch.no_grad()
def masked_token_accuracy(model, info: TokenizerInfo, pairs: Sequence[TextPair], max_length: int,
                          type_vocab_size: int, seed: int = 0) -> Dict[str, float]:
    """MLM accuracy on ``pairs`` (module docstring): ``{"accuracy", "correct", "count"}``."""
    model.eval()
    special = set(info.special_ids.tolist())
    correct = count = 0
    row = 0
    for batch in encode_pairs_batches(info, pairs, "label", max_length, type_vocab_size):
        ids = batch["input_ids"].clone()
        sel = torch.zeros_like(ids, dtype=torch.bool)
        for i in range(ids.shape[0]):
            cand = [j for j in range(ids.shape[1]) if batch["attention_mask"][i, j] and int(ids[i, j]) not in special]
            if not cand:
                continue
            g = random.Random(f"mlm-probe:{seed}:{row + i}")
            for j in g.sample(cand, max(1, round(MLM_PROBABILITY * len(cand)))):
                sel[i, j] = True
        row += ids.shape[0]
        target = ids[sel]
        ids[sel] = info.mask_id
        h = model.encoder(ids, batch["attention_mask"], batch["token_type_ids"])
        pred = model.mlm(h[sel], model.encoder.embeddings.word_embeddings.weight).argmax(-1)
        correct += int((pred == target).sum())
        count += int(target.numel())
    if count == 0:
        raise UserError("no tokens to mask in the held-out pairs")
    return {"accuracy": correct / count, "correct": correct, "count": count}


def score_model(model, info: TokenizerInfo, sets: Dict[str, List[TextPair]], max_length: int,
                type_vocab_size: int, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """``{"mlm": ..., "nsp": ..., "sop": ...}`` accuracies (each ``{"accuracy", "correct",
    "count"}``) of one ``BertForPretraining`` on the shared sets."""
    from common.schema import LABEL_COLUMNS
    from pretrain.criterions.pretraining import score_sentence_task

    out = {"mlm": masked_token_accuracy(model, info, sets["nsp"], max_length, type_vocab_size, seed)}
    for task in PROBE_TASKS:
        batches = encode_pairs_batches(info, sets[task], LABEL_COLUMNS[task], max_length, type_vocab_size)
        out[task] = score_sentence_task(model, batches, task, seed)
    return out
