"""Loading and saving model directories safely.

Every model handed between stages is a ``save_pretrained`` directory: ``config.json``,
``model.safetensors`` and the tokenizer files. Weights are read only from safetensors
(never from a pickle), no remote code is ever trusted, nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from slimformer.contract import VOCAB_FILES as TOKENIZER_FILES
from slimformer.errors import CheckpointError
from slimformer.families import PACKAGED_TEACHER, resolve_checkpoint  # noqa: F401 - re-exported
from slimformer.io import atomic_dir
from slimformer.measure import safetensors_payload_end


def check_model_dir(path: str | Path, need_tokenizer: bool = True) -> Path:
    """Refuse a directory that cannot be loaded safely, saying what is wrong with it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: model directory not found")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; not a Hugging Face model directory")
    weights = path / "model.safetensors"
    if not weights.is_file():
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
        if pickles:
            raise CheckpointError(
                f"{path}: only pickle weights ({', '.join(sorted(pickles))}); slimformer loads safetensors only, "
                "because unpickling a downloaded file can run arbitrary code. Convert it where you trust it: "
                "model.save_pretrained(dir, safe_serialization=True)"
            )
        raise CheckpointError(f"{path}: no model.safetensors")
    try:
        with safe_open(weights, framework="pt") as f:
            for key in f.keys():  # touching every tensor catches truncation
                f.get_slice(key).get_shape()
        if weights.stat().st_size < safetensors_payload_end(weights):
            raise CheckpointError(f"{weights}: truncated (file shorter than its header says)")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt or truncated safetensors file ({e})") from None
    if need_tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
    return path


def load_tokenizer(path: str | Path):
    path = Path(path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - any tokenizer failure is a checkpoint problem to the user
        raise CheckpointError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {e})") from None


def load_classifier(
    path: str | Path, labels: list[str] | None = None, need_tokenizer: bool = True
) -> PreTrainedModel:
    """Load a sequence classifier from a safetensors directory.

    With ``labels``, a base checkpoint (no classification head yet) gets a fresh head
    of ``len(labels)`` outputs; a head of another size is an error, not a silent reset.
    """
    path = check_model_dir(path, need_tokenizer=need_tokenizer)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}/config.json: cannot read ({type(e).__name__}: {e})") from None
    if labels is not None:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, use_safetensors=True, local_files_only=True, trust_remote_code=False,
            output_loading_info=True,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: config.json does not match model.safetensors or the model type is unsupported "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]})"
        ) from None
    _check_loading_info(path, config.model_type, info, fresh_head=labels is not None)
    return model.eval()


# The tensors a base checkpoint may lack (the new classification head) or hold unused (its
# pretraining head, a pooler the classifier does not use) when it becomes a classifier.
FRESH_HEAD = re.compile(r"(^|\.)(classifier|pre_classifier)\.")
PRETRAINING_HEADS = re.compile(
    r"^(cls|lm_head|vocab_projector|vocab_transform|vocab_layer_norm|generator_predictions|generator_lm_head|"
    r"discriminator_predictions)\.|(^|\.)pooler\."
)


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_loading_info(path: Path, model_type: str, info: dict, fresh_head: bool) -> None:
    """Refuse weights whose tensor names do not match the architecture.

    transformers fills a missing tensor with random values and drops an unexpected one
    with a log line only, so a checkpoint of another layout would train from noise. The
    one expected gap is a base checkpoint becoming a classifier (``fresh_head``: the
    caller passed labels): its new head is missing and its pretraining head unused.
    """
    missing = sorted(k for k in info.get("missing_keys", []) if not (fresh_head and FRESH_HEAD.search(k)))
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if not (fresh_head and PRETRAINING_HEADS.search(k)))
    if not missing and not unexpected:
        return
    parts = [f"missing {len(missing)} tensor(s): {_names(missing)}" if missing else "",
             f"unexpected {len(unexpected)} tensor(s): {_names(unexpected)}" if unexpected else ""]  # fmt: skip
    raise CheckpointError(
        f"{path / 'model.safetensors'}: its tensors do not match the {model_type} architecture of config.json "
        f"({'; '.join(p for p in parts if p)}); loaded, the missing ones would start from random values. "
        "Use the model.safetensors saved with this config.json"
    )


def save_model(model: PreTrainedModel, tokenizer, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` to ``out_dir`` atomically."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra:
            (tmp / "slimformer.json").write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total, embedding and non-embedding parameter counts (pooler and classifier are non-embedding)."""
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in f".{n}")
    return {"total": total, "embedding": emb, "non_embedding": total - emb}
