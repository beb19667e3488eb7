"""Train the satellite application: Landsat MSS land-cover variants and estimators.

Data: Debian r-cran-mlbench, Satellite.rda (the UCI Statlog Landsat Satellite data:
6,435 3x3-pixel neighbourhoods x 4 spectral bands = 36 byte values, 6 classes).
Splits (seed 20250602, stratified): 60% train, 20% validation, 20% test (replay).
Writes models/satellite/{*.onnx, spec.json, samples.sgs, data/validation.sgs, est/*}.
"""
import json
import os
import sys
import time
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

SEED = 20250602
SRC = os.environ.get("SATELLITE_RDA", "/usr/lib/R/site-library/mlbench/data/Satellite.rda")
LABELS = ["red_soil", "cotton_crop", "grey_soil", "damp_grey_soil", "vegetation_stubble",
          "very_damp_grey_soil"]
K = 6
D = 36


def load():
    import rdata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = rdata.conversion.convert(rdata.parser.parse_file(SRC))["Satellite"]
    cats = [c.replace(" ", "_") for c in df["classes"].cat.categories]
    assert cats == ["red_soil", "cotton_crop", "grey_soil", "damp_grey_soil",
                    "vegetation_stubble", "very_damp_grey_soil"], cats
    X = df.iloc[:, :D].to_numpy(dtype=np.float32)
    y = df["classes"].cat.codes.to_numpy().astype(np.int64)
    return X, y


class Standardise(nn.Module):
    """Input standardisation inside the graph: devices send the raw band values."""
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean) / self.std


def train_torch(name, hidden, Xtr, ytr, Xva, mean, std, epochs, wd=0.0):
    torch.manual_seed(SEED)
    layers, prev = [], D
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, K))
    model = nn.Sequential(Standardise(mean, std), *layers)
    xt, yt = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=wd)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for s in range(0, len(xt), 64):
            idx = perm[s:s + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(Xva)).argmax(dim=1).numpy()
    return model, pred


