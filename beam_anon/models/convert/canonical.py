"""A converted graph in one canonical form, so a conversion gives the same bytes every time.

tf2onnx's result varies from run to run in ways that do not change what the graph computes:
names carry process-global counters, equal constants are merged or not, shape arithmetic comes
in a different order (``H * W`` or ``W * H``), nodes are listed in another topological order.
A derived file's sha256 is pinned, so :func:`canonical` removes all of that:

1. equal initializers become one; equal nodes (same op, attributes and inputs) become one;
2. the inputs of commutative operators are sorted;
3. nodes are listed in a topological order that breaks ties by a structural signature (the
   hash of a node's op, attributes and the signatures of its inputs, down to the constants and
   graph inputs);
4. tensors, initializers and nodes are named by position (``t<k>``, ``<op>_<i>``); graph inputs
   and outputs get the names given, their symbolic dims ``<name>_d<k>``.
"""
from __future__ import annotations

import hashlib
import heapq
from typing import Mapping

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Equal"})


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def canonical(model, io_names: Mapping[str, str]):
    """``model`` (an ``onnx.ModelProto``, changed in place and returned) in canonical form,
    its graph inputs and outputs renamed by ``io_names`` (old -> new)."""
    graph = model.graph
    sig: dict[str, str] = {}                  # tensor name -> structural signature
    for value in graph.input:
        sig[value.name] = _digest("input", io_names.get(value.name, value.name))
    for init in graph.initializer:
        body = init.__class__()
        body.CopyFrom(init)
        body.name = ""
        sig[init.name] = _digest("const", body.SerializeToString(deterministic=True))
    first: dict[str, str] = {}                # signature -> first tensor name carrying it
    alias: dict[str, str] = {}
    nodes = {}                                # node signature -> node (duplicates dropped)
    for node in graph.node:                   # ONNX lists nodes in a topological order
        node.input[:] = [alias.get(x, x) for x in node.input]
        ins = [sig.get(x, "") for x in node.input]
        if node.op_type in COMMUTATIVE:
            order = sorted(range(len(ins)), key=lambda k: ins[k])
            node.input[:] = [node.input[k] for k in order]
            ins = [ins[k] for k in order]
        attrs = [a.SerializeToString(deterministic=True)
                 for a in sorted(node.attribute, key=lambda a: a.name)]
        key = _digest(node.domain, node.op_type, *attrs, "|", *ins)
        if key in nodes:                      # the same computation again: reuse its outputs
            for mine, theirs in zip(node.output, nodes[key].output):
                alias[mine] = theirs
            continue
        nodes[key] = node
        for k, out in enumerate(node.output):
            sig[out] = _digest(key, str(k))
    for value in graph.output:                # an output dropped as a duplicate: keep a node
        if value.name in alias:
            raise ValueError(f"graph output {value.name} duplicates another tensor")
    inits = {}
    for init in graph.initializer:
        inits.setdefault(sig[init.name], init)
    for init in graph.initializer:
        alias.setdefault(init.name, inits[sig[init.name]].name)
    for node in nodes.values():
        node.input[:] = [alias.get(x, x) for x in node.input]

    # topological order, ties broken by signature
    producer = {out: key for key, node in nodes.items() for out in node.output}
    waiting = {key: {producer[x] for x in node.input if x in producer}
               for key, node in nodes.items()}
    users: dict[str, list[str]] = {}
    for key, deps in waiting.items():
        for dep in deps:
            users.setdefault(dep, []).append(key)
    ready = [key for key, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        key = heapq.heappop(ready)
        order.append(nodes[key])
        for user in users.get(key, ()):
            waiting[user].discard(key)
            if not waiting[user]:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle")

    names = dict(io_names)

    def new(name: str) -> str:
        if name and name not in names:
            names[name] = f"t{len(names)}"
        return names.get(name, name)

    for i, node in enumerate(order):
        node.input[:] = [new(x) for x in node.input]
        node.output[:] = [new(x) for x in node.output]
        node.name = f"{node.op_type}_{i}"
    for value in list(graph.input) + list(graph.output):
        value.name = new(value.name)
        for k, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                dim.dim_param = f"{value.name}_d{k}"
    used = {x for node in order for x in node.input}
    kept = sorted((t for t in inits.values() if new(t.name) in used),
                  key=lambda t: int(new(t.name)[1:]))
    for init in kept:
        init.name = new(init.name)
    del graph.value_info[:]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(order)
    return model
