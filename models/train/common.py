"""Shared helpers for sneakgate's model training scripts.

Everything here is deterministic given the seeds passed in. Feature transforms are
implemented identically in Go (package sneakpeek, features.go); keep them in sync.
"""
import json
import math
import os
import struct
import sys

import numpy as np

MAGIC = b"SGSAMP01"
FLAG_UINT8 = 1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # models/


def app_dir(app):
    d = os.path.join(ROOT, app)
    os.makedirs(d, exist_ok=True)
    return d


# ---------------------------------------------------------------- sample files

def write_samples(path, X, y, as_uint8=False):
    """Write the SGSAMP01 format of package dataset (see dataset/doc.go)."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int32)
    n, d = X.shape
    assert y.shape == (n,)
    with open(path + ".tmp", "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<III", n, d, FLAG_UINT8 if as_uint8 else 0))
        if as_uint8:
            assert X.min() >= 0 and X.max() <= 1, "uint8 storage needs values in [0,1]"
            f.write(np.round(X.astype(np.float64) * 255).astype(np.uint8).tobytes())
        else:
            f.write(X.astype("<f4").tobytes())
        f.write(y.astype("<i4").tobytes())
    os.replace(path + ".tmp", path)


def read_samples(path):
    with open(path, "rb") as f:
        b = f.read()
    assert b[:8] == MAGIC, path
    n, d, flags = struct.unpack("<III", b[8:20])
    if flags & FLAG_UINT8:
        X = np.frombuffer(b, np.uint8, n * d, 20).astype(np.float32) / np.float32(255)
        off = 20 + n * d
    else:
        X = np.frombuffer(b, "<f4", n * d, 20).astype(np.float32)
        off = 20 + 4 * n * d
    y = np.frombuffer(b, "<i4", n, off).astype(np.int64)
    return X.reshape(n, d), y


# ---------------------------------------------------------------- splits

def stratified_split(y, fractions, seed):
    """Split indices into len(fractions) parts, stratified by label, seeded.
    Returns a list of sorted index arrays."""
    rng = np.random.RandomState(seed)
    parts = [[] for _ in fractions]
    cum = np.cumsum(fractions) / np.sum(fractions)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        cuts = np.round(cum * len(idx)).astype(int)
        start = 0
        for i, end in enumerate(cuts):
            parts[i].extend(idx[start:end])
            start = end
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def stratified_subset(y, n, seed):
    """n indices drawn stratified by label (proportional), seeded, sorted."""
    frac = n / len(y)
    return stratified_split(y, [frac, 1 - frac], seed)[0]


# ---------------------------------------------------------------- metrics

def confusion(y_true, y_pred, k):
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def recall_from_confusion(m):
    rows = m.sum(axis=1)
    return [float(m[i, i] / rows[i]) if rows[i] else 0.0 for i in range(len(m))]


def ece(probs, y_true, bins=15):
    """Expected calibration error of the top-class confidence, equal-width bins."""
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    correct = (pred == y_true).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for i in range(bins):
        lo, hi = edges[i], edges[i + 1]
        sel = (conf > lo) & (conf <= hi) if i > 0 else (conf >= lo) & (conf <= hi)
        if sel.any():
            total += sel.sum() / len(conf) * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def variant_metrics(y_true, y_pred, k):
    m = confusion(y_true, y_pred, k)
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "confusion": m.tolist(),
        "recall": recall_from_confusion(m),
    }


# ---------------------------------------------------------------- feature transforms
# Named transforms, mirrored exactly by sneakpeek/features.go.

def features(spec, X):
    """Apply the named feature transform to the rows of X (float32 input)."""
    X = np.asarray(X, dtype=np.float32)
    parts = spec.split(":")
    if parts[0] == "identity":
        return X.astype(np.float64)
    if parts[0] == "avgpool":
        h, w, s = int(parts[1]), int(parts[2]), int(parts[3])
        assert h % s == 0 and w % s == 0
        n = X.shape[0]
        Y = X.astype(np.float64).reshape(n, h // s, s, w // s, s).sum(axis=(2, 4)) / (s * s)
        return Y.reshape(n, -1)
    if parts[0] == "audio-frames":
        return audio_frames(X, int(parts[1]))
    raise ValueError("unknown feature transform " + spec)


def audio_frames(X, nf):
    """audio-frames:N: the input is cut into N equal frames (any remainder at the
    start is dropped); per frame, in order: log10(mean(x^2) + 1e-10), then the
    zero-crossing rate (number of i with x[i-1] < 0 <= x[i] or x[i-1] >= 0 > x[i],
    i in the frame, over the frame length, counting only pairs inside the frame).
    Output: N log-energies followed by N zero-crossing rates, then the max and the
    mean of the log-energies (2N+2 values)."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    fl = d // nf
    X = X[:, d - fl * nf:].reshape(n, nf, fl)
    le = np.log10((X * X).mean(axis=2) + 1e-10)
    neg = X < 0
    zc = (neg[:, :, 1:] != neg[:, :, :-1]).sum(axis=2) / fl
    return np.concatenate([le, zc, le.max(axis=1, keepdims=True), le.mean(axis=1, keepdims=True)], axis=1)


