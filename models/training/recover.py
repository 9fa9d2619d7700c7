"""Rebuilds PyTorch weights (a run folder: heart.pt, calcium.pt) from committed fp32 ONNX files.

    python3 recover.py --models ../six-class --out /work/td/run9r

Why: a run's `.pt` files live on the training machine and are lost with it; the committed
fp32 ONNX files hold the same function. The exporter folded each BatchNorm into the
convolution before it (weights scaled, a bias added), so the rebuilt network gets those
folded weights and BatchNorms that are the identity (scale 1, shift = the folded bias, mean 0,
variance 1 − eps). Fine-tune such weights with `train.py --freeze-bn` (BatchNorm kept in
inference mode: batch statistics would undo the folding); exporting them folds the identity
BatchNorm away again, so an untouched recovered run exports the same function.

The rebuilt networks are checked against ONNX Runtime on the committed file (random input,
max |difference| of the probabilities printed, 1e-4 required).
"""

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import numpy_helper

from nets import CalciumNet, HeartNet, WithSoftmax


def fused_convs(model):
    """(weight, bias) of every convolution but the head, in the order of the graph's nodes
    (for these networks the order of `forward`, which is also their modules' order; `check`
    catches any mismatch numerically)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3:
            continue
        w, b = node.input[1], node.input[2]
        if w.startswith("net.head"):
            continue
        convs.append((inits[w], inits[b]))
    head = (inits["net.head.weight"], inits["net.head.bias"])
    return convs, head


def load_fused(net, model):
    convs, head = fused_convs(model)
    pairs = []  # (Conv3d, BatchNorm3d) in module order
    mods = list(net.modules())
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv3d) and m is not net.head:
            bn = mods[i + 1]
            if not isinstance(bn, nn.BatchNorm3d):
                raise SystemExit(f"conv {i} is not followed by a BatchNorm")
            pairs.append((m, bn))
    if len(pairs) != len(convs):
        raise SystemExit(f"{len(convs)} folded convolutions in the file, {len(pairs)} in the network")
    with torch.no_grad():
        for (conv, bn), (w, b) in zip(pairs, convs):
            if tuple(conv.weight.shape) != w.shape:
                raise SystemExit(f"shape {w.shape} in the file, {tuple(conv.weight.shape)} in the network")
            conv.weight.copy_(torch.from_numpy(np.array(w)))
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(np.array(b)))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        net.head.weight.copy_(torch.from_numpy(np.array(head[0])))
        net.head.bias.copy_(torch.from_numpy(np.array(head[1])))


def check(net, path, shape):
    x = np.random.default_rng(0).normal(0, 0.5, size=shape).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        got = WithSoftmax(net).eval()(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - want).max())
    print(f"{path.name}: max |PyTorch − ONNX Runtime| {diff:.2e}", flush=True)
    if diff > 1e-4:
        raise SystemExit(f"{path}: rebuilt network differs from the file by {diff}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, help="folder with manifest.toml and the fp32 files")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    models, out = Path(args.models), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for role, path in (("heart", models / "heart_fp32.onnx"), ("calcium", models / "calcium_fp32.onnx")):
        model = onnx.load(str(path))
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        if role == "heart":
            net = HeartNet()
        else:
            net = CalciumNet(int(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value))
        load_fused(net, model)
        check(net, path, dims)
        torch.save(net.state_dict(), out / f"{role}.pt")
        print(f"{role}: {out / (role + '.pt')}", flush=True)


if __name__ == "__main__":
    main()
