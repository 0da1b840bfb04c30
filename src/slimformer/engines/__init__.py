"""Engine directories: the contract between export/quantization and the benchmark.

Modules: :mod:`~slimformer.engines.manifest` (write, read, verify), :mod:`~slimformer.engines.runners`
(open an engine in its runtime), :mod:`~slimformer.engines.gate` (parity inputs, the gate, sealing a
directory; imports torch), :mod:`~slimformer.engines.tensorrt` (build and run TensorRT engines),
:mod:`~slimformer.engines.deploy` (copy a verified engine, e.g. to ``best/``).
This package's own namespace imports neither torch nor a runtime: the benchmark's RSS child uses it.

An engine directory is self-contained::

    artifacts/engines/<variant>/
        model.onnx | model.ts | model.engine   the engine file (one of)
        tokenizer files                        copied from the source model (its vocab may be trimmed)
        manifest.json                          what the directory holds, and proof it is intact

``manifest.json`` fields: ``format`` (onnx | torchscript | tensorrt), ``precision``
(fp32 | fp16 | int8), ``variant``, ``source_model``, ``files`` ({relative name: sha256} of
every other file; verification requires the directory to hold exactly these), ``inputs`` / ``outputs`` ([{name, shape, dtype}], symbolic shapes such
as ``["batch", "sequence"]``), ``opset``, ``runtime_versions``, ``parity`` (the gate the
engine passed), ``labels`` (class names by id), ``status`` (ok | skipped) and, when
skipped, ``reason``. A skipped engine has a manifest and no engine file.

Using an engine (what the benchmark does)::

    runner = load_engine(engine_dir, num_threads=2)      # verifies the directory first (see verify_engine)
    tokenizer = slimformer.modeling.load_tokenizer(engine_dir)
    logits = runner(input_ids, attention_mask)          # int64 (batch, seq) x2 -> float32 (batch, classes)
    runner.runtime                                      # "onnxruntime-cpu", "torchscript", "tensorrt"

Inputs are ``input_ids`` and ``attention_mask`` only (BERT defaults ``token_type_ids`` to
zeros), exactly what training feeds the model.
"""

from slimformer.engines.manifest import (
    ENGINE_FILES,
    FORMATS,
    INPUTS,
    MANIFEST,
    MANIFEST_TYPES,
    OUTPUTS,
    PRECISIONS,
    check_onnx,
    engine_metrics,
    file_hashes,
    manifest_type_problem,
    read_manifest,
    regular_files,
    runtime_versions,
    safe_member,
    source_labels,
    verify_engine,
    write_manifest,
)
from slimformer.engines.runners import (
    RUNNERS,
    EngineSkipped,
    OrtRunner,
    ParityError,
    Runner,
    TorchRunner,
    TokenTypeZeros,
    TorchScriptRunner,
    load_engine,
)

__all__ = [
    "ENGINE_FILES", "FORMATS", "INPUTS", "MANIFEST", "MANIFEST_TYPES", "OUTPUTS", "PRECISIONS", "RUNNERS",
    "EngineSkipped", "OrtRunner", "ParityError", "Runner", "TokenTypeZeros", "TorchRunner", "TorchScriptRunner",
    "check_onnx", "engine_metrics", "file_hashes", "load_engine", "manifest_type_problem", "read_manifest",
    "regular_files", "runtime_versions", "safe_member", "source_labels", "verify_engine", "write_manifest",
]  # fmt: skip
