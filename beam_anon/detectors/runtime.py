"""The one place inference sessions are built: which file of a model runs, on which device, with
how many threads.

A model's *variant* is a setting, not a fork: ``original`` (the verified file from its PyPI
archive), ``fixed`` (graph-fixed at fetch, same outputs; ``beam_anon.models.graphs``) or ``int8``
(static QDQ INT8 made at fetch from ``fixed``; ``beam_anon.models.derived``). Detector families ask
:func:`session` for an onnxruntime session of the variant chosen by ``Settings.precision``.
Devices: ``cpu``, ``cuda`` (onnxruntime's CUDA provider; needs ``onnxruntime-gpu``), ``auto``
(CUDA when the provider is present, else CPU). Never Azure, whatever onnxruntime lists first.
Detectors of the user's own (``--model_spec``) may also be TensorFlow SavedModels
(:func:`saved_model`) and TFLite files (:func:`tflite`), with the same threads per model.
"""
from __future__ import annotations

import os

VARIANTS = ("original", "fixed", "int8")
DEVICES = ("auto", "cpu", "cuda")


def threads() -> int:
    """Threads per model from ``$BEAM_ANON_THREADS``: default 1, since Beam scales out with one
    worker per core (the CLI's local worker threads, Dataflow's worker processes) and more
    threads per model then only contend; 0 = the runtime's default (all cores), for one worker
    on a whole machine."""
    return int(os.environ.get("BEAM_ANON_THREADS") or 1)


def providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers for ``device``; raises when ``cuda`` is asked for and
    this onnxruntime has no CUDA provider."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError("device 'cuda': this onnxruntime has no CUDAExecutionProvider "
                           "(install onnxruntime-gpu on GPU workers)")
    wanted = ["CPUExecutionProvider"] if device == "cpu" else [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available]


def session(model, device: str = "auto"):
    """An onnxruntime session for ``model`` (a path or serialized bytes): full graph
    optimisation, intra-op threads from :func:`threads`, no busy-waiting between operators (a
    spinning thread burns the core another worker needs), and no memory pattern: onnxruntime
    plans one block per input shape on a shape's second run, and the plan's inputs vary by image
    (sizes, packed crop canvases), so the plans cost more than they save (docs/performance.md)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=providers(device))


def saved_model(path: str):
    """A TensorFlow SavedModel loaded with ``tf.saved_model.load`` (no object_detection
    package needed), TensorFlow's intra-op threads from :func:`threads` (when it has not
    started yet: the setting is process-wide)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads())
        tf.config.threading.set_inter_op_parallelism_threads(1 if threads() else 0)
    except RuntimeError:  # TensorFlow already initialised in this process: keeps its setting
        pass
    return tf.saved_model.load(path)


def tflite(path: str):
    """A LiteRT (``ai-edge-litert``) interpreter for the .tflite file ``path``, tensors
    allocated, threads from :func:`threads` (0: the runtime's default)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads() or None)
    interpreter.allocate_tensors()
    return interpreter


def model_file(spec: dict, model_dir: str, variant: str) -> str:
    """Path of ``variant`` (see :func:`variant_of`) of the registry entry ``spec`` whose verified
    files lie under ``model_dir``."""
    if variant == "original":
        return os.path.join(model_dir, spec["main_file"])
    derived = spec.get("derived", {})
    if variant not in derived:
        raise ValueError(f"model {spec['name']!r} has no {variant!r} variant")
    return os.path.join(model_dir, derived[variant]["file"])


def variants(spec: dict) -> list[str]:
    """The variants of ``spec`` that can run: ``original`` (unless the archive's file is no
    ONNX graph but a source converted at fetch: TF.js, a TF graph) and every derived one."""
    derived = spec.get("derived", {})
    converted = bool(derived.get("fixed", {}).get("convert"))
    return (["original"] if not converted else []) + list(derived)


def variant_of(spec: dict, precision: str) -> str:
    """The variant that runs for ``Settings.precision``: ``int8`` where the model has one (kept
    only where its devset recall held), else ``fixed`` where it has one, else ``original``
    (e.g. YuNet, a native library); ``float`` skips INT8; ``original`` runs the archive's file (for
    a model whose archive holds no ONNX graph, TF.js or TF, its ``fixed`` conversion)."""
    derived = spec.get("derived", {})
    if precision == "original" and derived.get("fixed", {}).get("convert"):
        return "fixed"  # the archive's file is no ONNX graph (TF.js, TF): its conversion runs
    if precision == "int8" and "int8" in derived:
        return "int8"
    if precision in ("int8", "float") and "fixed" in derived:
        return "fixed"
    if precision not in ("int8", "float", "original"):
        raise ValueError(f"precision {precision!r}: expected int8, float or original")
    return "original"