# ---------------------------------------------------------------- estimators

def knn_votes(ref_f, ref_y, Q, k, classes, chunk=100):
    """Vote counts of the k nearest reference rows, shape (len(Q), classes).
    Distances are exact squared Euclidean distances between the float32-rounded
    features (as stored in the reference file and computed in Go); ties go to the
    lower reference index (stable sort), as in sneakpeek's kNN."""
    ref_f = np.asarray(ref_f, dtype=np.float32).astype(np.float64)
    Q = np.asarray(Q, dtype=np.float32).astype(np.float64)
    out = np.zeros((len(Q), classes))
    for s in range(0, len(Q), chunk):
        q = Q[s:s + chunk]
        diff = q[:, None, :] - ref_f[None, :, :]
        d = np.einsum("qrd,qrd->qr", diff, diff)
        nn = np.argsort(d, axis=1, kind="stable")[:, :k]
        for j in range(k):
            np.add.at(out, (np.arange(s, s + len(q)), ref_y[nn[:, j]]), 1)
    return out


def dirichlet(votes, alpha):
    alpha = np.asarray(alpha)
    return (votes + alpha[None, :]) / (votes.sum(axis=1, keepdims=True) + alpha.sum())


def choose_prior_strength(votes, y, prior, grid=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 10, 15, 20)):
    """The Dirichlet prior mass minimising the negative log-likelihood of y."""
    best = None
    for s in grid:
        p = dirichlet(votes, np.asarray(prior) * s)
        nll = -np.log(p[np.arange(len(y)), y]).mean()
        if best is None or nll < best[1]:
            best = (s, nll)
    return float(best[0])


def fit_logistic(F, y, classes, C=1.0, seed=0):
    """Multinomial logistic regression on standardised features. Returns the JSON
    parameter dict used by sneakpeek's logistic estimator."""
    from sklearn.linear_model import LogisticRegression
    mean = F.mean(axis=0)
    scale = F.std(axis=0)
    scale[scale < 1e-8] = 1.0
    Z = (F - mean) / scale
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    clf.fit(Z, y)
    assert list(clf.classes_) == list(range(classes))
    W, b = clf.coef_, clf.intercept_
    if classes == 2:  # sklearn keeps one row for class 1: softmax([0, z]) = sigmoid(z)
        W = np.vstack([np.zeros_like(W[0]), W[0]])
        b = np.array([0.0, b[0]])
    return {
        "classes": classes,
        "dim": int(F.shape[1]),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "weights": W.tolist(),
        "bias": b.tolist(),
    }


def logistic_probs(params, F):
    Z = (F - np.asarray(params["mean"])) / np.asarray(params["scale"])
    return softmax(Z @ np.asarray(params["weights"]).T + np.asarray(params["bias"]))


def estimator_metrics(probs, y):
    return {"accuracy": float((probs.argmax(axis=1) == y).mean()), "ece": ece(probs, y)}


# ---------------------------------------------------------------- ONNX

