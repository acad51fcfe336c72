"""Pure ONNX graph fixes and INT8 quantization, applied once at ``models fetch`` (beam_anon.models.derived).

Each fix takes a ``ModelProto`` and returns a new one with the same outputs for the same inputs
(tests prove it for every registered model); none edits a weight by hand:

* :func:`initializers_not_inputs`: weights listed as graph inputs (old exporters, e.g.
  CenterFace's 194) make onnxruntime treat them as overridable, so it skips constant folding and
  fusions; removing them from the input list is the fix.
* :func:`dynamic_input`: symbolic dims instead of an exporter's fixed example shape.
* :func:`keep_outputs`: the graph cut to the outputs a detector reads (unused heads cost time).
* :func:`cut_at`: intermediate tensors made the outputs: a YOLO head decoded outside the graph,
  whose decoding constants fixed the input at 640x640.
* :func:`rename`: clean input/output names for a converted graph (``Identity_3:0`` -> ``box8``).
* :func:`fp16_to_fp32`: float16 weights and casts as float32 (quantization needs fp32).
* :func:`opset`: a newer opset (per-channel quantization needs 13).
* :func:`fold_pads`: zero Pad nodes before convolutions (TensorFlow's "SAME" padding of
  stride-2 layers, converted) folded into the convolutions' own pads: onnxruntime fuses them
  in a float graph, but in a QDQ INT8 graph each Pad stays, with a dequantize and a quantize
  around it (RetinaFace: a third of the INT8 pass).

INT8 quantization of the fixed graphs: :mod:`beam_anon.models.quantize`.
"""
from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def initializers_not_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights removed from ``graph.input`` (and initializers no node reads dropped)."""
    model = copy(model)
    graph = model.graph
    names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
    _drop_unread_initializers(graph)
    return model


def _drop_unread_initializers(graph: onnx.GraphProto) -> None:
    """Initializers that no node reads and no output is removed from ``graph`` (in place)."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _set_dims(value_info, dims: Sequence) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = str(d)


def dynamic_input(model: onnx.ModelProto, name: str, dims: Sequence) -> onnx.ModelProto:
    """Input ``name`` gets ``dims`` (ints or symbolic names); every other shape in the graph
    (outputs, value_info) is made unknown of the same rank, to be inferred at run time."""
    model = copy(model)
    graph = model.graph
    found = [i for i in graph.input if i.name == name]
    if not found:
        raise ValueError(f"no graph input named {name!r}")
    _set_dims(found[0], dims)
    for vi in list(graph.output) + list(graph.value_info):
        rank = len(vi.type.tensor_type.shape.dim)
        _set_dims(vi, [f"{vi.name}_d{k}" for k in range(rank)])
    return model


def keep_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """The graph cut to what ``names`` (graph outputs) need; nodes only other outputs need go."""
    missing = set(names) - {o.name for o in model.graph.output}
    if missing:
        raise ValueError(f"not graph outputs: {sorted(missing)}")
    model = copy(model)
    graph = model.graph
    needed, nodes = set(names), []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i)
    nodes.reverse()
    outputs = [o for o in graph.output if o.name in names]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(outputs)
    kept = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    vi = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(vi)
    return model


def rename(model: onnx.ModelProto, names: dict[str, str]) -> onnx.ModelProto:
    """Graph inputs and outputs renamed by ``names`` (old -> new, every reference too); the
    outputs named there come first, in that order (a converter's ``Identity_3:0`` -> ``box8``)."""
    missing = set(names) - {v.name for v in list(model.graph.input) + list(model.graph.output)}
    if missing:
        raise ValueError(f"not graph inputs or outputs: {sorted(missing)}")
    model = copy(model)
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    order = {new: k for k, new in enumerate(names.values())}
    outputs = sorted(graph.output, key=lambda o: order.get(o.name, len(order)))
    del graph.output[:]
    graph.output.extend(outputs)
    return model


def cut_at(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """The graph cut so that the intermediate ``tensors`` become its outputs (in this order)
    and everything after them is gone: e.g. a detector's raw head, decoded outside the graph
    (its decoding baked the input size in). Output shapes are left to inference."""
    model = copy(model)
    produced = {o: n for n in model.graph.node for o in n.output}
    missing = [t for t in tensors if t not in produced]
    if missing:
        raise ValueError(f"no node produces {missing}")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.output)}
    del model.graph.output[:]
    for t in tensors:
        rank = len(types[t].shape.dim) if t in types else 4
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            t, types[t].elem_type if t in types else TensorProto.FLOAT,
            [f"{t}_d{k}" for k in range(rank)]))
    return keep_outputs(model, list(tensors))


