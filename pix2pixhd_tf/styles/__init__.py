"""Per-instance styles (paper §3.4): the cluster bank, style specs and sampling.

Sampling has one definition of the random draw (`cluster_draw`) and two twins that give the same features
for the same seed: `sample_feature_map` (numpy, with style specs) and `sample_features_graph` (in-graph,
for the SavedModel). Encoding a training set and clustering it lives in `pix2pixhd_tf.styles.encoding`
(it needs the networks).
"""

from pix2pixhd_tf.styles.bank import (
    CLUSTERS_FILE,
    ClusterBank,
    Style,
    StyleSpec,
    class_of,
    classes_of,
    classes_of_graph,
    default_cluster_file,
    keep_instance,
    load_official_clusters,
)
from pix2pixhd_tf.styles.sampling import (
    SeedLike,
    apply_style,
    cluster_draw,
    image_seeds,
    sample_feature_map,
    sample_features_graph,
)

__all__ = [
    "CLUSTERS_FILE",
    "ClusterBank",
    "SeedLike",
    "Style",
    "StyleSpec",
    "apply_style",
    "class_of",
    "classes_of",
    "classes_of_graph",
    "cluster_draw",
    "default_cluster_file",
    "image_seeds",
    "keep_instance",
    "load_official_clusters",
    "sample_feature_map",
    "sample_features_graph",
]
