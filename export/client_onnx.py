"""Run an exported ONNX generator with ONNX Runtime on a label (+ instance) PNG and write the image.

    pip install onnxruntime numpy pillow
    python export/client_onnx.py --model exported/onnx/1/label2city.onnx \\
        --label label.png --instance instance.png --out out.png --label_nc 35

The label and instance PNGs are single-channel id maps (8- or 16-bit); height and width must be multiples
of the generator's size multiple (2^(n_downsample_global + n_local_enhancers)). Feature models take
--features, a .npy float32 [H,W,feat_num] map ({name}.onnx), or --seed with {name}_seed.onnx, which samples
the styles from its embedded cluster bank (the SavedModel's generate_with_seed; default seed 0, as its
serving_default):

    python export/client_onnx.py --model exported/onnx/1/feat_seed.onnx --label label.png \
        --instance instance.png --seed 7 --out out.png

ONNX has no input checks in the graph (an id >= label_nc
gives an all-zero one-hot, a negative id wraps around), so this client checks the label range when
--label_nc is given. Needs no TensorFlow and no project code.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def read_ids(path: str) -> np.ndarray:
    ids = np.asarray(Image.open(path))
    if ids.ndim != 2:
        raise SystemExit(f"{path}: expected a single-channel id map, got shape {ids.shape}")
    return ids.astype(np.int32)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the .onnx file (tools/export.py --formats=onnx)")
    parser.add_argument("--label", required=True, help="label id PNG")
    parser.add_argument("--instance", help="instance id PNG (models with instance maps)")
    parser.add_argument("--features", help=".npy float32 [H,W,feat_num] feature map (feature models)")
    parser.add_argument("--seed", type=int, default=0, help="style seed, 0..2^31-1 ({name}_seed.onnx models)")
    parser.add_argument("--label_nc", type=int, help="the model's label_nc: refuse ids outside [0, label_nc)")
    parser.add_argument("--out", required=True, help="where to write the generated PNG")
    args = parser.parse_args(argv)

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    label = read_ids(args.label)
    if args.label_nc is not None and (label.min() < 0 or label.max() >= args.label_nc):
        raise SystemExit(f"{args.label}: label ids must be in [0, {args.label_nc}); got {label.min()}..{label.max()}")
    feed = {"label": label[None]}
    if "instance" in names:
        if not args.instance:
            raise SystemExit("this model takes an instance map: pass --instance")
        feed["instance"] = read_ids(args.instance)[None]
    if "features" in names:
        if not args.features:
            raise SystemExit("this feature model takes a feature map: pass --features (a .npy [H,W,feat_num])")
        feed["features"] = np.load(args.features).astype(np.float32)[None]
    if "seed" in names:
        if not 0 <= args.seed < 2**31:
            raise SystemExit(f"--seed must be in [0, 2^31); got {args.seed}")
        feed["seed"] = np.array([args.seed], np.int32)
    image = session.run(["image"], feed)[0][0]
    Image.fromarray(image).save(args.out)
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]})", file=sys.stderr)


if __name__ == "__main__":
    main()
