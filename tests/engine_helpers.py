"""Builders shared by the export, quantize and engine tests: tiny data, tiny ONNX graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

POS = ["a wonderful, moving film with a great cast", "sharp and funny throughout", "a triumph of acting and of nerve",
       "warm and clever, and never dull", "great fun from start to finish"]  # fmt: skip
NEG = ["a dull, lifeless mess of a movie", "tedious and far too long", "the plot makes no sense at all",
       "flat and boring, with nothing to say", "awful in every way"]  # fmt: skip


def write_data(out: Path, rows_per_split: int = 40) -> Path:
    """train/val/test JSONL splits and a card, from short made-up reviews of two classes."""
    out.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("train", "val", "test")):
        rows = []
        for i in range(rows_per_split // 2):
            k = i + 100 * s
            rows.append({"text": f"{POS[k % 5]}, scene {k}", "label": 1})
            rows.append({"text": f"{NEG[k % 5]}, scene {k}", "label": 0})
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "card.json").write_text(json.dumps({"labels": ["rotten", "fresh"]}), encoding="utf-8")
    return out


def sum_model(path: Path) -> Path:
    """A hand-made ONNX "classifier": logits = [sum(ids * mask), sum(mask)] per row, float32 (batch, 2)."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axes"], ["s_ids"], keepdims=1),
        helper.make_node("ReduceSum", ["attention_mask", "axes"], ["s_mask"], keepdims=1),
        helper.make_node("Concat", ["s_ids", "s_mask"], ["s"], axis=1),
        helper.make_node("Cast", ["s"], ["logits"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "sum", [ids, mask], [logits], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def sum_reference(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    return np.stack([(input_ids * attention_mask).sum(1), attention_mask.sum(1)], axis=1).astype(np.float32)