def tree_ensemble_onnx(trees, path, name):
    """Write sklearn decision trees as one ai.onnx.ml TreeEnsembleClassifier whose
    'probabilities' output is the mean of the trees' leaf class fractions (sklearn's
    predict_proba for a forest). sklearn sends x <= threshold to the left child."""
    nt = len(trees)
    a = {k: [] for k in ["nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values",
                         "nodes_modes", "nodes_truenodeids", "nodes_falsenodeids",
                         "class_treeids", "class_nodeids", "class_ids", "class_weights"]}
    for t, est in enumerate(trees):
        tr = est.tree_
        for n in range(tr.node_count):
            leaf = tr.children_left[n] == -1
            a["nodes_treeids"].append(t)
            a["nodes_nodeids"].append(n)
            a["nodes_featureids"].append(0 if leaf else int(tr.feature[n]))
            a["nodes_values"].append(0.0 if leaf else float(tr.threshold[n]))
            a["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            a["nodes_truenodeids"].append(0 if leaf else int(tr.children_left[n]))
            a["nodes_falsenodeids"].append(0 if leaf else int(tr.children_right[n]))
            if leaf:
                v = tr.value[n][0]
                v = v / v.sum()
                for c in range(K):
                    if v[c] > 0:
                        a["class_treeids"].append(t)
                        a["class_nodeids"].append(n)
                        a["class_ids"].append(c)
                        a["class_weights"].append(float(v[c] / nt))
    node = helper.make_node("TreeEnsembleClassifier", ["input"], ["label", "probabilities"],
                            domain="ai.onnx.ml", classlabels_int64s=list(range(K)),
                            post_transform="NONE", **a)
    graph = helper.make_graph(
        [node], name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", K])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("ai.onnx.ml", 3)],
                              producer_name="sneakgate-models")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    torch.set_num_threads(2)
    out = C.app_dir("satellite")
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    os.makedirs(os.path.join(out, "est"), exist_ok=True)
    X, y = load()
    tr, va, te = C.stratified_split(y, [0.6, 0.2, 0.2], SEED)
    Xtr, ytr, Xva, yva, Xte, yte = X[tr], y[tr], X[va], y[va], X[te], y[te]
    C.write_samples(os.path.join(out, "data", "validation.sgs"), Xva, yva)
    C.write_samples(os.path.join(out, "samples.sgs"), Xte, yte)
    prior = (np.bincount(yva, minlength=K) / len(yva)).tolist()
    mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)

    variants = []

    def add(name, family, path, pred, output):
        v = {"name": name, "file": os.path.basename(path), "family": family,
             "inputs": [{"name": "input", "kind": "data", "shape": [-1, D]}],
             "output": output, "params": C.onnx_params(path)}
        v.update(C.variant_metrics(yva, pred, K))
        print(f"  {name}: val acc {v['accuracy']:.4f} recall {np.round(v['recall'], 3)}", flush=True)
        variants.append(v)

    logits_out = {"name": "logits", "kind": "logits"}
    probs_out = {"name": "probabilities", "kind": "probabilities"}
    t0 = time.time()
    for name, hidden, epochs in [("linear", [], 60), ("mlp-small", [16], 80), ("mlp-large", [256, 256], 80)]:
        model, pred = train_torch(name, hidden, Xtr, ytr, Xva, mean, std, epochs)
        path = os.path.join(out, name + ".onnx")
        C.export_torch(model, torch.zeros(1, D), path, "input", "logits")
        add(name, "logistic" if not hidden else "mlp", path, pred, logits_out)

    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    dt = DecisionTreeClassifier(max_depth=6, random_state=SEED).fit(Xtr, ytr)
    path = os.path.join(out, "tree.onnx")
    tree_ensemble_onnx([dt], path, "tree")
    add("tree", "decision-tree", path, dt.predict(Xva), probs_out)
    rf = RandomForestClassifier(n_estimators=100, max_depth=14, random_state=SEED, n_jobs=2).fit(Xtr, ytr)
    path = os.path.join(out, "forest.onnx")
    tree_ensemble_onnx(rf.estimators_, path, "forest")
    add("forest", "random-forest", path, rf.predict(Xva), probs_out)
    print(f"  variants trained in {time.time() - t0:.0f}s", flush=True)
    # Order the variants from cheapest to most expensive (by parameters).
    variants.sort(key=lambda v: v["params"])

    # Estimators. kNN on the raw band values over 1,000 stratified training rows;
    # the prior strength is chosen on the remaining training rows.
    ref_idx = C.stratified_subset(ytr, 1000, SEED + 1)
    cal_idx = np.setdiff1d(np.arange(len(ytr)), ref_idx)
    knn_feat, knn_k = "identity", 5
    ref_f = C.features(knn_feat, Xtr[ref_idx])
    C.write_samples(os.path.join(out, "est", "knn-ref.sgs"), ref_f, ytr[ref_idx])
    cal_votes = C.knn_votes(ref_f, ytr[ref_idx], C.features(knn_feat, Xtr[cal_idx]), knn_k, K)
    strength = C.choose_prior_strength(cal_votes, ytr[cal_idx], prior)
    va_votes = C.knn_votes(ref_f, ytr[ref_idx], C.features(knn_feat, Xva), knn_k, K)
    knn_m = C.estimator_metrics(C.dirichlet(va_votes, np.asarray(prior) * strength), yva)
    print("  knn:", knn_m, "prior_strength", strength, flush=True)
    lr_feat = "identity"
    params = C.fit_logistic(C.features(lr_feat, Xtr), ytr, K, C=1.0, seed=SEED)
    with open(os.path.join(out, "est", "logistic.json"), "w") as f:
        json.dump(params, f)
    lr_m = C.estimator_metrics(C.logistic_probs(params, C.features(lr_feat, Xva)), yva)
    print("  logistic:", lr_m, flush=True)

    # Utility W[y][yhat], for a crop-monitoring use: 1 when right. The three grey
    # soils differ only in moisture and are hard to tell apart: confusing adjacent
    # moisture levels (grey/damp, damp/very damp) keeps 0.6, grey/very damp 0.3.
    # Other soil/soil mistakes (red soil vs grey soils) earn 0. Cotton crop and
    # vegetation stubble confused with each other earn 0.3 (both vegetation). A crop
    # field (cotton, stubble) taken for bare soil is a missed field: -0.5. Soil taken
    # for crop is a false alarm that costs a field visit: -0.2.
    soil, crop = [0, 2, 3, 5], [1, 4]
    W = [[0.0] * K for _ in range(K)]
    moist = {2: 0, 3: 1, 5: 2}
    for t in range(K):
        for p in range(K):
            if t == p:
                W[t][p] = 1.0
            elif t in moist and p in moist:
                W[t][p] = 0.6 if abs(moist[t] - moist[p]) == 1 else 0.3
            elif t in crop and p in crop:
                W[t][p] = 0.3
            elif t in crop and p in soil:
                W[t][p] = -0.5
            elif t in soil and p in crop:
                W[t][p] = -0.2
    mix = lambda d: [round(float(x), 6) for x in np.asarray(d, float) / np.sum(d)]  # noqa: E731
    natural = mix(np.bincount(yte, minlength=K))
    workloads = [
        {"name": "natural", "description": "the test-split mix", "mix": natural},
        {"name": "damp-soils", "description": "the hard moisture classes dominate (grey, damp grey, very damp grey: 85%)",
         "mix": mix([0.05, 0.05, 0.25, 0.35, 0.05, 0.25])},
        {"name": "crop-season", "description": "cotton crop and stubble, rare in the test mix, are 70% of requests",
         "mix": mix([0.075, 0.4, 0.075, 0.075, 0.3, 0.075])},
        {"name": "red-soil", "description": "one easy class dominates (red soil 70%)",
         "mix": mix([0.7, 0.06, 0.06, 0.06, 0.06, 0.06])},
        {"name": "drift", "description": "drifts linearly from the natural mix to the damp-soils mix",
         "mix": natural, "mix_end": mix([0.05, 0.05, 0.25, 0.35, 0.05, 0.25])},
    ]
    spec = {
        "_header": ["Landsat MSS Satellite data (UCI Statlog, via Debian r-cran-mlbench).",
                    "Stratified split (seed %d): 60%% train, 20%% validation (these metrics), 20%% test (samples)." % SEED],
        "name": "satellite",
        "description": "Land cover of a Landsat MSS 3x3 pixel neighbourhood (36 raw band values 0-255)",
        "input_size": D,
        "input_shape": [3, 3, 4],
        "input_range": [0.0, 255.0],
        "labels": LABELS,
        "default_deadline_ms": 100,
        "prior": [round(p, 6) for p in prior],
        "prior_strength": strength,
        "utility": W,
        "variants": variants,
        "estimators": [
            {"name": "logistic", "kind": "logistic", "file": "est/logistic.json", "features": lr_feat,
             "accuracy": round(lr_m["accuracy"], 4), "ece": round(lr_m["ece"], 4), "cost_us": 0.0},
            {"name": "knn", "kind": "knn", "file": "est/knn-ref.sgs", "k": knn_k, "features": knn_feat,
             "accuracy": round(knn_m["accuracy"], 4), "ece": round(knn_m["ece"], 4), "cost_us": 0.0},
        ],
        "samples": {"file": "samples.sgs", "count": int(len(yte))},
        "validation": {"file": "data/validation.sgs", "count": int(len(yva))},
        "workloads": workloads,
    }
    C.write_spec("satellite", spec)
    C.render_manifest("satellite")


if __name__ == "__main__":
    main()
