#!/usr/bin/env python3
"""The fluid optimum of choosing a variant per request, offline, on the
validation split: what each per-request signal's values would buy.

Reads the arrays `go run ./models/tools/difficulty -n -dump DIR models/APP`
writes into DIR/APP and the variants' latency profiles
(eval/testdata/profiles.json), and prints, at loads given as multiples of the
most accurate variant's capacity, the mean true utility of the fluid optimum
(every request on the variant of the highest value less price x time, the price
bisected so the mean time fits the load's budget; the two choices at the
bracket's ends mixed to fit it exactly) when the values come from:

  profiled       each variant's accuracy on the split (no per-request signal)
  class-based    sum_y p(y) accuracy_m(y), p the default estimator's estimate
  committed      the difficulty model's cross-fitted estimates (scores.npy)
  logreg-conf    a logistic regression per variant on the cheapest variant's
                 max probability, top-two margin and entropy (two row-parity
                 folds, as the Go tool cross-fits)
  oracle         the true utilities
  oracle: V only the true utility of variant V, the others at their mean
                 utility

A correctness estimate c becomes the value c + (1 - c) w_m, w_m the mean utility
of variant m's wrong answers. Each request's time is its variant's best
amortised time in the profile plus -gateway-us. It also prints the share of
requests each signal puts on each variant at -shares loads.

docs/evaluation-log.md, "Richer per-sample signals for fashion", has what it
found. numpy only:

  python3 models/tools/difficulty/fluid.py DIR/fashion [-loads 1.5,2,3,5]
"""
import argparse
import json
import os

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump", help="the -dump directory of one application (DIR/APP)")
    ap.add_argument("-profiles", default=os.path.join(os.path.dirname(__file__), "../../../eval/testdata/profiles.json"))
    ap.add_argument("-loads", default="1.5,2,3,5")
    ap.add_argument("-shares", default="1.5,3,5")
    ap.add_argument("-gateway-us", type=float, default=5)
    args = ap.parse_args()

    meta = json.load(open(os.path.join(args.dump, "meta.json")))
    names, U = meta["variants"], np.array(meta["utility"])
    load = lambda f: np.load(os.path.join(args.dump, f))
    y, est, out = load("labels.npy").astype(int), load("est.npy"), load("outputs.npy")
    cor, committed = load("correct.npy").T, load("scores.npy").T  # n x variants
    n, nv = cor.shape
    true_u = U[y[None, :], out.argmax(axis=2)].T  # n x variants

    prof = json.load(open(args.profiles))
    a = np.array([min(l / b for l, b in zip(prof[f"{meta['app']}/{m}"]["latency_ns"], prof[f"{meta['app']}/{m}"]["batch"])) * 1e-9
                  for m in names]) + args.gateway_us * 1e-6
    best = int(np.argmax(cor.mean(0)))  # the loads are multiples of its capacity
    wrong = np.array([(true_u[:, m] * (1 - cor[:, m])).sum() / max(1.0, (1 - cor[:, m]).sum()) for m in range(nv)])
    value = lambda c: c + (1 - c) * wrong[None, :]

    def choose(V, lam):
        return np.argmax(V - lam * a[None, :], axis=1)

    def fluid(V, budget):
        """The fluid optimum's true utility and its choices (at the bracket's upper end)."""
        ch = choose(V, 0.0)
        if a[ch].mean() <= budget:
            return true_u[np.arange(n), ch].mean(), ch
        lo, hi = 0.0, 1.0
        while a[choose(V, hi)].mean() > budget:
            lo, hi = hi, hi * 2
        for _ in range(60):
            mid = (lo + hi) / 2
            if a[choose(V, mid)].mean() > budget:
                lo = mid
            else:
                hi = mid
        cl, ch = choose(V, lo), choose(V, hi)
        tl, th = a[cl].mean(), a[ch].mean()
        x = 0.0 if tl == th else (budget - th) / (tl - th)
        return x * true_u[np.arange(n), cl].mean() + (1 - x) * true_u[np.arange(n), ch].mean(), ch

    cheapest = int(np.argmin(a))
    signals = {
        "profiled": value(np.tile(cor.mean(0), (n, 1))),
        "class-based": value(est @ np.stack([[cor[y == k, m].mean() for m in range(nv)] for k in range(est.shape[1])])),
        "committed": value(committed),
        f"{names[cheapest]}-conf": value(logistic_cf(conf(out[cheapest]), cor)),
        "oracle": true_u,
    }
    for m in (cheapest, best):
        V = np.tile(true_u.mean(0), (n, 1))
        V[:, m] = true_u[:, m]
        signals[f"oracle: {names[m]} only"] = V

    loads = [float(x) for x in args.loads.split(",")]
    print(f"{meta['app']}: fluid optimum's mean true utility on the validation split ({n} rows), "
          f"loads as multiples of {names[best]}'s capacity; (gain over profiled)")
    print(f"{'values':24s}" + "".join(f"{'load ' + str(L):>22s}" for L in loads))
    base = {L: fluid(signals["profiled"], a[best] / L)[0] for L in loads}
    for k, V in signals.items():
        cells = [fluid(V, a[best] / L)[0] for L in loads]
        print(f"{k:24s}" + "".join(f"{u:>12.4f} ({u - base[L]:+.4f})" for u, L in zip(cells, loads)))
    print(f"\nAUC of {names[cheapest]}'s correctness: committed {auc(committed[:, cheapest], cor[:, cheapest]):.4f}, "
          f"{names[cheapest]}-conf {auc(logistic_cf(conf(out[cheapest]), cor)[:, cheapest], cor[:, cheapest]):.4f}")
    print("\nshare of requests per variant:")
    for L in [float(x) for x in args.shares.split(",")]:
        for k in ("profiled", f"{names[cheapest]}-conf", f"oracle: {names[cheapest]} only"):
            share = np.bincount(fluid(signals[k], a[best] / L)[1], minlength=nv) / n
            print(f"  load {L:<4g} {k:24s}" + " ".join(f"{names[m]} {share[m]:.2f}" for m in range(nv) if share[m] >= 0.005))


