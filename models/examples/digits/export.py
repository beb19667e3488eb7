"""Trains a two-variant family on scikit-learn's 8x8 handwritten digits and writes
what an operator brings to `sneakgate app build`: ONNX files with a dynamic batch
axis and the train/validation/test splits as .npy files.

This is the worked example of models/README.md ("Serving your own models"); the
gateway's tests build and serve it. Run with Debian's interpreter:

    /usr/bin/python3 models/examples/digits/export.py

Data: scikit-learn's copy of the UCI "Optical Recognition of Handwritten Digits"
test set (1,797 images, 8x8, 17 grey levels 0-16), shipped in python3-sklearn
(BSD-3-Clause). Splits: stratified 60/20/20 (seed 20251130). Deterministic.
"""
import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = os.path.dirname(os.path.abspath(__file__))
SEED = 20251130


def splits():
    d = load_digits()
    X = d.data.astype(np.uint8)  # raw grey levels 0..16
    y = d.target.astype(np.int64)
    X_tr, X_rest, y_tr, y_rest = train_test_split(X, y, test_size=0.4, stratify=y, random_state=SEED)
    X_va, X_te, y_va, y_te = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=SEED)
    return (X_tr, y_tr), (X_va, y_va), (X_te, y_te)


class Scaled(torch.nn.Module):
    """Normalisation inside the graph: devices send raw grey levels 0..16."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x / 16.0)


def train(model, X, y, epochs, lr):
    torch.manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
    return model.eval()


def export(model, name):
    x = torch.zeros(1, 64)
    torch.onnx.export(model, x, os.path.join(OUT, name + ".onnx"), input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=13)


def main():
    torch.set_num_threads(1)
    (X_tr, y_tr), (X_va, y_va), (X_te, y_te) = splits()
    for name, X, y in (("train", X_tr, y_tr), ("validation", X_va, y_va), ("test", X_te, y_te)):
        np.save(os.path.join(OUT, f"X_{name}.npy"), X)
        np.save(os.path.join(OUT, f"y_{name}.npy"), y)
    torch.manual_seed(SEED)
    small = train(Scaled(torch.nn.Linear(64, 10)), X_tr, y_tr, epochs=5, lr=0.05)
    torch.manual_seed(SEED)
    large = train(Scaled(torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                             torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                             torch.nn.Linear(256, 10))), X_tr, y_tr, epochs=30, lr=1e-3)
    for name, m in (("linear", small), ("mlp", large)):
        export(m, name)
        with torch.no_grad():
            acc = (m(torch.tensor(X_va, dtype=torch.float32)).argmax(1).numpy() == y_va).mean()
        print(f"{name}: validation accuracy {acc:.4f}, params {sum(p.numel() for p in m.parameters())}")


if __name__ == "__main__":
    main()
