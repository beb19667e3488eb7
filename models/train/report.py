"""Print the Markdown tables of models/README.md from the manifests and
measured.json files: python3 models/train/report.py [app ...]"""
import json
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(apps):
    for app in apps:
        d = os.path.join(ROOT, app)
        with open(os.path.join(d, "manifest.yaml")) as f:
            m = yaml.safe_load(f)
        meas = {}
        if os.path.exists(os.path.join(d, "measured.json")):
            with open(os.path.join(d, "measured.json")) as f:
                meas = json.load(f)
        print(f"#### {app}: variants\n")
        print("| variant | family | file size | params | val. accuracy | per-class recall (min–max) | weakest class | latency per sample at batch 1 / 32 (µs, Go + ONNX Runtime, 1 thread) |")
        print("|---|---|---:|---:|---:|---|---|---|")
        for v in m["variants"]:
            size = os.path.getsize(os.path.join(d, v["file"]))
            r = v["recall"]
            weakest = m["labels"][r.index(min(r))]
            mv = meas.get("variants", {}).get(v["name"], {})
            lat = f"{mv['us_batch1']:.0f} / {mv['us_per_sample_batch32']:.1f}" if mv else "–"
            print(f"| {v['name']} | {v['family']} | {size / 1024:.0f} KiB | {v['params']:,} | {v['accuracy']:.4f} | "
                  f"{min(r):.3f}–{max(r):.3f} | {weakest} | {lat} |")
        print(f"\n#### {app}: SneakPeek estimators\n")
        print("| estimator | kind | features | val. accuracy | ECE (15 bins) | cost per request (µs) | vs cheapest variant at batch 1 |")
        print("|---|---|---|---:|---:|---:|---|")
        for e in m["estimators"]:
            me = meas.get("estimators", {}).get(e["name"], {})
            rel = f"{me['relative_to_cheapest_variant']:.2f}x ({me['cheapest_variant']})" if me else "–"
            print(f"| {e['name']} | {e['kind']}{' k=%d' % e['k'] if e.get('k') else ''} | `{e['features']}` | "
                  f"{e['accuracy']:.4f} | {e['ece']:.4f} | {e['cost_us']:.2f} | {rel} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:] or ["fashion", "satellite", "vad"])
