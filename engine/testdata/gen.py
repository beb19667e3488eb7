#!/usr/bin/python3
"""Generates the small ONNX models package engine tests itself against.

Run from anywhere with Debian's interpreter (python3-onnx, python3-numpy):

    /usr/bin/python3 engine/testdata/gen.py

Every weight comes from a seeded generator, so the output is reproducible. Besides
the models it writes expected.json: for each model, a few requests and the answer
computed here with numpy, independently of ONNX Runtime.

Models (N is the dynamic batch axis):
  linear.onnx    x[N,4] -> Gemm -> logits[N,3], and Softmax -> probs[N,3]
  mlp.onnx       image[N,1,28,28] -> Flatten -> Gemm(784x128) -> Relu -> Gemm(128x10) -> logits[N,10]
  stateful.onnx  Silero-like: input[N,8], state[2,N,4] (zeros), sr int64 scalar ->
                 output[N,1] (a probability), stateN[2,N,4]
  trees.onnx     ai.onnx.ml TreeEnsembleClassifier: x[N,4] -> label[N], probabilities[N,3]
  fixed.onnx     x[1,4] -> logits[1,3] (no batch axis: Load must refuse it)
  consts.onnx    x int64[N,3], gain float[1] and bias int64[2] consts ->
                 logits[N,3] = float(x) * gain + sum(bias)
"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = [helper.make_opsetid("", 13)]
rng = np.random.default_rng(20250527)


def save(model, name):
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(HERE, name))


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


expected = {}

# linear.onnx ----------------------------------------------------------------
W = rng.normal(size=(4, 3)).astype(np.float32)
b = rng.normal(size=(3,)).astype(np.float32)
g = helper.make_graph(
    [helper.make_node("Gemm", ["x", "W", "b"], ["logits"]),
     helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
    "linear",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
     helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
    [init("W", W), init("b", b)])
save(helper.make_model(g, opset_imports=OPSET), "linear.onnx")
x = rng.uniform(-1, 1, size=(5, 4)).astype(np.float32)
expected["linear"] = {"inputs": x.tolist(), "probs": softmax(x @ W + b).tolist()}

# mlp.onnx -------------------------------------------------------------------
W1 = (rng.normal(size=(784, 128)) / 28).astype(np.float32)
b1 = (rng.normal(size=(128,)) / 10).astype(np.float32)
W2 = (rng.normal(size=(128, 10)) / 11).astype(np.float32)
b2 = (rng.normal(size=(10,)) / 10).astype(np.float32)
g = helper.make_graph(
    [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
     helper.make_node("Gemm", ["flat", "W1", "b1"], ["h"]),
     helper.make_node("Relu", ["h"], ["r"]),
     helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"])],
    "mlp",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
    [init("W1", W1), init("b1", b1), init("W2", W2), init("b2", b2)])
save(helper.make_model(g, opset_imports=OPSET), "mlp.onnx")
x = rng.uniform(0, 1, size=(3, 784)).astype(np.float32)
expected["mlp"] = {"inputs": x.tolist(),
                   "probs": softmax(np.maximum(x @ W1 + b1, 0) @ W2 + b2).tolist()}

# stateful.onnx --------------------------------------------------------------
# The request carries 10 values; the model reads the last 8 (offset 2). The state's
# batch axis is in the middle, as in Silero's [2, N, 128].
wi = rng.normal(size=(8, 1)).astype(np.float32)
ws = rng.normal(size=(8, 1)).astype(np.float32)
g = helper.make_graph(
    [helper.make_node("MatMul", ["input", "wi"], ["zi"]),
     helper.make_node("Transpose", ["state"], ["st"], perm=[1, 0, 2]),
     helper.make_node("Reshape", ["st", "flat8"], ["st8"]),
     helper.make_node("MatMul", ["st8", "ws"], ["zs"]),
     helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
     helper.make_node("Mul", ["srf", "srscale"], ["zr"]),
     helper.make_node("Add", ["zi", "zs"], ["z1"]),
     helper.make_node("Add", ["z1", "zr"], ["z"]),
     helper.make_node("Sigmoid", ["z"], ["output"]),
     helper.make_node("Add", ["state", "one"], ["stateN"])],
    "stateful",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8]),
     helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 4]),
     helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
    [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1]),
     helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 4])],
    [init("wi", wi), init("ws", ws), init("flat8", np.array([-1, 8], dtype=np.int64)),
     init("srscale", np.array(-1.0 / 16000, dtype=np.float32)),
     init("one", np.array(1.0, dtype=np.float32))])
save(helper.make_model(g, opset_imports=OPSET), "stateful.onnx")
x = rng.uniform(-1, 1, size=(4, 10)).astype(np.float32)
# With a zero state and sr = 16000 the logit is x[:, 2:] @ wi - 1.
p = 1 / (1 + np.exp(-((x[:, 2:] @ wi)[:, 0] - 1.0)))
expected["stateful"] = {"inputs": x.tolist(), "probs": np.stack([1 - p, p], axis=1).tolist()}

# trees.onnx -----------------------------------------------------------------
# Two depth-2 trees over 4 features; each leaf holds a class distribution scaled by
# 1/2 (the number of trees), so the summed leaf weights are probabilities, as an
# sklearn random forest exported without ZipMap.
def tree_nodes(tree_id, f_root, t_root, f_kids, t_kids):
    # node 0: root; 1, 2: inner; 3..6: leaves
    return dict(
        nodes_treeids=[tree_id] * 7,
        nodes_nodeids=list(range(7)),
        nodes_featureids=[f_root, f_kids[0], f_kids[1], 0, 0, 0, 0],
        nodes_values=[t_root, t_kids[0], t_kids[1], 0, 0, 0, 0],
        nodes_modes=["BRANCH_LEQ"] * 3 + ["LEAF"] * 4,
        nodes_truenodeids=[1, 3, 5, 0, 0, 0, 0],
        nodes_falsenodeids=[2, 4, 6, 0, 0, 0, 0],
    )

trees = [tree_nodes(0, 0, 0.0, (1, 2), (0.2, -0.3)), tree_nodes(1, 3, 0.1, (0, 1), (-0.5, 0.4))]
leaf_dist = {}
for t in range(2):
    for leaf in range(3, 7):
        leaf_dist[(t, leaf)] = rng.dirichlet(np.ones(3))
attrs = {k: sum((tr[k] for tr in trees), []) for k in trees[0]}
ctree, cnode, cid, cw = [], [], [], []
for (t, leaf), d in sorted(leaf_dist.items()):
    for c in range(3):
        ctree.append(t); cnode.append(leaf); cid.append(c); cw.append(float(d[c]) / 2)
node = helper.make_node(
    "TreeEnsembleClassifier", ["x"], ["label", "probabilities"], domain="ai.onnx.ml",
    classlabels_int64s=[0, 1, 2], post_transform="NONE",
    class_treeids=ctree, class_nodeids=cnode, class_ids=cid, class_weights=cw, **attrs)
g = helper.make_graph(
    [node], "trees",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
     helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])])
save(helper.make_model(g, opset_imports=OPSET + [helper.make_opsetid("ai.onnx.ml", 3)]), "trees.onnx")


def walk(tr, t, v):
    n = 0
    while tr["nodes_modes"][n] != "LEAF":
        f, th = tr["nodes_featureids"][n], tr["nodes_values"][n]
        n = tr["nodes_truenodeids"][n] if v[f] <= np.float32(th) else tr["nodes_falsenodeids"][n]
    return leaf_dist[(t, n)]


x = rng.uniform(-1, 1, size=(6, 4)).astype(np.float32)
probs = [((walk(trees[0], 0, v) + walk(trees[1], 1, v)) / 2).tolist() for v in x]
expected["trees"] = {"inputs": x.tolist(), "probs": probs}

# fixed.onnx -----------------------------------------------------------------
g = helper.make_graph(
    [helper.make_node("Gemm", ["x", "W", "b"], ["logits"])],
    "fixed",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    [init("W", W), init("b", b)])
save(helper.make_model(g, opset_imports=OPSET), "fixed.onnx")

# consts.onnx ----------------------------------------------------------------
g = helper.make_graph(
    [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
     helper.make_node("Mul", ["xf", "gain"], ["scaled"]),
     helper.make_node("ReduceSum", ["bias"], ["bsum"], keepdims=0),
     helper.make_node("Cast", ["bsum"], ["bf"], to=TensorProto.FLOAT),
     helper.make_node("Add", ["scaled", "bf"], ["logits"])],
    "consts",
    [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 3]),
     helper.make_tensor_value_info("gain", TensorProto.FLOAT, [1]),
     helper.make_tensor_value_info("bias", TensorProto.INT64, [2])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])
save(helper.make_model(g, opset_imports=OPSET), "consts.onnx")
# The manifest feeds gain = 0.5 and bias = [2, 2] (sum 4, which softmax cancels);
# the engine rounds the float request values to int64.
x = np.array([[0.2, 1.6, -2.7], [3.0, 0.0, -0.4]], dtype=np.float32)
expected["consts"] = {"inputs": x.tolist(), "probs": softmax(np.round(x) * 0.5 + 4).tolist()}

with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
    f.write("\n")
