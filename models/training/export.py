"""Exports the trained networks to ONNX (fp32 and int8 Q/DQ) and writes models/manifest.toml.

    python3 export.py --run RUN --data DATA --models ../ [--version 1.0.0]

* fp32: opset 17, static input `[1, C, D, H, W]` from DATA/grids.json, input "input",
  output "output" = softmax probabilities.
* int8: onnxruntime.quantization.quantize_static, QuantFormat.QDQ, static calibration on
  training crops (weights per-tensor int8 symmetric, activations uint8), the same I/O.
* both: Softmax and nearest Resize rewritten by graph.py into operators every engine runs
  fast (same function; ONNX Runtime's CPU kernels for those two were most of its time).
* manifest.toml: one entry per file with its sha256 and the grid it expects (copied from
  DATA/grids.json, which the Rust preprocessing wrote), plus how it was trained.
"""

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

import graph
from nets import CalciumNet, HeartNet, WithSoftmax

NAMES = {"heart": "cacd-heart-locator", "calcium": "cacd-calcium-segmenter"}


def export_fp32(net, shape, path):
    net = WithSoftmax(net).eval()
    x = torch.zeros(shape)
    torch.onnx.export(
        net, (x,), str(path), opset_version=17, input_names=["input"], output_names=["output"],
        do_constant_folding=True, dynamo=False,
    )
    model = onnx.load(str(path))
    # Engines that look outputs up by producing node name (tract's outlet labels fall back to
    # it) find "output" too: name the final Softmax node like its output.
    for node in model.graph.node:
        if "output" in node.output:
            node.name = "output"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


class Reader(CalibrationDataReader):
    def __init__(self, arrays):
        self.it = iter(arrays)

    def get_next(self):
        a = next(self.it, None)
        return None if a is None else {"input": a[None].astype(np.float32)}


def export_int8(fp32, path, calib):
    pre = path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre), str(path), Reader(calib), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False,
        op_types_to_quantize=["Conv"],
    )
    os.remove(pre)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def toml_str(s):
    return json.dumps(s)


def entry(role, precision, file, grid, training, refine=None):
    lines = [
        "[[model]]",
        f"name = {toml_str(NAMES[role])}",
        f'role = "{role}"',
        f"version = {toml_str(VERSION)}",
        f"file = {toml_str(file.name)}",
        f'sha256 = "{sha256(file)}"',
        f'precision = "{precision}"',
        'input_name = "input"',
        'output_name = "output"',
        f"spacing_mm = [{', '.join(repr(float(v)) for v in grid['spacing_mm'])}]",
        f"shape = [{', '.join(str(v) for v in grid['shape'])}]",
        f"channels = {grid['channels']}",
        f"hu_clip = [{', '.join(repr(float(v)) for v in grid['hu_clip'])}]",
        f"hu_scale = {float(grid['hu_scale'])!r}",
        f"labels = [{', '.join(toml_str(l) for l in grid['labels'])}]",
        f"training = {toml_str(training)}",
    ]
    # cacd's refine-stage thresholds, calibrated after export (bench/accuracy/calibrate.py).
    for key, value in (refine or {}).items():
        if value:
            lines.append(f"{key} = {float(value)!r}")
    return "\n".join(lines) + "\n"


# First seed of the crops real_backgrounds.py writes (real chest CT with inserted plaques).
REAL_BACKGROUND_SEEDS_FROM = 50000


def describe_data(train_seeds):
    phantoms = [s for s in train_seeds if s < REAL_BACKGROUND_SEEDS_FROM]
    real = [s for s in train_seeds if s >= REAL_BACKGROUND_SEEDS_FROM]
    text = f"cacd train-data phantoms, {len(phantoms)} training seeds in {min(phantoms)}..{max(phantoms)}"
    if real:
        text += (f", and {len(real)} crops of real non-contrast chest CT with inserted plaques "
                 f"(real_backgrounds.py, seeds {min(real)}..{max(real)})")
    return text


def kept_entries(manifest, only):
    """The manifest's [[model]] blocks of the roles not being exported, as text (so a calcium
    network retrained alone ships beside the heart locator's files exactly as they were)."""
    if not manifest.exists():
        raise SystemExit(f"--only {only}: {manifest} must exist and hold the other network")
    blocks = manifest.read_text().split("[[model]]\n")[1:]
    kept = ["[[model]]\n" + b.rstrip("\n") + "\n" for b in blocks if f'role = "{only}"' not in b]
    if not kept:
        raise SystemExit(f"--only {only}: {manifest} has no other network to keep")
    return kept


