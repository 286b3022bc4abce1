"""Downstream evaluation: GLUE and CoNLL-2003 data, their encoding for our tokenizers, metrics,
the fine-tuning runner over seeds, and the zero-shot probes (BLiMP, NSP/SOP)."""
