"""Peak memory and time of converting a random-weight global G to ONNX (serving.onnx_export.export_onnx).

Run it in its own process under GNU time, which reports the peak RSS ("Maximum resident set size"):

    /usr/bin/time -v python benchmarks/onnx_conversion_memory.py --ngf=32

Prints the parameter count, the conversion's wall time and the file size. Results: onnx_conversion_memory.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import keras

from pix2pixhd_tf import networks
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.serving import onnx_export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ngf", type=int, default=64, help="generator width (64: the paper's global G1)")
    parser.add_argument("--label_nc", type=int, default=35)
    args = parser.parse_args()
    opts = Options(name="g", label_nc=args.label_nc, ngf=args.ngf)
    keras.utils.set_random_seed(0)
    generator = networks.build_generator(opts)
    print(f"global G, ngf {args.ngf}: {generator.count_params():,} parameters", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = onnx_export.export_onnx(opts, tmp, generator=generator)
        seconds = time.perf_counter() - start
        print(f"conversion {seconds:.1f} s, file {os.path.getsize(path) / 2**20:.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
