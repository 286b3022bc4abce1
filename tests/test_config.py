"""Typed config loading: composition order, presets, one-line errors listing valid keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.errors import UserError
from data_prep.config import data_fingerprint, load_data_config
from pretrain.config import load_run_config, read_composed

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipe" / "roberta.yaml"


def test_recipe_includes_sections_and_preset_scales_it():
    paper = load_run_config(RECIPE)
    assert paper.model.hidden_size == 768 and paper.data.max_seq_length == 512
    assert paper.train.optimizer.betas == [0.9, 0.98]  # RoBERTa §3.1
    smoke = load_run_config(RECIPE, "smoke")
    assert smoke.model.hidden_size == 128 and smoke.data.max_seq_length == 128
    # keys the preset does not touch keep the recipe's value
    assert smoke.data.tokenizer.kind == "bpe" and smoke.train.optimizer.eps == 1e-6


def test_layers_then_cli_overrides_win():
    cfg = load_run_config(
        RECIPE, "smoke", ["train.max_steps=7"], layers=[{"data": {"masking": {"mode": "static"}}, "train": {"max_steps": 5}}]
    )
    assert cfg.data.masking.mode == "static"
    assert cfg.train.max_steps == 7


def test_objective_follows_data_sentence_objective_by_default():
    cfg = load_run_config(RECIPE, "smoke", ["data.format=segment_pair", "data.sentence_objective=nsp"])
    assert cfg.objective.sentence == "nsp"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.optimiser.lr=1", "unknown key 'train.optimiser'"),
        ("data.masking.mod=static", "valid keys under data.masking: copies, dupe_factor"),
        ("data.max_seq_length=abc", "bad value for 'data.max_seq_length'"),
        ("data.masking.mode=sometimes", "masking.mode='sometimes' is not one of: static, dynamic"),
        ("data.format=segment_pair", "needs sentence_objective=nsp or sop"),
        ("novalue", "must look like key=value"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors(override, expected):
    with pytest.raises(UserError) as e:
        load_run_config(RECIPE, "smoke", [override])
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("preset", ["smoke", "small", "medium"])
def test_preset_lr_follows_the_composed_task_then_optimizer(preset):
    recipes = REPO / "configs" / "recipe"
    doc = yaml.safe_load((REPO / "configs" / "preset" / f"{preset}.yaml").read_text())
    by_opt, by_task = doc["lr_by_optimizer"], doc["lr_by_task"]
    # LAMB's trust ratio: a step relative to |w|; ELECTRA's discriminator collapses at Adam's
    # masked-LM lr (configs/preset/small.yaml)
    assert by_opt["lamb"] > by_opt["adamw"] > by_task["electra"]
    assert load_run_config(RECIPE, preset).train.optimizer.lr == by_opt["adamw"]
    assert load_run_config(recipes / "albert.yaml", preset).train.optimizer.lr == by_opt["lamb"]
    assert load_run_config(recipes / "electra.yaml", preset).train.optimizer.lr == by_task["electra"]
    # an arm that switches the task or the optimizer gets that one's lr; an lr above the preset wins
    assert load_run_config(recipes / "electra.yaml", preset, layers=[{"task": "pretraining"}]).train.optimizer.lr == \
        by_opt["adamw"]
    lamb_arm = {"train": {"optimizer": {"name": "lamb"}}}
    assert load_run_config(RECIPE, preset, layers=[lamb_arm]).train.optimizer.lr == by_opt["lamb"]
    albert = recipes / "albert.yaml"
    assert load_run_config(albert, preset, ["train.optimizer.lr=3e-3"]).train.optimizer.lr == 3e-3
    assert load_run_config(albert, preset, layers=[{"train": {"optimizer": {"lr": 2e-3}}}]).train.optimizer.lr == 2e-3
    # without a preset the recipe's own (paper) lr stays
    assert load_run_config(albert).train.optimizer.lr == 0.00176


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lr_by_optimizer: {adam: 1.0e-3}", r"lr_by_optimizer.adam: unknown name; valid names: adamw, lamb"),
        ("lr_by_task: {mlm: 1.0e-3}", r"lr_by_task.mlm: unknown name; valid names: pretraining, distillation, electra"),
        ("lr_by_optimizer: {adamw: -1.0}", r"lr_by_optimizer.adamw=-1.0 must be a learning rate > 0"),
        ("lr_by_optimizer: {adamw: fast}", r"lr_by_optimizer.adamw='fast' must be a learning rate > 0"),
        ("lr_by_optimizer: 1.0e-3", r"lr_by_optimizer must map names \(adamw, lamb\) to learning rates"),
        ("train: {optimizer: {lr: 1.0e-3}}\nlr_by_optimizer: {adamw: 1.0e-3}",
         r"sets both train.optimizer.lr and lr_by_optimizer; keep one"),
        ("lr_by_task: {electra: 1.0e-3}\nlr_by_optimizer: {adamw: 1.0e-3}",
         r"preset '.*p.yaml' gives no learning rate for task 'pretraining' or optimizer 'lamb' \(lr_by_task: electra; "
         r"lr_by_optimizer: adamw\); add lr_by_optimizer.lamb to the preset or pass train.optimizer.lr=LR"),
    ],
)
def test_bad_preset_lr_table_is_a_one_line_error(tmp_path, text, expected):
    preset = tmp_path / "p.yaml"
    preset.write_text(text + "\n")
    with pytest.raises(UserError, match=expected) as e:
        load_run_config(REPO / "configs" / "recipe" / "albert.yaml", str(preset))
    assert "\n" not in str(e.value)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(UserError, match="available: .*smoke"):
        load_run_config(RECIPE, "nosuchpreset")


def test_missing_config_and_include_cycle(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_run_config(tmp_path / "absent.yaml")
    (tmp_path / "a.yaml").write_text("include: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(UserError, match="include cycle"):
        read_composed(tmp_path / "a.yaml")


def test_fingerprint_ignores_output_dir_but_not_masking():
    a = load_data_config(None, ["output_dir=/x"])
    b = load_data_config(None, ["output_dir=/y"])
    c = load_data_config(None, ["masking.mode=static"])
    assert data_fingerprint(a) == data_fingerprint(b) != data_fingerprint(c)


def test_sentence_separator_is_checked_and_changes_the_data_identity():
    """data.sentence_separator=eos (fairseq's layout) builds other data than the default:
    its fingerprint differs, so its shards never pass for the default's; the default keeps
    the fingerprint builds made before the key existed had. Pairs refuse eos at load."""
    import hashlib
    import json

    from omegaconf import OmegaConf

    plain = load_data_config(None, [])
    eos = load_data_config(None, ["sentence_separator=eos"])
    assert plain.sentence_separator == "none" and data_fingerprint(plain) != data_fingerprint(eos)
    earlier = OmegaConf.to_container(OmegaConf.structured(plain), resolve=True)
    for key in ("output_dir", "num_workers", "doc_sentences_batching", "sentence_separator"):
        earlier.pop(key)
    earlier["masking"].pop("smoothing")  # added later too; never in the fingerprint (dynamic masks only)
    assert data_fingerprint(plain) == hashlib.sha256(json.dumps(earlier, sort_keys=True).encode()).hexdigest()[:16]
    with pytest.raises(UserError, match="sentence_separator=eos is a layout of the packed formats"):
        load_data_config(None, ["format=segment_pair", "sentence_objective=nsp", "sentence_separator=eos"])
    with pytest.raises(UserError, match="none, eos"):
        load_data_config(None, ["sentence_separator=newline"])


# One choice key per section; each fails when the config loads, naming the valid values.
CHOICES = [
    ("model.family", "xlnet", "bert, roberta, albert, distilbert"),
    ("model.sharing", "alll", "none, all, attention, ffn"),
    ("objective.sentence", "mlm", "none, nsp, sop"),
    ("data.format", "packed", "segment_pair, sentence_pair, full_sentences, doc_sentences"),
    ("data.tokenizer.kind", "bytes", "bpe, wordpiece, unigram"),
    ("data.masking.mode", "sometimes", "static, dynamic"),
    ("train.precision", "fp8", "fp32, bf16, fp16"),
    ("train.optimizer.name", "sgd", "adamw, lamb"),
    ("train.schedule.name", "cosine", "linear, polynomial, wsd"),
    ("train.zero_stage", "4", "0, 1, 2, 3"),
]


@pytest.mark.parametrize("key, bad, valid", CHOICES, ids=[c[0] for c in CHOICES])
def test_choice_keys_are_typed_in_every_section(tmp_path: Path, key: str, bad: str, valid: str):
    msg = rf"{key}='{bad}' is not one of: {valid}$"
    with pytest.raises(UserError, match=rf"^{RECIPE}: " + msg):  # on the command line
        load_run_config(RECIPE, "smoke", [f"{key}={bad}"])
    section, _, rest = key.partition(".")
    nested: dict = {}
    node = nested
    for part in rest.split(".")[:-1]:
        node = node.setdefault(part, {})
    node[rest.split(".")[-1]] = bad
    yaml_file = tmp_path / "bad.yaml"  # in a YAML file the recipe includes
    yaml_file.write_text(yaml.safe_dump({"include": [str(RECIPE)], section: nested}))
    with pytest.raises(UserError, match=rf"^{yaml_file}: " + msg):
        load_run_config(yaml_file)
    with pytest.raises(UserError, match=msg):  # in an ablation arm's layer
        load_run_config(RECIPE, "smoke", layers=[{section: nested}])


@pytest.mark.parametrize("recipe, vocab, least", [("roberta", 100, 262), ("bert", 5, 6), ("albert", 2, 6)])
def test_a_vocabulary_too_small_for_the_tokenizer_fails_when_the_config_loads(recipe, vocab, least):
    """Caught before any corpus is read (byte-level BPE holds all 256 bytes, Liu et al. 2019 §4.4)."""
    with pytest.raises(UserError, match=rf"tokenizer.vocab_size={vocab} is too small for a \w+ tokenizer: it needs at least {least} "):
        load_run_config(REPO / "configs" / "recipe" / f"{recipe}.yaml", "smoke", [f"data.tokenizer.vocab_size={vocab}"])
    load_run_config(REPO / "configs" / "recipe" / f"{recipe}.yaml", "smoke", [f"data.tokenizer.vocab_size={least}"])
