"""One MultiWorkerMirroredStrategy worker for tests/test_train.py: trains, then dumps G's weights.

TF_CONFIG=... python tests/train_worker.py '<options as JSON>' out.npz
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from pix2pixhd_tf.options import Options  # noqa: E402
from pix2pixhd_tf.train import train  # noqa: E402

if __name__ == "__main__":
    options, out = json.loads(sys.argv[1]), sys.argv[2]
    result = train(Options(**options))
    np.savez(out, **{f"g{i}": np.array(v) for i, v in enumerate(result.model.generator.weights)})
