"""Train the fashion application: Fashion-MNIST variants, estimators, samples.

Data: Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, MIT).
Splits (seed 20250601): the 60k training images are split 50k train / 10k
validation (random, fixed seed); the 10k test images are held out for replay
(samples.sgs holds a seeded, stratified 2,000 of them).
Writes models/fashion/{*.onnx, spec.json, data/*.sgs, est/*}.
"""
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

SEED = 20250601
SRC = os.environ.get("FASHION_DIR", "/usr/share/datasets/fashion-mnist")
LABELS = ["tshirt_top", "trouser", "pullover", "dress", "coat",
          "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
K = 10
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST pixel statistics in [0,1]


def load_idx(name):
    with gzip.open(os.path.join(SRC, name)) as f:
        b = f.read()
    if b[2] == 8 and b[3] == 3:
        n, h, w = np.frombuffer(b, ">i4", 3, 4)
        return np.frombuffer(b, np.uint8, n * h * w, 16).reshape(n, h * w)
    n = np.frombuffer(b, ">i4", 1, 4)[0]
    return np.frombuffer(b, np.uint8, n, 8).astype(np.int64)


class Norm(nn.Module):
    """Input normalisation inside the graph: devices send pixel/255 in [0,1]."""
    def forward(self, x):
        return (x - MEAN) / STD


def flat(*layers):
    return nn.Sequential(Norm(), *layers)


def conv(*layers):
    return nn.Sequential(Norm(), *layers)


class Block(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, identity shortcut (1x1 conv+BN when the
    width or the resolution changes)."""
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.sc = None
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return torch.relu(y + (x if self.sc is None else self.sc(x)))


def resnet(widths, blocks):
    """3x3 stem at 28x28, then stages of basic blocks (the first block of every stage
    after the first halves the resolution: 28, 14, 7), global average pool, linear."""
    layers = [Norm(), nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            layers.append(Block(cin, w, 2 if i > 0 and j == 0 else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, K)]
    return nn.Sequential(*layers)


def build(name):
    if name == "logreg":
        return flat(nn.Linear(784, K)), "logistic", "flat", 3
    if name == "mlp-small":
        return flat(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, K)), "mlp", "flat", 3
    if name == "mlp-large":
        return flat(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                    nn.Linear(256, K)), "mlp", "flat", 3
    if name == "lenet":
        return conv(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                    nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                    nn.Linear(84, K)), "cnn-lenet", "image", 3
    if name == "cnn":
        return conv(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Flatten(), nn.Dropout(0.25), nn.Linear(1152, 128), nn.ReLU(),
                    nn.Linear(128, K)), "cnn", "image", 3
    if name in HEAVY:
        widths, epochs = HEAVY[name]
        return resnet(widths, [1, 2, 1]), "resnet", "image", epochs
    raise ValueError(name)


# The heavy tier (issue 8): ResNet-style, 5 basic blocks (1 at 28x28, 2 at 14x14, 1 at
# 7x7) on a 3x3 stem; resnet-m is resnet-s at twice the width (~4x the cost). They cost
# ~0.6 ms and ~2.5 ms per image on one core, so they need more epochs than the others
# to beat the cnn, and are trained with random horizontal flips (every class of
# Fashion-MNIST is left-right symmetric in label).
HEAVY = {"resnet-s": ([32, 64, 128], 5), "resnet-m": ([64, 128, 256], 10)}
# Manifest order is accuracy/cost order. Every variant reseeds torch before it is
# built and trained, so adding variants does not change the others.
VARIANTS = ["logreg", "mlp-small", "mlp-large", "lenet", "cnn", "resnet-s", "resnet-m"]


def shape_for(kind):
    return [-1, 784] if kind == "flat" else [-1, 1, 28, 28]


def train_variant(name, Xtr, ytr, Xva, yva):
    torch.manual_seed(SEED)
    model, family, kind, epochs = build(name)
    shp = shape_for(kind)
    xt = torch.from_numpy(Xtr).reshape([-1] + shp[1:])
    yt = torch.from_numpy(ytr)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * ((len(xt) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for s in range(0, len(xt), 128):
            idx = perm[s:s + 128]
            xb = xt[idx]
            if name in HEAVY:  # random horizontal flip, each image with probability 1/2
                flip = torch.rand(len(idx), generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(Xva[s:s + 1000]).reshape([-1] + shp[1:]))
                            for s in range(0, len(Xva), 1000)]).numpy()
    pred = logits.argmax(axis=1)
    print(f"  {name}: {epochs} epochs in {time.time() - t0:.0f}s, val acc {(pred == yva).mean():.4f}",
          flush=True)
    return model, family, shp, pred


def main():
    torch.set_num_threads(2)
    out = C.app_dir("fashion")
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    os.makedirs(os.path.join(out, "est"), exist_ok=True)

    Xall = load_idx("train-images-idx3-ubyte.gz")
    yall = load_idx("train-labels-idx1-ubyte.gz")
    Xte = load_idx("t10k-images-idx3-ubyte.gz")
    yte = load_idx("t10k-labels-idx1-ubyte.gz")
    perm = np.random.RandomState(SEED).permutation(len(Xall))
    va_idx, tr_idx = np.sort(perm[:10000]), np.sort(perm[10000:])
    f32 = lambda a: (a.astype(np.float32) / np.float32(255))  # noqa: E731
    Xtr, ytr = f32(Xall[tr_idx]), yall[tr_idx]
    Xva, yva = f32(Xall[va_idx]), yall[va_idx]
    Xtest, ytest = f32(Xte), yte

    # Files: validation split (for tests of the estimators), replay samples.
    C.write_samples(os.path.join(out, "data", "validation.sgs"), Xva, yva, as_uint8=True)
    sidx = C.stratified_subset(ytest, 2000, SEED)
    C.write_samples(os.path.join(out, "samples.sgs"), Xtest[sidx], ytest[sidx], as_uint8=True)
    prior = (np.bincount(yva, minlength=K) / len(yva)).tolist()

    variants = []
    for name in VARIANTS:
        model, family, shp, pred = train_variant(name, Xtr, ytr, Xva, yva)
        path = os.path.join(out, name + ".onnx")
        C.export_torch(model, torch.zeros([1] + shp[1:]), path, "input", "logits")
        v = {"name": name, "file": name + ".onnx", "family": family,
             "inputs": [{"name": "input", "kind": "data", "shape": shp}],
             "output": {"name": "logits", "kind": "logits"},
             "params": C.onnx_params(path)}
        v.update(C.variant_metrics(yva, pred, K))
        variants.append(v)

    # SneakPeek estimators. The kNN reference set: 2,000 stratified training images,
    # stored as features. The prior strength is chosen on a disjoint 5,000-image
    # calibration subset of the training split (never the validation split).
    ref_idx = C.stratified_subset(ytr, 2000, SEED + 1)
    rest = np.setdiff1d(np.arange(len(ytr)), ref_idx)
    cal_idx = np.sort(np.random.RandomState(SEED + 2).choice(rest, 5000, replace=False))
    knn_feat, knn_k = "avgpool:28:28:4", 5
    ref_f = C.features(knn_feat, Xtr[ref_idx])
    C.write_samples(os.path.join(out, "est", "knn-ref.sgs"), ref_f, ytr[ref_idx])
    cal_votes = C.knn_votes(ref_f, ytr[ref_idx], C.features(knn_feat, Xtr[cal_idx]), knn_k, K)
    strength = C.choose_prior_strength(cal_votes, ytr[cal_idx], prior)
    va_votes = C.knn_votes(ref_f, ytr[ref_idx], C.features(knn_feat, Xva), knn_k, K)
    knn_m = C.estimator_metrics(C.dirichlet(va_votes, np.asarray(prior) * strength), yva)
    print("  knn:", knn_m, "prior_strength", strength, flush=True)

    lr_feat = "avgpool:28:28:4"
    params = C.fit_logistic(C.features(lr_feat, Xtr), ytr, K, C=1.0, seed=SEED)
    import json
    with open(os.path.join(out, "est", "logistic.json"), "w") as f:
        json.dump(params, f)
    lr_m = C.estimator_metrics(C.logistic_probs(params, C.features(lr_feat, Xva)), yva)
    print("  logistic:", lr_m, flush=True)

    # Utility: 1 for the right class; 0.5 for a wrong class of the same group (tops:
    # t-shirt/top, pullover, coat, shirt, dress; footwear: sandal, sneaker, ankle boot),
    # because a sorting line that puts a shirt in the tops bin is half right; 0 across
    # groups (trouser and bag are groups of their own).
    group = [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]
    W = [[1.0 if i == j else (0.5 if group[i] == group[j] else 0.0) for j in range(K)] for i in range(K)]

    uni = [0.1] * K
    def mix(d):  # noqa: E306
        a = np.asarray(d, dtype=np.float64)
        return [round(float(x), 6) for x in a / a.sum()]
    workloads = [
        {"name": "natural", "description": "the test-set mix (uniform)", "mix": uni},
        {"name": "tops-heavy", "description": "70% of requests are the four hard-to-separate tops (shirt, t-shirt, pullover, coat)",
         "mix": mix([0.175, 0.0375, 0.175, 0.0375, 0.175, 0.0375, 0.175, 0.0375, 0.0375, 0.0375 + 0.025])},
        {"name": "footwear-bags", "description": "easy classes dominate: 80% sandals, sneakers, boots, bags, trousers",
         "mix": mix([0.04, 0.16, 0.04, 0.04, 0.04, 0.16, 0.04, 0.16, 0.16, 0.16])},
        {"name": "shirt-rare-frequent", "description": "the hardest class (shirt) becomes 40% of the traffic",
         "mix": mix([0.0667] * 6 + [0.4] + [0.0667] * 3)},
        {"name": "drift", "description": "drifts linearly from easy classes to the tops-heavy mix",
         "mix": mix([0.04, 0.16, 0.04, 0.04, 0.04, 0.16, 0.04, 0.16, 0.16, 0.16]),
         "mix_end": mix([0.175, 0.0375, 0.175, 0.0375, 0.175, 0.0375, 0.175, 0.0375, 0.0375, 0.0625])},
    ]

    spec = {
        "_header": ["Fashion-MNIST (Debian dataset-fashion-mnist, MIT licence). Validation split:",
                    "10,000 of the 60,000 training images (seed %d); training: the other 50,000." % SEED],
        "name": "fashion",
        "description": "Fashion-MNIST clothing classifier (28x28 grey images, pixel/255)",
        "input_size": 784,
        "input_shape": [28, 28],
        "input_range": [0.0, 1.0],
        "labels": LABELS,
        "default_deadline_ms": 50,
        "prior": [round(p, 6) for p in prior],
        "prior_strength": strength,
        "utility": W,
        "variants": variants,
        # The logistic estimator comes first (the default): on this app it is more
        # accurate, better calibrated and cheaper than the kNN vote.
        "estimators": [
            {"name": "logistic", "kind": "logistic", "file": "est/logistic.json", "features": lr_feat,
             "accuracy": round(lr_m["accuracy"], 4), "ece": round(lr_m["ece"], 4), "cost_us": 0.0},
            {"name": "knn", "kind": "knn", "file": "est/knn-ref.sgs", "k": knn_k, "features": knn_feat,
             "accuracy": round(knn_m["accuracy"], 4), "ece": round(knn_m["ece"], 4), "cost_us": 0.0},
        ],
        "samples": {"file": "samples.sgs", "count": int(len(sidx))},
        "validation": {"file": "data/validation.sgs", "count": int(len(yva))},
        "workloads": workloads,
    }
    C.write_spec("fashion", spec)
    C.render_manifest("fashion")


if __name__ == "__main__":
    main()