def conf(p):
    """Max probability, top-two margin and entropy of each row of p."""
    s = np.sort(p, axis=1)
    return np.stack([s[:, -1], s[:, -1] - s[:, -2], -(p * np.log(np.maximum(p, 1e-6))).sum(1)], 1)


def logistic_cf(F, Y, lam=1e-3):
    """Cross-fitted (two row-parity folds) L2 logistic regressions of each
    column of Y on the standardised F, by Newton; penalty lam * n / 2 |w|^2."""
    n = len(F)
    fold = np.arange(n) % 2
    S = np.zeros(Y.shape)
    for k in (0, 1):
        tr, te = fold != k, fold == k
        mu, sd = F[tr].mean(0), F[tr].std(0)
        sd[sd < 1e-8] = 1
        X = np.hstack([(F[tr] - mu) / sd, np.ones((tr.sum(), 1))])
        Xt = np.hstack([(F[te] - mu) / sd, np.ones((te.sum(), 1))])
        pen = np.full(X.shape[1], lam * tr.sum())
        pen[-1] = 0
        for j in range(Y.shape[1]):
            w = np.zeros(X.shape[1])
            for _ in range(50):
                p = 1 / (1 + np.exp(-np.clip(X @ w, -40, 40)))
                step = np.linalg.solve((X * (p * (1 - p))[:, None]).T @ X + np.diag(pen + 1e-9), X.T @ (p - Y[tr, j]) + pen * w)
                w -= step
                if np.abs(step).max() < 1e-7:
                    break
            S[te, j] = 1 / (1 + np.exp(-np.clip(Xt @ w, -40, 40)))
    return S


def auc(s, lab):
    """Mann-Whitney AUC, ties at their mean rank."""
    lab = lab.astype(bool)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ss, i = s[order], 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    npos = lab.sum()
    return (ranks[lab].sum() - npos * (npos + 1) / 2) / (npos * (len(s) - npos))


if __name__ == "__main__":
    main()
