"""Static INT8 quantization of a (graph-fixed, :mod:`beam_anon.models.graphs`) float model, done once
at ``models fetch`` (beam_anon.models.derived): QDQ, per-channel weights, calibrated on real images,
with outward rounded ranges so the same inputs give the same file on any CPU (see
:func:`quantize_int8`)."""
from __future__ import annotations

import math
import os
import tempfile
from typing import Iterable, Sequence

import numpy as np
import onnx


def _round_out(value: float, up: bool, bits: int = 4) -> float:
    """``value`` rounded onto a grid of ``bits`` mantissa bits, towards +inf when ``up`` else
    towards -inf (a range only widens): floating-point noise between CPUs then almost never
    changes a calibration range."""
    if value == 0 or not math.isfinite(value):
        return 0.0 if not math.isfinite(value) else value
    exp = math.floor(math.log2(abs(value))) - bits
    step = 2.0 ** exp
    return (math.ceil(value / step) if up else math.floor(value / step)) * step


def quantize_int8(model: onnx.ModelProto, out_path: str, feeds: Iterable[dict],
                  float_nodes: Sequence[str] = (), reduce_range: bool = True,
                  method: str = "MinMax") -> None:
    """Static QDQ INT8 (per-channel int8 weights, uint8 activations) of ``model`` (float32,
    opset >= 13) written to ``out_path``. Activation ranges: MinMax over ``feeds`` (model input
    dicts made from real images), each bound rounded outward to 4 mantissa bits, so the file is
    reproducible. ``float_nodes`` stay float (box decoding: pixels and scores in one tensor).
    ``reduce_range``: 7-bit weights, avoiding int16 saturation on AVX2 CPUs without VNNI (the
    file may run on any worker)."""
    import logging

    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the calibration sessions' unused-node notes
    quant_log = logging.getLogger()  # onnxruntime.quantization logs its advice on the root logger
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        _quantize(model, out_path, feeds, float_nodes, reduce_range, method)
    finally:
        quant_log.setLevel(level)


def _quantize(model, out_path, feeds, float_nodes, reduce_range, method) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, create_calibrator, quantize_static)
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    class Reader(CalibrationDataReader):
        def __init__(self, items):
            self.items = iter(items)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="beam_anon_quant_") as tmp:
        src = os.path.join(tmp, "model.onnx")
        onnx.save(model, src)
        calibrator = create_calibrator(src, augmented_model_path=os.path.join(tmp, "aug.onnx"),
                                       calibrate_method=CalibrationMethod[method])
        calibrator.collect_data(Reader(feeds))
        ranges = calibrator.compute_data()
        rounded = {}
        for name, data in ranges.items():
            lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in data.range_value)
            rounded[name] = TensorData(lowest=np.float32(_round_out(lo, up=False)),
                                       highest=np.float32(_round_out(hi, up=True)))
        cache = os.path.join(tmp, "ranges.json")
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, rounded), cache)
        quantize_static(src, out_path, None, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=list(float_nodes),
                        calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=cache)
