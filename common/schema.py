"""Names the shards, the data configs and the trainer agree on: input formats, sentence
objectives, label columns and the ignored-label id.

Formats are RoBERTa's (Liu et al. 2019, §4.2): SEGMENT-PAIR and SENTENCE-PAIR carry two
segments and a sentence label; FULL-SENTENCES and DOC-SENTENCES are packed single segments.
Sentence objectives: none (RoBERTa §4.2), NSP (Devlin et al. 2019, §3.1), SOP (Lan et al.
2020, §3.2). Label columns follow the Hugging Face names (``next_sentence_label``,
``sentence_order_label``); ``labels`` holds -100 at positions the MLM loss ignores (the
``ignore_index`` of ``torch.nn.functional.cross_entropy``).
"""

from typing import Dict, Literal, Tuple, get_args

# Typed choices: config fields annotated with these fail at load time on any other value.
Format = Literal["segment_pair", "sentence_pair", "full_sentences", "doc_sentences"]
SentenceObjective = Literal["none", "nsp", "sop"]

FORMATS: Tuple[str, ...] = get_args(Format)
PAIR_FORMATS: Tuple[str, ...] = ("segment_pair", "sentence_pair")
PACKED_FORMATS: Tuple[str, ...] = ("full_sentences", "doc_sentences")
SENTENCE_OBJECTIVES: Tuple[str, ...] = get_args(SentenceObjective)

# Shard column holding each sentence objective's labels.
LABEL_COLUMNS: Dict[str, str] = {"nsp": "next_sentence_label", "sop": "sentence_order_label"}
SENTENCE_LABELS: Tuple[str, ...] = tuple(LABEL_COLUMNS.values())

IGNORE_INDEX = -100
