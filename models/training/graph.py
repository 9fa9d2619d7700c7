"""Rewrites an exported network's ONNX graph into operators every engine runs fast, keeping its
function: the same weights, the same output to float rounding (checked by `--check`).

Why: profiling the calcium segmenter in ONNX Runtime's CPU provider (1.32, 2 threads, its
4x64x192x192 input) showed the convolutions were the small part. Most of the time went to

* `Softmax` over axis 1 of a 5-D tensor: ONNX Runtime's kernel handles a non-last axis by
  transposing the whole tensor to channels-last and back;
* `Resize` (nearest, x2) in 3-D, whose generic kernel computes a source index per output
  element.

So the graph gets

* Softmax(x, axis=1) -> e = Exp(x - ReduceMax(x, 1)); e / ReduceSum(e, 1) (what Softmax
  computes, in elementwise ops and reductions that stream through memory);
* Resize(x, scales [1,1,2,2,2], nearest, floor, asymmetric) -> Unsqueeze(x, [3,5,7]), each
  new axis doubled by Concat of the tensor with itself, Reshape to Shape(x) * [1,1,2,2,2]:
  output voxel (z,y,x) is input voxel (z//2, y//2, x//2), exactly what that Resize computes, as
  plain copies. (Expand in place of the Concats is as fast in ONNX Runtime but trips tract
  0.23's optimiser when a 1x1x1 convolution follows.)

Anything else, including a Resize with other attributes or scales, is left alone.

    python3 graph.py IN.onnx OUT.onnx [--check]
    python3 graph.py --manifest ../manifest.toml   # rewrite every listed file, update sha256

export.py applies it to the files it writes.
"""

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

UP2_SCALES = [1.0, 1.0, 2.0, 2.0, 2.0]


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_values(model):
    """Values of initializers and Constant nodes, by output name."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            a = _attrs(n)
            if "value" in a:
                values[n.output[0]] = numpy_helper.to_array(a["value"])
    return values


def _is_nearest_up2(node, values):
    if node.op_type != "Resize" or len(node.input) < 3:
        return False
    a = _attrs(node)
    if a.get("mode", b"nearest") != b"nearest":
        return False
    if a.get("coordinate_transformation_mode", b"half_pixel") != b"asymmetric":
        return False
    if a.get("nearest_mode", b"round_prefer_floor") != b"floor":
        return False
    # roi (input 1) is read only by tf_crop_and_resize, not by "asymmetric".
    if len(node.input) > 3 and node.input[3]:
        return False  # explicit sizes
    scales = values.get(node.input[2])
    return scales is not None and list(np.asarray(scales, dtype=np.float64)) == UP2_SCALES


def rewrite(model):
    """Returns the number of nodes replaced; `model` is changed in place."""
    g = model.graph
    values = _constant_values(model)
    names = {i.name for i in g.initializer}

    def const(name, arr):
        if name not in names:
            g.initializer.append(numpy_helper.from_array(np.asarray(arr, dtype=np.int64), name))
            names.add(name)
        return name

    nodes, replaced = [], 0
    for n in g.node:
        if _is_nearest_up2(n, values):
            x, y, p = n.input[0], n.output[0], n.name or n.output[0]
            axes = const("cacd_up2_axes", [3, 5, 7])
            scale = const("cacd_up2_scale", [1, 1, 2, 2, 2])
            nodes.append(helper.make_node("Unsqueeze", [x, axes], [p + "/unsq"], name=p + "/unsq"))
            cur = p + "/unsq"
            for axis in (3, 5, 7):
                # Each singleton axis doubled by concatenating the tensor with itself.
                out = f"{p}/twice{axis}"
                nodes.append(helper.make_node("Concat", [cur, cur], [out], name=out, axis=axis))
                cur = out
            nodes += [
                helper.make_node("Shape", [x], [p + "/shape"], name=p + "/shape"),
                helper.make_node("Mul", [p + "/shape", scale], [p + "/shape2"], name=p + "/shape2"),
                helper.make_node("Reshape", [cur, p + "/shape2"], [y], name=n.name),
            ]
            replaced += 1
        elif n.op_type == "Softmax" and _attrs(n).get("axis", -1) == 1:
            x, y, p = n.input[0], n.output[0], (n.name or n.output[0]) + "/softmax"
            axis = const("cacd_softmax_axis", [1])
            nodes += [
                helper.make_node("ReduceMax", [x], [p + "/max"], name=p + "/max", axes=[1], keepdims=1),
                helper.make_node("Sub", [x, p + "/max"], [p + "/shifted"], name=p + "/shifted"),
                helper.make_node("Exp", [p + "/shifted"], [p + "/exp"], name=p + "/exp"),
                helper.make_node("ReduceSum", [p + "/exp", axis], [p + "/sum"], name=p + "/sum", keepdims=1),
                # Keeps the replaced node's name: tract finds outputs by producing node name.
                helper.make_node("Div", [p + "/exp", p + "/sum"], [y], name=n.name),
            ]
            replaced += 1
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused(model)
    onnx.checker.check_model(model)
    return replaced


def _drop_unused(model):
    """Removes Constant nodes and initializers nothing reads any more (Resize's scales)."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [n for n in g.node if n.op_type != "Constant" or n.output[0] in used]
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


def rewrite_file(src, dst):
    model = onnx.load(str(src))
    count = rewrite(model)
    onnx.save(model, str(dst))
    return count


def check(before, after, seed=0):
    """Runs both files in ONNX Runtime's CPU provider on random input; returns the largest
    absolute difference of the outputs and the count of voxels whose argmax differs."""
    import onnxruntime as ort

    outs = []
    for f in (before, after):
        s = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        i = s.get_inputs()[0]
        x = np.random.default_rng(seed).standard_normal(i.shape, dtype=np.float32)
        outs.append(s.run(None, {i.name: x})[0])
    a, b = outs
    return float(np.abs(a - b).max()), int((a.argmax(1) != b.argmax(1)).sum())


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def rewrite_manifest(manifest):
    """Rewrites every model file the manifest lists (in place) and updates its sha256 line."""
    text = Path(manifest).read_text()
    folder = os.path.dirname(os.path.abspath(manifest))
    for file, old in re.findall(r'file = "([^"]+)"\nsha256 = "([0-9a-f]{64})"', text):
        path = os.path.join(folder, file)
        tmp = path + ".tmp"
        count = rewrite_file(path, tmp)
        diff, argmax = check(path, tmp)
        os.replace(tmp, path)
        new = sha256(path)
        text = text.replace(f'sha256 = "{old}"', f'sha256 = "{new}"')
        print(f"{file}: {count} nodes replaced, max |diff| {diff:.2e}, argmax differs on {argmax} voxels, sha256 {new}")
    Path(manifest).write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?")
    ap.add_argument("dst", nargs="?")
    ap.add_argument("--check", action="store_true", help="compare outputs in ONNX Runtime")
    ap.add_argument("--manifest", help="rewrite every file this manifest lists, in place")
    a = ap.parse_args()
    if a.manifest:
        rewrite_manifest(a.manifest)
        return
    if not (a.src and a.dst):
        ap.error("give SRC and DST, or --manifest")
    count = rewrite_file(a.src, a.dst)
    print(f"{count} nodes replaced")
    if a.check:
        diff, argmax = check(a.src, a.dst)
        print(f"max |diff| {diff:.2e}, argmax differs on {argmax} voxels")


if __name__ == "__main__":
    sys.exit(main())
