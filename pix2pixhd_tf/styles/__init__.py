"""Per-instance styles (paper §3.4): the cluster bank, style specs and sampling.

Encoding a training set and clustering it lives in `pix2pixhd_tf.styles.encoding` (it needs the networks).
"""

from pix2pixhd_tf.styles.bank import (
    CLUSTERS_FILE,
    ClusterBank,
    SeedLike,
    Style,
    StyleSpec,
    class_of,
    classes_of,
    default_cluster_file,
    keep_instance,
)
from pix2pixhd_tf.styles.sampling import apply_style, sample_feature_map

__all__ = [
    "CLUSTERS_FILE",
    "ClusterBank",
    "SeedLike",
    "Style",
    "StyleSpec",
    "apply_style",
    "class_of",
    "classes_of",
    "default_cluster_file",
    "keep_instance",
    "sample_feature_map",
]
