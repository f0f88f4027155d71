"""Floating-point operations of a traced TensorFlow graph, counted from its ops' static shapes.

Counted: matrix products (MatMul, BatchMatMul, two-operand Einsum) and convolutions (Conv2D,
depthwise, and their input / filter gradients), 2 FLOPs per multiply-add. Elementwise ops
(activations, normalization, the optimizer's update) are not counted: they are a few FLOPs
per value against the hundreds per output value of a product or convolution. The training
step's graph is counted as it is, so the backward pass is what TensorFlow's gradient actually
builds (none below the lowest trained layer).
"""

from __future__ import annotations

import math


def _dims(tensor) -> list[int]:
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape.as_list()):
        raise ValueError(f"{tensor.name} has no static shape ({shape}): trace with fixed shapes")
    return shape.as_list()


def _einsum(op) -> int:
    if len(op.inputs) != 2:
        return 0
    equation = op.get_attr("equation").decode().replace(" ", "")
    lhs = equation.split("->")[0].split(",")
    sizes = {}
    for spec, tensor in zip(lhs, op.inputs):
        dims = _dims(tensor)
        if "." in spec:  # an ellipsis: the leading dimensions are the broadcast batch
            fixed = spec.replace("...", "")
            sizes.update({f"_{i}": d for i, d in enumerate(dims[:len(dims) - len(fixed)])})
            dims, spec = dims[len(dims) - len(fixed):], fixed
        sizes.update(zip(spec, dims))
    return 2 * math.prod(sizes.values())


def op_flops(op) -> int:
    """FLOPs of one op (0 for ops not counted)."""
    t = op.type
    if t == "MatMul":
        a, b = _dims(op.inputs[0]), _dims(op.inputs[1])
        k = a[0] if op.get_attr("transpose_a") else a[1]
        return 2 * math.prod(_dims(op.outputs[0])) * k
    if t.startswith("BatchMatMul"):
        a = _dims(op.inputs[0])
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return 2 * math.prod(_dims(op.outputs[0])) * k
    if t == "Einsum":
        return _einsum(op)
    if t == "Conv2D":
        kh, kw, cin, _ = _dims(op.inputs[1])
        return 2 * math.prod(_dims(op.outputs[0])) * kh * kw * cin
    if t in ("Conv2DBackpropInput", "Conv2DBackpropFilter"):
        # Both cost what the forward convolution costs: out_backprop x window x input channels.
        filt = _dims(op.inputs[1]) if t == "Conv2DBackpropInput" else _dims(op.outputs[0])
        kh, kw, cin, _ = filt
        return 2 * math.prod(_dims(op.inputs[2])) * kh * kw * cin
    if t == "DepthwiseConv2dNative":
        kh, kw, _, _ = _dims(op.inputs[1])
        return 2 * math.prod(_dims(op.outputs[0])) * kh * kw
    if t in ("DepthwiseConv2dNativeBackpropInput", "DepthwiseConv2dNativeBackpropFilter"):
        filt = _dims(op.inputs[1]) if t.endswith("Input") else _dims(op.outputs[0])
        kh, kw = filt[0], filt[1]
        return 2 * math.prod(_dims(op.inputs[2])) * kh * kw
    return 0


def _live_ops(graph) -> list:
    """The ops the function's outputs or its stateful ops (variable updates) depend on: what
    is left after TensorFlow prunes dead code (e.g. the input gradient of the lowest trained
    layer, which the gradient function builds and nothing reads)."""
    roots = [t.op for t in graph.outputs] + [op for op in graph.get_operations()
                                             if op._is_stateful and not op.outputs]
    live, todo = set(), list(roots)
    while todo:
        op = todo.pop()
        if op.name in live:
            continue
        live.add(op.name)
        todo.extend(t.op for t in op.inputs)
        todo.extend(op.control_inputs)
    return [op for op in graph.get_operations() if op.name in live]


def graph_flops(graph) -> int:
    """FLOPs of the counted live ops of `graph` (a traced function's graph)."""
    return sum(op_flops(op) for op in _live_ops(graph))


def function_flops(fn, *args) -> int:
    """FLOPs of `fn` (a Python function) traced by `tf.function` for `args`' fixed shapes."""
    import tensorflow as tf

    specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, a.dtype), args)
    return graph_flops(tf.function(fn, autograph=False).get_concrete_function(*specs).graph)
