"""Names every stage agrees on: what a classifier takes and returns, and the tokenizer files it ships.

One definition, imported by the model side (``modeling``) and the deployment side (engines,
export, benchmark): a rename here is a rename everywhere.
"""

from __future__ import annotations

INPUT_NAMES = ("input_ids", "attention_mask")  # BERT defaults token_type_ids to zeros: not an input
OUTPUT_NAME = "logits"
# Every tokenizer file an engine ships (copied from its source model when present) ...
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json")
# ... of which a model directory needs at least one vocabulary to be loadable.
VOCAB_FILES = ("tokenizer.json", "vocab.txt")
