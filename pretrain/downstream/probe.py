"""``pretrain probe``: zero-shot probes of pretrained models, no fine-tuning.

    pretrain probe blimp MODEL [--limit N] [--phenomena P ...] [--random-init]
    pretrain probe sentence MODEL [MODEL ...] [--corpus SPEC] [--pairs N]

``blimp`` scores BLiMP by pseudo-log-likelihood (``pretrain.downstream.blimp``) and writes
``blimp.json`` (accuracy per phenomenon, per field, overall) into the model's evaluation
directory (``<run>/eval/`` for our runs, ``runs/probe/<name>/`` for Hugging Face
directories, or ``--out``). ``sentence`` scores every model on the same held-out NSP and SOP
sets and masked tokens (``pretrain.downstream.sentence_probe``; ALBERT Table 5), builds the
sets once under ``runs/probe/sentence-sets/`` and prints the cross-task table; each model's
scores go to ``sentence.json`` in its evaluation directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from common.atomic import write_json_atomic
from common.errors import UserError
from pretrain.downstream.glue import default_root


def eval_directory(model: str, runs_root: str | Path, random_init: bool = False) -> Path:
    """``<run>/eval`` for our runs, ``<runs_root>/probe/<name>`` for Hugging Face directories
    (``-random-init`` appended for the control)."""
    from pretrain.downstream.runner import pretrained_identity

    ident = pretrained_identity(model)
    suffix = "-random-init" if random_init else ""
    if ident["run_dir"] is not None:
        return Path(ident["run_dir"]) / f"eval{suffix}"
    return Path(runs_root) / "probe" / f"{ident['name']}{suffix}"


MIN_PAIR_LENGTH = 8  # tokens of a probe pair: room for both segments beside the three special tokens


def _positions(pre) -> int:
    return pre.model_cfg.max_position_embeddings - pre.model_cfg.position_offset


def run_blimp(model: str, limit: Optional[int] = None, phenomena: Optional[Sequence[str]] = None,
              blimp_dir: Optional[str] = None, out: Optional[str] = None, runs_root: str = "runs",
              random_init: bool = False, tokenizer: Optional[str] = None, batch_rows: int = 128) -> Dict[str, Any]:
    """Score ``model`` on BLiMP; write and return the table (``blimp.accuracy_table``)."""
    from pretrain.downstream.blimp import load_pairs, score_blimp
    from pretrain.downstream.source import load_pretrained

    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit} must be >= 1")
    d = Path(out) if out else eval_directory(model, runs_root, random_init)
    if d.exists() and not d.is_dir():
        raise UserError(f"output directory {d} is a file; pass --out a directory for blimp.json")
    pairs = load_pairs(blimp_dir or default_root() / "blimp", limit, phenomena)
    pre = load_pretrained(model, tokenizer, random_init)
    # a stopped run continues from its last finished chunk (blimp.partial.npz, removed when done)
    table = score_blimp(pre.model, pre.tokenizer, pairs, _positions(pre), batch_rows, progress=True,
                        resume=d / "blimp.partial.npz")
    table.update(model=pre.where, random_init=random_init, limit=limit)
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(d / "blimp.json", table)
    for field, acc in table["fields"].items():
        print(f"  {field:<18} {100 * acc:6.2f}")
    print(f"BLiMP overall {100 * table['overall']:.2f} over {table['pairs']} pairs "
          f"({len(table['phenomena'])} phenomena{'' if limit is None else f', first {limit} each'}): {pre.where}"
          f"{' (random init)' if random_init else ''} -> {d / 'blimp.json'}")
    return table


def run_sentence(models: Sequence[str], corpus: Optional[str] = None, validation_fraction: Optional[float] = None,
                 pairs: int = 2000, max_length: int = 128, runs_root: str = "runs", sets_dir: Optional[str] = None,
                 seed: int = 0) -> List[Dict[str, Any]]:
    """Score every model on the shared NSP/SOP/MLM held-out sets; print the cross table.

    ``corpus`` / ``validation_fraction`` default to the first of our checkpoints' data
    config (the corpus the arms were pretrained on); for Hugging Face models alone they are
    required. Raises UserError when no corpus is known, or for ``pairs`` < 1,
    ``max_length`` < ``MIN_PAIR_LENGTH`` or a ``validation_fraction`` outside (0, 1).
    """
    from pretrain.downstream import sentence_probe
    from pretrain.downstream.runner import pretrained_identity
    from pretrain.downstream.source import load_pretrained

    if not models:
        raise UserError("pass at least one model")
    if pairs < 1:
        raise UserError(f"--pairs {pairs} must be >= 1")
    if max_length < MIN_PAIR_LENGTH:
        raise UserError(f"--max-length {max_length} must be >= {MIN_PAIR_LENGTH}: a pair is [CLS] A [SEP] B [SEP]")
    if validation_fraction is not None and not 0.0 < validation_fraction < 1.0:
        raise UserError(f"--validation-fraction {validation_fraction} must be in (0, 1), as the pretraining data's "
                        "data.validation_fraction")
    if corpus is None or validation_fraction is None:
        from pretrain.training.checkpoint import _resolve_checkpoint, read_client_state

        for m in models:
            if pretrained_identity(m)["run_dir"] is not None:
                data = read_client_state(_resolve_checkpoint(Path(m)))["config"]["data"]
                corpus = corpus or data["corpus"]
                validation_fraction = validation_fraction if validation_fraction is not None else data["validation_fraction"]
                break
    if corpus is None or validation_fraction is None:
        raise UserError("no pretraining corpus known: pass --corpus SPEC and --validation-fraction F")
    sets_path = Path(sets_dir) if sets_dir else Path(runs_root) / "probe" / "sentence-sets"
    sets = sentence_probe.load_or_build(sets_path, corpus, float(validation_fraction), max_pairs=pairs)
    rows = []
    for m in models:
        pre = load_pretrained(m)
        scores = sentence_probe.score_model(pre.model, pre.tokenizer, sets, min(max_length, _positions(pre)),
                                            pre.model_cfg.type_vocab_size, seed)
        rec = {"model": pre.where, "sentence_objective": pre.sentence, "corpus": corpus,
               "validation_fraction": validation_fraction, **scores}
        d = eval_directory(m, runs_root)
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / "sentence.json", rec)
        rows.append(rec)
    print(f"held-out sets: {sets_path} ({len(sets['nsp'])} NSP, {len(sets['sop'])} SOP pairs from {corpus})")
    w = max([len("model")] + [len(r["model"]) for r in rows])  # whole names: a cut one may not say which run
    print(f"{'model':<{w}} {'trained':<8} {'MLM':>6} {'NSP':>6} {'SOP':>6}")
    for r in rows:
        print(f"{r['model']:<{w}} {r['sentence_objective']:<8} {100 * r['mlm']['accuracy']:6.1f} "
              f"{100 * r['nsp']['accuracy']:6.1f} {100 * r['sop']['accuracy']:6.1f}")
    return rows
