"""TensorFlow detectors of the user's own (``--model_spec``): a SavedModel's
``serving_default`` signature (:class:`SavedModelSSD`) and a .tflite file with SSD
post-processing outputs (:class:`TFLiteSSD`); pre-processing and decoding are
:class:`beam_anon.detectors.ssd.SSDDetector`'s."""
from __future__ import annotations

import threading

import numpy as np

from beam_anon.detectors import runtime
from beam_anon.detectors.ssd import SSDDetector
from beam_anon.detectors.user_spec import OD_API_OUTPUTS

#: TFLite output tensors by the ``:N`` suffix of their names, when the spec gives no
#: "outputs": TF1 exports (TFLite_Detection_PostProcess, :1, :2, :3) and TF2 exports
#: (StatefulPartitionedCall:0..3)
TF1_ORDER = {"boxes": 0, "classes": 1, "scores": 2, "count": 3}
TF2_ORDER = {"count": 0, "scores": 1, "classes": 2, "boxes": 3}
_DTYPES = (np.uint8, np.int8, np.float32)


def _image_input(name: str, shape, dtype) -> tuple[int, int] | None:
    """The fixed (H, W) of a [1, H, W, 3] input (None where dynamic); raises otherwise."""
    shape = [None if s is None or s < 0 else int(s) for s in shape]
    if len(shape) != 4 or shape[3] != 3 or shape[0] not in (None, 1) \
            or np.dtype(dtype) not in map(np.dtype, _DTYPES):
        raise ValueError(f"model {name!r}: expected one image input [1, H, W, 3] of uint8, "
                         f"int8 or float32; got {shape} {np.dtype(dtype).name}")
    return (shape[1], shape[2]) if shape[1] and shape[2] else None


class SavedModelSSD(SSDDetector):
    """The ``serving_default`` signature of a TF Object Detection API export: input key and
    dtype read from its ``structured_input_signature`` (``input_tensor`` in TF2 exports,
    ``inputs`` in TF1 zoo exports; uint8 or float), outputs named in the spec (default
    ``detection_boxes``, ``detection_classes``, ``detection_scores``, ``num_detections``)."""

    def load(self, path: str, device: str) -> None:
        name = self.spec["name"]
        self.model = runtime.saved_model(path)
        signatures = dict(self.model.signatures)
        if "serving_default" not in signatures:
            raise ValueError(f"model {name!r}: no serving_default signature (it has "
                             f"{sorted(signatures)})")
        self.fn = signatures["serving_default"]
        args, kwargs = self.fn.structured_input_signature
        inputs = {**kwargs, **{str(i): s for i, s in enumerate(args)}}
        if len(inputs) != 1:
            raise ValueError(f"model {name!r}: serving_default takes {sorted(inputs)}, "
                             "expected one image input")
        (self.input_key, tensor_spec), = inputs.items()
        dtype = tensor_spec.dtype.as_numpy_dtype
        self.fixed_hw = _image_input(name, tensor_spec.shape.as_list(), dtype)
        self.input_dtype = np.dtype(dtype)
        names = sorted(self.fn.structured_outputs)
        missing = [v for v in self.spec["outputs"].values() if v not in names]
        if missing:
            raise ValueError(f"model {name!r}: serving_default has no output {missing}; its "
                             f"outputs are {names} (map them with \"outputs\")")

    def infer(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        out = self.fn(**{self.input_key: tf.constant(blob)})
        return {k: out[v].numpy() for k, v in self.spec["outputs"].items()}


def _by_suffix(details: list[dict], suffix: int, model: str) -> int:
    """Index of the one output tensor named ``...:suffix`` (``:0`` may be left out)."""
    hits = [d["index"] for d in details if d["name"].endswith(f":{suffix}")
            or (suffix == 0 and ":" not in d["name"])]
    if len(hits) != 1:
        raise ValueError(f"model {model!r}: {len(hits)} output tensors named ...:{suffix} "
                         f"among {[d['name'] for d in details]} (give \"outputs\")")
    return hits[0]


class TFLiteSSD(SSDDetector):
    """A .tflite file with SSD post-processing outputs (boxes, 0-based classes, scores,
    count), run by LiteRT. Which output is which: the spec's ``"outputs"``, else the
    signature's OD API output names, else the tensor names' ``:N`` suffix in the TF1 or TF2
    export order (:data:`TF1_ORDER`, :data:`TF2_ORDER`)."""

    def load(self, path: str, device: str) -> None:
        name = self.spec["name"]
        self.interpreter = runtime.tflite(path)
        self.lock = threading.Lock()  # an interpreter is not thread-safe; one per process
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"model {name!r}: {len(inputs)} inputs, expected one image")
        self.input_index = inputs[0]["index"]
        self.fixed_hw = _image_input(name, inputs[0]["shape_signature"], inputs[0]["dtype"])
        self.input_dtype = np.dtype(inputs[0]["dtype"])
        self.outputs = self._output_indices()

    def _output_indices(self) -> dict[str, int]:
        name, given = self.spec["name"], dict(self.spec["outputs"])
        details = self.interpreter.get_output_details()
        by_name = {d["name"]: d["index"] for d in details}
        out: dict[str, int] = {}
        signatures = getattr(self.interpreter, "_get_full_signature_list", dict)()
        if len(signatures) == 1 and len(given) < 4:
            keys = next(iter(signatures.values())).get("outputs", {})
            if set(OD_API_OUTPUTS.values()) <= set(keys):
                out = {k: keys[v] for k, v in OD_API_OUTPUTS.items()}
        if not out and len(given) < 4:
            names = [d["name"] for d in details]
            order = (TF1_ORDER if any(n.startswith("TFLite_Detection_PostProcess") for n in names)
                     else TF2_ORDER if any(n.startswith("StatefulPartitionedCall:") for n in names)
                     else None)
            if order is None:
                raise ValueError(f"model {name!r}: cannot tell which output is which among "
                                 f"{names}; give \"outputs\": {{\"boxes\": N, ...}} (the :N "
                                 "of each tensor name)")
            out = {k: _by_suffix(details, n, name) for k, n in order.items()}
        for key, value in given.items():
            if isinstance(value, int):
                out[key] = _by_suffix(details, value, name)
            elif value in by_name:
                out[key] = by_name[value]
            else:
                raise ValueError(f"model {name!r}: no output tensor {value!r} among "
                                 f"{sorted(by_name)}")
        if len(set(out.values())) != 4:
            raise ValueError(f"model {name!r}: outputs {out} do not name four tensors")
        return out

    def infer(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            if self.fixed_hw is None and tuple(
                    self.interpreter.get_input_details()[0]["shape"]) != blob.shape:
                self.interpreter.resize_tensor_input(self.input_index, blob.shape)
                self.interpreter.allocate_tensors()
            self.interpreter.set_tensor(self.input_index, blob)
            self.interpreter.invoke()
            return {k: self._value(i) for k, i in self.outputs.items()}

    def _value(self, index: int) -> np.ndarray:
        """An output as float32 (dequantized where the tensor is quantized)."""
        detail = next(d for d in self.interpreter.get_output_details() if d["index"] == index)
        value = self.interpreter.get_tensor(index)
        scale, zero = detail.get("quantization", (0.0, 0))
        if value.dtype != np.float32 and scale:
            return (value.astype(np.float32) - zero) * scale
        return value.astype(np.float32)
