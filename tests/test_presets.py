"""Model presets have the published shapes: parameter counts equal those of the Hugging Face
class built from the same configuration, ALBERT's sharing variants are within 3% of
Table 4, and docs/models.md shows what ``pretrain describe --all --markdown`` prints.
Everything is built on the meta device: no weights are allocated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pretrain.cli import main
from pretrain.models.describe import (
    PAPER_OBJECTIVE,
    PAPER_PARAMETERS,
    describe,
    load_model_config,
    meta_model,
    parameter_groups,
)

transformers = pytest.importorskip("transformers")
from pretrain.models.hf import check_exportable, hf_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESETS = ["bert-base", "bert-large", "roberta-base", "albert-base", "albert-large", "albert-xlarge", "albert-xxlarge"]


def _paper(n: str) -> float:
    return float(n.rstrip("M")) * 1e6


@pytest.mark.parametrize("name", PRESETS)
def test_preset_parameter_count_equals_hugging_face(name):
    cfg = load_model_config(name)
    sentence = PAPER_OBJECTIVE[cfg.family]
    ours = meta_model(cfg, sentence).num_parameters()
    cls = check_exportable(cfg, sentence)
    with torch.device("meta"):
        hf = getattr(transformers, cls)(hf_config(cfg, sentence))
    theirs = hf.num_parameters()
    paper = PAPER_PARAMETERS[name][0]
    print(f"{name}: ours {ours:,}  {cls} {theirs:,}  paper {paper}")
    assert ours == theirs
    # the papers round; ALBERT-xxlarge's 235M is the loosest (223M built)
    assert abs(ours - _paper(paper)) / _paper(paper) < 0.06


def test_preset_shapes_are_the_published_ones():
    c = {n: load_model_config(n) for n in PRESETS}
    assert c["bert-base"].vocab_size == c["bert-large"].vocab_size == 30522
    assert (c["roberta-base"].vocab_size, c["roberta-base"].max_position_embeddings) == (50265, 514)
    assert c["roberta-base"].position_offset == 2 and c["roberta-base"].type_vocab_size == 1
    for n in PRESETS:
        cfg = c[n]
        assert cfg.intermediate_size == 4 * cfg.hidden_size and cfg.initializer_range == 0.02
        if n.startswith("albert"):
            # ALBERT Table 1 / §3.1: E=128, all shared, H/64 heads
            assert (cfg.vocab_size, cfg.embedding_size, cfg.sharing) == (30000, 128, "all")
            assert cfg.num_attention_heads == cfg.hidden_size // 64
    shapes = {n: (c[n].num_hidden_layers, c[n].hidden_size) for n in PRESETS}
    assert shapes == {
        "bert-base": (12, 768),
        "bert-large": (24, 1024),
        "roberta-base": (12, 768),
        "albert-base": (12, 768),
        "albert-large": (24, 1024),
        "albert-xlarge": (24, 2048),
        "albert-xxlarge": (12, 4096),
    }


def test_preset_vocab_follows_the_data_tokenizer_inside_a_run():
    from pretrain.config import load_run_config

    recipe = REPO / "configs" / "recipe" / "roberta.yaml"
    assert load_run_config(recipe).model.vocab_size == 50265
    assert load_run_config(recipe, "smoke").model.vocab_size == 4096
    assert load_run_config(recipe, "smoke", ["data.tokenizer.vocab_size=600"]).model.vocab_size == 600
    assert load_run_config(recipe, "smoke", ["model.vocab_size=null"]).model.vocab_size is None


# Lan et al. 2020, Table 4: ALBERT-base parameters by embedding size and what is shared.
TABLE4 = {
    (768, "all"): 31e6,
    (768, "attention"): 83e6,
    (768, "ffn"): 57e6,
    (768, "none"): 108e6,
    (128, "all"): 12e6,
    (128, "attention"): 64e6,
    (128, "ffn"): 38e6,
    (128, "none"): 89e6,
}


def test_albert_sharing_variants_match_table_4():
    for (e, sharing), paper in TABLE4.items():
        cfg = load_model_config("albert-base", [f"embedding_size={e}", f"sharing={sharing}"])
        n = meta_model(cfg, "sop").num_parameters()
        print(f"ALBERT-base E={e} sharing={sharing}: ours {n / 1e6:.1f}M paper {paper / 1e6:.0f}M")
        assert abs(n - paper) / paper < 0.03, (e, sharing, n)


def test_parameter_parts_sum_to_the_total():
    cfg = load_model_config("albert-base", ["sharing=attention", "pre_ln=true"])
    m = meta_model(cfg, "sop")
    parts = parameter_groups(m)
    assert sum(parts.values()) == m.num_parameters()
    assert parts["attention blocks"] * cfg.num_hidden_layers == parameter_groups(meta_model(load_model_config("albert-base", ["sharing=none"]), "sop"))["attention blocks"]
    assert parts["embedding projection"] == 128 * 768 + 768 and parts["final LayerNorm"] == 2 * 768


def test_describe_cli_prints_counts_and_docs_table_is_current(capsys):
    assert main(["describe", "albert-base"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"total\s+11,813,810", out) and "embedding 128 (projected to 768)" in out
    assert main(["describe", "--all", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    assert len(table.splitlines()) == 2 + len(PRESETS)
    start, end = "<!-- pretrain describe --all --markdown -->\n", "\n<!-- end -->"
    for name in ("docs/models.md", "README.md"):
        doc = (REPO / name).read_text()
        assert doc[doc.index(start) + len(start) : doc.index(end)] == table, f"regenerate {name}'s preset table"
    assert main(["describe", "nosuch"]) == 2
    assert "unknown model preset 'nosuch'; available: albert-base" in capsys.readouterr().err
    assert main(["describe", "bert-base", "embedding_size=1024"]) == 2
    assert "embedding_size=1024 is larger than model.hidden_size=768" in capsys.readouterr().err


def test_describe_accepts_a_yaml_path(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("vocab_size: 1000\nhidden_size: 64\nnum_hidden_layers: 2\nnum_attention_heads: 2\nintermediate_size: 128\n")
    text = describe(str(f))
    n = meta_model(load_model_config(str(f)), "nsp").num_parameters()
    assert text.startswith("mine  family bert, objective nsp") and f"{n:,}" in text