def fp16_to_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 initializers, constants, casts, inputs and outputs become float32; casts that then
    convert float32 to float32 are removed (their output renamed to their input)."""
    model = copy(model)
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float32), init.name))
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    rename: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
        nodes.append(node)
    types = _float_tensors(model)
    kept = []
    for node in nodes:
        node.input[:] = [rename.get(i, i) for i in node.input]
        if (node.op_type == "Cast" and node.input[0] in types and node.output[0] not in
                {o.name for o in graph.output}):
            rename[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    for o in graph.output:
        if o.name in rename:
            raise ValueError(f"output {o.name} is a removed cast")
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of tensors known to be float32 after :func:`fp16_to_fp32` (inputs, initializers,
    outputs of float ops), for spotting float->float casts."""
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {vi.name for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
              if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    floats |= {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    return floats


def opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """The model converted to opset ``version`` (no-op when already there)."""
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current >= version:
        return copy(model)
    from onnx import version_converter
    return version_converter.convert_version(model, version)


def downstream_of(model: onnx.ModelProto, op_type: str) -> list[str]:
    """Names of the nodes of type ``op_type`` and of every node that depends on one of them
    (graph order): in detector heads, what decodes boxes and must stay float."""
    tainted: set[str] = set()
    names = []
    for node in model.graph.node:
        if node.op_type == op_type or any(i in tainted for i in node.input):
            tainted.update(node.output)
            names.append(node.name)
    return names


def _attr(node: onnx.NodeProto, name: str):
    return next((a for a in node.attribute if a.name == name), None)


def _foldable_pad(node: onnx.NodeProto, inits: dict, users: list) -> np.ndarray | None:
    """The (N, C, H, W) pads of a Pad node that only adds zeros on H and W and feeds only
    explicitly padded Convs, as ``[top, left, bottom, right]``; None when it is not that."""
    if len(node.input) < 2 or node.input[1] not in inits or not users:
        return None
    mode = _attr(node, "mode")
    value = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    pads = inits[node.input[1]].reshape(-1)
    auto = [_attr(u, "auto_pad") for u in users]
    if ((mode is not None and mode.s != b"constant") or (value is not None and np.any(value))
            or len(pads) != 8 or pads[[0, 1, 4, 5]].any() or (pads < 0).any()
            or any(u.op_type != "Conv" for u in users)
            or any(a is not None and a.s not in (b"", b"NOTSET") for a in auto)):
        return None
    return pads[[2, 3, 6, 7]].astype(int)


def fold_pads(model: onnx.ModelProto) -> onnx.ModelProto:
    """Zero Pad nodes on H and W whose only readers are Convs removed, their pads added to
    each Conv's ``pads`` (the same output: a Conv pads with zeros)."""
    model = copy(model)
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    dropped = set()
    for k, node in enumerate(graph.node):
        if node.op_type != "Pad" or node.output[0] in outputs:
            continue
        readers = users.get(node.output[0], [])
        pads = _foldable_pad(node, inits, readers)
        if pads is None:
            continue
        for conv in readers:
            attr = _attr(conv, "pads")
            old = list(attr.ints) if attr is not None else [0, 0, 0, 0]
            new = [int(a + b) for a, b in zip(old, pads)]
            if attr is None:
                conv.attribute.append(onnx.helper.make_attribute("pads", new))
            else:
                attr.ints[:] = new
            conv.input[0] = node.input[0]
        dropped.add(k)
    kept = [n for k, n in enumerate(graph.node) if k not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unread_initializers(graph)
    return model


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Unnamed nodes get ``<op type>_<index>`` names (quantization excludes nodes by name)."""
    model = copy(model)
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return model


def apply_fixes(model: onnx.ModelProto, fixes: Iterable[str]) -> onnx.ModelProto:
    """Apply registry fix strings in order: ``initializers_not_inputs``, ``fp16_to_fp32``,
    ``dynamic_input:NAME=d0,d1,...`` (ints or symbols), ``keep_outputs:A,B``, ``cut_at:A,B``,
    ``rename:OLD=NEW,...``,
    ``opset:N``, ``name_nodes``, ``fold_pads``."""
    for fix in fixes:
        name, _, arg = fix.partition(":")
        if name == "name_nodes":
            model = name_nodes(model)
        elif name == "initializers_not_inputs":
            model = initializers_not_inputs(model)
        elif name == "fp16_to_fp32":
            model = fp16_to_fp32(model)
        elif name == "dynamic_input":
            tensor, _, dims = arg.partition("=")
            model = dynamic_input(model, tensor, [int(d) if d.isdigit() else d
                                                  for d in dims.split(",")])
        elif name == "keep_outputs":
            model = keep_outputs(model, arg.split(","))
        elif name == "rename":  # rename:OLD=NEW,OLD=NEW (an OLD may hold ':')
            model = rename(model, dict(p.rsplit("=", 1) for p in arg.split(",")))
        elif name == "cut_at":
            model = cut_at(model, arg.split(","))
        elif name == "opset":
            model = opset(model, int(arg))
        elif name == "fold_pads":
            model = fold_pads(model)
        else:
            raise ValueError(f"unknown graph fix {fix!r}")
    onnx.checker.check_model(model)
    return model


def describe(path: str) -> dict:
    """Facts a graph check looks at: opset, inputs (name, dims, type), outputs, initializers
    still listed as inputs, node count by op type (for ``models list --graphs``)."""
    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}

    def dims(vi):
        return [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]

    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0],
            "inputs": [(i.name, dims(i), TensorProto.DataType.Name(i.type.tensor_type.elem_type))
                       for i in model.graph.input if i.name not in inits],
            "weights_as_inputs": sum(i.name in inits for i in model.graph.input),
            "outputs": [(o.name, dims(o)) for o in model.graph.output],
            "ops": json.loads(json.dumps(ops))}

