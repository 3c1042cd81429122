"""One MultiWorkerMirroredStrategy worker for tests/test_train.py: trains, then dumps G's weights.

TF_CONFIG=... python tests/train_worker.py '<options as JSON>' out.npz [sgd]

With `sgd`, G and D train with the plain SGD of tests/helpers.py instead of Adam.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from pix2pixhd_tf.options import Options  # noqa: E402
from pix2pixhd_tf.training.trainer import make_optimizers, train  # noqa: E402

if __name__ == "__main__":
    options, out = json.loads(sys.argv[1]), sys.argv[2]
    optimizers = make_optimizers
    if sys.argv[3:] == ["sgd"]:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from tests.helpers import sgd_pair

        def optimizers(opts: Options):
            return sgd_pair()

    result = train(Options(**options), optimizers=optimizers)
    np.savez(out, **{f"g{i}": np.array(v) for i, v in enumerate(result.model.generator.weights)})