def main():
    global VERSION
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", required=True, help="models/ folder (artifacts + manifest.toml)")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--calib", type=int, default=8, help="crops used for int8 calibration")
    ap.add_argument("--training-note", default="")
    ap.add_argument("--only", choices=["heart", "calcium"],
                    help="export this network only; the other's files and manifest entries in --models stay as they are")
    ap.add_argument("--min-lesion-confidence", type=float, default=0.0,
                    help="calcium model: refine threshold from bench/accuracy/calibrate.py (0: off)")
    ap.add_argument("--min-lesion-contrast-sigma", type=float, default=0.0,
                    help="calcium model: refine threshold from bench/accuracy/calibrate.py (0: off)")
    ap.add_argument("--min-lesion-contrast-sigma-large", type=float, default=0.0,
                    help="calcium model: the contrast threshold for large lesions (calibrate.py --two-tier; 0: off)")
    ap.add_argument("--large-lesion-area-mm2", type=float, default=0.0,
                    help="calcium model: area from which a lesion is large (calibrate.py --two-tier)")
    args = ap.parse_args()
    VERSION = args.version
    torch.set_num_threads(2)
    run, data, models = Path(args.run), Path(args.data), Path(args.models)
    grids = json.loads((data / "grids.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    train_seeds = metrics["train_seeds"]
    # Calibration crops: training seeds only, spread over the range.
    calib_dirs = [data / f"s{s:05}" for s in train_seeds[:: max(1, len(train_seeds) // args.calib)][: args.calib]]

    out = kept_entries(models / "manifest.toml", args.only) if args.only else []
    for role, net_cls, xname in [("heart", HeartNet, "coarse_x.npy"), ("calcium", CalciumNet, "fine_x.npy")]:
        if args.only and role != args.only:
            continue
        g = grids[role]
        # The calcium network has 5 classes, or 6 with the non-coronary class (grids.json says).
        net = net_cls() if role == "heart" else net_cls(len(g["labels"]))
        net.load_state_dict(torch.load(run / f"{role}.pt", map_location="cpu"))
        shape = (1, g["channels"], *g["shape"])
        fp32 = models / f"{role}_fp32.onnx"
        export_fp32(net, shape, fp32)
        int8 = models / f"{role}_int8.onnx"
        export_int8(fp32, int8, [np.load(d / xname) for d in calib_dirs])
        # Last, on both files: Softmax and Resize as operators engines run fast (graph.py).
        for f in (fp32, int8):
            graph.rewrite_file(f, f)
        n_train, n_val = len(train_seeds), len(metrics["val_seeds"])
        if role == "heart":
            score = f"validation Dice {metrics['heart_dice']:.3f}"
            steps = metrics["heart_steps"]
        else:
            score = "validation Dice on voxels >= 130 HU " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["calcium_dice"].items())
            steps = metrics["calcium_steps"]
        training = (
            f"models/training/train.py ({net_cls.__name__}), {steps} Adam steps, torch seed fixed; "
            f"data: {describe_data(train_seeds)} (seed % 10 != 9), {n_val} validation seeds (seed % 10 == 9); "
            f"{score}. {args.training_note}"
        ).strip()
        for precision, f in [("fp32", fp32), ("int8", int8)]:
            note = training if precision == "fp32" else training + f" int8: quantize_static QDQ, {len(calib_dirs)} training crops for calibration."
            refine = None if role == "heart" else {
                "min_lesion_confidence": args.min_lesion_confidence,
                "min_lesion_contrast_sigma": args.min_lesion_contrast_sigma,
                "min_lesion_contrast_sigma_large": args.min_lesion_contrast_sigma_large,
                "large_lesion_area_mm2": args.large_lesion_area_mm2,
            }
            out.append(entry(role, precision, f, g, note, refine))
    header = "# Written by models/training/export.py; see models/training/README.md to reproduce.\n\n"
    (models / "manifest.toml").write_text(header + "\n".join(out))
    print((models / "manifest.toml").read_text())


if __name__ == "__main__":
    main()