def onnx_params(path):
    """Number of float parameters: initializers and Constant tensors of the graph
    (scalars such as normalisation constants are not counted),
    tree-ensemble thresholds and leaf weights; for an If node, the larger branch
    (the one a given input takes, e.g. Silero's 16 kHz branch)."""
    import onnx
    from onnx import numpy_helper

    def count(graph):
        n = 0
        for t in graph.initializer:
            a = numpy_helper.to_array(t)
            if a.dtype.kind == "f" and a.size > 1:
                n += a.size
        for node in graph.node:
            if node.op_type.startswith("TreeEnsemble"):
                for a in node.attribute:
                    if a.name in ("nodes_values", "class_weights"):
                        n += len(a.floats)
            elif node.op_type == "Constant":
                for a in node.attribute:
                    size = int(np.prod(a.t.dims)) if len(a.t.dims) else 1
                    if a.name == "value" and a.t.data_type in (1, 10, 11) and size > 1:  # float, f16, double
                        n += size
            else:
                subs = [count(a.g) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
                if subs:
                    n += max(subs)
        return n
    return int(count(onnx.load(path).graph))


def export_torch(model, example, path, input_name, output_name, opset=13):
    import torch
    model.eval()
    torch.onnx.export(model, example, path, input_names=[input_name], output_names=[output_name],
                      dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                      opset_version=opset, do_constant_folding=True)
    import onnx
    onnx.checker.check_model(onnx.load(path))


# ---------------------------------------------------------------- manifest

def _fmt(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        s = "%.6g" % v
        if "e" in s:
            s = ("%.12f" % v).rstrip("0").rstrip(".")
        return s
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    raise TypeError(type(v))


def _emit(lines, key, v, ind):
    pad = " " * ind
    if isinstance(v, dict):
        lines.append(f"{pad}{key}:")
        for k2, v2 in v.items():
            _emit(lines, k2, v2, ind + 2)
    elif isinstance(v, list) and v and isinstance(v[0], dict):
        lines.append(f"{pad}{key}:")
        for item in v:
            first = True
            for k2, v2 in item.items():
                sub = []
                _emit(sub, k2, v2, ind + 4)
                if first:
                    sub[0] = pad + "  - " + sub[0].lstrip()
                    first = False
                lines.extend(sub)
    elif isinstance(v, list) and v and isinstance(v[0], list):
        lines.append(f"{pad}{key}:")
        for row in v:
            lines.append(f"{pad}  - {_fmt(row)}")
    else:
        lines.append(f"{pad}{key}: {_fmt(v)}")


def render_manifest(app):
    """Write models/{app}/manifest.yaml from spec.json (written by training) and
    measured.json (estimator costs measured in Go by models/tools/measure)."""
    d = app_dir(app)
    with open(os.path.join(d, "spec.json")) as f:
        spec = json.load(f)
    header = spec.pop("_header", [])
    mpath = os.path.join(d, "measured.json")
    ort_metrics = {v["name"] for v in spec["variants"] if v.pop("_metrics", None) == "ort"}
    if os.path.exists(mpath):
        with open(mpath) as f:
            measured = json.load(f)
        for v in spec["variants"]:
            if v["name"] in ort_metrics and v["name"] in measured.get("variants", {}):
                m = measured["variants"][v["name"]]
                v["accuracy"] = round(m["ort_accuracy"], 6)
                v["confusion"] = m["confusion"]
                v["recall"] = [round(r, 6) for r in m["recall"]]
        for e in spec["estimators"]:
            if e["name"] in measured.get("estimators", {}):
                e["cost_us"] = round(measured["estimators"][e["name"]]["cost_us"], 3)
    # The per-sample difficulty model (models/tools/difficulty) goes after the
    # estimators it reads.
    dpath = os.path.join(d, "difficulty.json")
    if os.path.exists(dpath):
        with open(dpath) as f:
            diff = json.load(f)
        out = {}
        for k, v in spec.items():
            out[k] = v
            if k == "estimators":
                out["difficulty"] = diff
        spec = out
    lines = ["# Generated by models/train/%s.py and models/train/common.py (render); do not edit." % app]
    lines += ["# " + h for h in header]
    for k, v in spec.items():
        _emit(lines, k, v, 0)
    with open(os.path.join(d, "manifest.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def write_spec(app, spec):
    with open(os.path.join(app_dir(app), "spec.json"), "w") as f:
        json.dump(spec, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "render":
        render_manifest(sys.argv[2])
    else:
        print("usage: common.py render APP", file=sys.stderr)
        sys.exit(2)
