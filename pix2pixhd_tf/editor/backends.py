"""The three ways the editor generates an image from a label map, an instance map and chosen styles.

| backend | made from | generates with | styles from |
|---|---|---|---|
| `CheckpointBackend` | a training checkpoint (`--flagfile`, `--which_epoch`) | `Synthesizer.generate(label, instance, style=..., seed=...)` | the experiment's `clusters.npz` (or `--cluster_path`) |
| `SavedModelBackend` | an export of `tools/export.py` (`--saved_model`), loaded with `tf.saved_model.load` | the `generate_with_features` signature | a cluster bank file: `--cluster_path`, else `assets.extra/clusters.npz` in the version, else the experiment's `clusters.npz` when the export's options name one that exists |
| `RestBackend` | a TF Serving model (`--serving_url=http://host:8501/v1/models/NAME`) | `:predict` on `generate_with_features` | as for SavedModel (`--cluster_path` or the experiment's `clusters.npz`) |

The export embeds its cluster bank only as graph constants, which a client cannot read back; so the
SavedModel and REST backends compute the feature map themselves, in the app, from a bank file, with the
same function as `Synthesizer` (`styles.sample_feature_map`): for the same weights, seed and styles all
three backends give the same image. Without a bank file they fall back to `generate_with_seed` (the
export's own in-graph sampling, the twin of that function, seeded by the session's seed as
`styles.image_seeds` maps it): the same image as long as no style is chosen, but styles cannot be chosen
(the page says so).

Every backend answers `generate(label, instance, styles=..., seed=...)` with uint8 [H, W, output_nc].
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from pix2pixhd_tf.inference import Synthesizer
from pix2pixhd_tf.inputs import size_multiple
from pix2pixhd_tf.styles import (
    ClusterBank,
    Style,
    StyleSpec,
    apply_style,
    default_cluster_file,
    image_seeds,
    sample_feature_map,
)

__all__ = [
    "Backend",
    "CheckpointBackend",
    "CompiledGenerator",
    "RestBackend",
    "SavedModelBackend",
    "feature_map",
    "find_saved_model_version",
    "make_backend",
]

_LOG = logging.getLogger(__name__)


def _present_styles(regions: np.ndarray, styles: Mapping[int, Style]) -> StyleSpec:
    """The chosen styles of the regions present in `regions` (a spec naming absent ids would be refused)."""
    present = set(np.unique(regions).tolist())
    return StyleSpec(instances={int(k): v for k, v in styles.items() if int(k) in present})


def feature_map(
    regions: np.ndarray,
    *,
    bank: ClusterBank | None,
    feat_num: int,
    label_nc: int,
    styles: Mapping[int, Style] | None,
    seed: int,
) -> np.ndarray:
    """G's feature input for one map: chosen styles, else a seeded sample of the region's class clusters
    (`styles.sample_feature_map`, exactly what `Synthesizer.generate(style=, seed=)` computes); without a bank,
    zeros except for chosen feature vectors. Returns float32 [H, W, feat_num]."""
    spec = _present_styles(regions, styles or {})
    if bank is not None:
        return sample_feature_map(regions, bank, feat_num=feat_num, label_nc=label_nc, seed=seed, style=spec)
    features = np.zeros(regions.shape + (feat_num,), np.float32)
    return apply_style(features, regions, spec, bank=None, label_nc=label_nc, strict=False)


class Backend:
    """What the editor needs from a model. Subclasses set the attributes and implement `generate`."""

    label_nc: int
    feat_num: int  # 0: the model takes no features (styles cannot be chosen)
    size_multiple: int  # height and width must be multiples of this
    use_instance: bool  # whether G takes the instance map (else only the label map)
    label_feat: bool = False  # styles pool per label class (--label_feat) instead of per instance
    clusters: ClusterBank | None = None
    description: str = ""

    @property
    def can_choose_styles(self) -> bool:
        """Per-instance cluster styles: a feature model (--instance_feat) with a cluster bank. --label_feat models
        pool per class, so the editor samples their styles but does not offer choosing them."""
        return self.feat_num > 0 and self.clusters is not None and not self.label_feat

    def regions(self, label: np.ndarray, instance: np.ndarray) -> np.ndarray:
        return label if self.label_feat else instance

    def features(
        self, label: np.ndarray, instance: np.ndarray, styles: Mapping[int, Style] | None, seed: int
    ) -> np.ndarray:
        return feature_map(
            self.regions(label, instance),
            bank=self.clusters,
            feat_num=self.feat_num,
            label_nc=self.label_nc,
            styles=styles,
            seed=seed,
        )

    def generate(
        self, label: np.ndarray, instance: np.ndarray, *, styles: Mapping[int, Style] | None = None, seed: int = 0
    ) -> np.ndarray:
        """uint8 [H, W, output_nc] for int [H, W] maps, chosen `styles` {region id: index/vector} and `seed`."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "label_nc": self.label_nc,
            "feat_num": self.feat_num,
            "size_multiple": self.size_multiple,
            "styles": self.can_choose_styles,
            "label_feat": self.label_feat,
        }


# ------------------------------------------------------------------------------------------ checkpoint


class CompiledGenerator:
    """G behind one shape-polymorphic `tf.function`: faster per call than the eager Keras call on a CPU
    (`benchmarks/editor_latency.py`), traced once for every size, at construction rather than on the
    first edit."""

    def __init__(self, generator, input_nc: int):
        self.model = generator
        self.size_multiple = size_multiple(generator)
        spec = tf.TensorSpec([None, None, None, input_nc], tf.float32)
        self._call = tf.function(lambda x: generator(x, training=False), input_signature=[spec], autograph=False)
        side = 4 * self.size_multiple  # reflection padding needs a bottleneck of more than 1 pixel
        self._call(tf.zeros([1, side, side, input_nc]))  # trace now, not on the user's first edit

    def __call__(self, x, training: bool = False):
        if training:
            raise ValueError("the editor's compiled generator runs in inference mode only")
        return self._call(tf.cast(x, tf.float32))


class CheckpointBackend(Backend):
    """A `Synthesizer` in this process (G, E and the cluster bank of a training checkpoint)."""

    def __init__(self, synth: Synthesizer, *, compiled: bool = True):
        """
        Args:
            synth: a `pix2pixhd_tf.inference.Synthesizer` (label_nc > 0).
            compiled: run G through one `tf.function` (`CompiledGenerator`) instead of eagerly.
        """
        opts = synth.opts
        if compiled and not isinstance(synth.generator, CompiledGenerator):
            generator = CompiledGenerator(synth.generator, opts.generator_input_nc)
            synth = Synthesizer(opts, generator, synth.encoder, synth.clusters, synth.cluster_file)
        if opts.label_nc == 0:
            raise ValueError("the editor edits label maps: this model takes RGB input (--label_nc 0)")
        self.synth = synth
        self.label_nc = opts.label_nc
        self.feat_num = opts.feat_num if synth.uses_features else 0
        self.size_multiple = synth.size_multiple
        self.use_instance = not opts.no_instance
        self.label_feat = opts.label_feat
        self.clusters = synth.clusters
        bank = synth.cluster_file if synth.clusters is not None else "no cluster bank"
        self.description = f"checkpoint {opts.checkpoints_dir}/{opts.name} ({opts.which_epoch}; {bank})"

    @classmethod
    def from_options(cls, opts, *, which_epoch: str | None = None, cluster_file: str | None = None):
        return cls(Synthesizer.from_checkpoint(opts, which_epoch=which_epoch, cluster_file=cluster_file))

    def generate(self, label, instance, *, styles=None, seed=0):
        instance = instance if self.use_instance else None
        if not self.feat_num:
            return self.synth.generate(label, instance)
        if self.clusters is not None:
            spec = _present_styles(self.regions(label, instance), styles or {})
            return self.synth.generate(label, instance, style=spec, seed=seed)
        return self.synth.generate(label, instance, self.features(label, instance, styles, seed))


# ------------------------------------------------------------------------------------------ SavedModel


def find_saved_model_version(path: str) -> str:
    """`path` itself when it holds saved_model.pb, else its highest integer-named version directory."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = sorted((int(n) for n in os.listdir(path) if re.fullmatch(r"\d+", n)), reverse=True)
        for v in versions:
            candidate = os.path.join(path, str(v))
            if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
                return candidate
    raise FileNotFoundError(
        f"no SavedModel at {path}: pass a version directory (holding saved_model.pb) or the export directory "
        "of tools/export.py (holding numbered versions)"
    )


def _bank_for_export(
    info: Mapping[str, Any], version_dir: str, cluster_file: str | None, allow_pickle: bool = False
) -> tuple[ClusterBank | None, str]:
    """The cluster bank a SavedModel/REST backend computes features from, and where it came from."""
    label_nc, feat_num = info.get("label_nc"), info.get("feat_num") or None
    candidates = []
    if cluster_file:
        if not os.path.isfile(cluster_file):
            raise FileNotFoundError(f"no cluster file {cluster_file} (--cluster_path)")
        candidates.append(cluster_file)
    if version_dir:
        candidates.append(os.path.join(version_dir, "assets.extra", "clusters.npz"))
    opts = info.get("options") or {}
    if opts.get("checkpoints_dir") and opts.get("name"):
        candidates.append(os.path.join(opts["checkpoints_dir"], opts["name"], "clusters.npz"))
    for path in candidates:
        if os.path.isfile(path):
            return ClusterBank.load(path, label_nc=label_nc, feat_num=feat_num, allow_pickle=allow_pickle), path
    return None, "no cluster bank file (styles come from the export's in-graph sampling and cannot be chosen)"


class SavedModelBackend(Backend):
    """An export of `tools/export.py`, loaded with `tf.saved_model.load` (no project code in the graph)."""

    def __init__(self, path: str, *, cluster_file: str | None = None, allow_pickle: bool = False):
        """
        Args:
            path: a version directory, or the export directory (its highest version is used).
            cluster_file: the cluster bank to compute features from (see the module docstring for the default).
        """
        self.path = find_saved_model_version(path)
        info_path = os.path.join(self.path, "assets.extra", "export_info.json")
        if not os.path.isfile(info_path):
            raise FileNotFoundError(f"{info_path} is missing: is {self.path} an export of tools/export.py?")
        with open(info_path) as f:
            self.export_info = info = json.load(f)
        opts = info.get("options") or {}
        if not info.get("label_nc"):
            raise ValueError("the editor edits label maps: this export takes RGB input (label_nc 0)")
        self.model = tf.saved_model.load(self.path)
        self.label_nc = int(info["label_nc"])
        self.feat_num = int(info.get("feat_num") or 0)
        self.size_multiple = int(info.get("size_multiple") or 1)
        self.use_instance = not opts.get("no_instance", False)
        self.label_feat = bool(opts.get("label_feat", False))
        self.clusters, bank_source = (
            (None, "") if not self.feat_num else _bank_for_export(info, self.path, cluster_file, allow_pickle)
        )
        self.description = f"SavedModel {self.path}" + (f" (styles: {bank_source})" if self.feat_num else "")
        if self.feat_num and self.clusters is None:
            _LOG.warning("SavedModel %s: %s", self.path, bank_source)

    def _inputs(self, label: np.ndarray, instance: np.ndarray) -> dict[str, Any]:
        inputs = {"label": tf.constant(np.asarray(label, np.int32)[None])}
        if self.use_instance:
            inputs["instance"] = tf.constant(np.asarray(instance, np.int32)[None])
        return inputs

    def generate(self, label, instance, *, styles=None, seed=0):
        inputs = self._inputs(label, instance)
        if not self.feat_num:
            signature = "serving_default"
        elif self.clusters is None:
            signature, inputs["seed"] = "generate_with_seed", tf.constant(image_seeds(seed, 1))
        else:
            signature = "generate_with_features"
            inputs["features"] = tf.constant(self.features(label, instance, styles, seed)[None])
        return self.model.signatures[signature](**inputs)["image"][0].numpy()


# ------------------------------------------------------------------------------------------ TF Serving REST


class RestBackend(Backend):
    """A model in TF Serving, over its REST API (standard library only)."""

    def __init__(
        self,
        url: str,
        *,
        label_nc: int,
        size_multiple: int,
        use_instance: bool = True,
        label_feat: bool = False,
        cluster_file: str | None = None,
        timeout: float = 60.0,
        allow_pickle: bool = False,
    ):
        """
        Args:
            url: the model's REST address, `http://host:8501/v1/models/NAME` (optionally `/versions/N`).
            label_nc, size_multiple, use_instance, label_feat: the model's settings (TF Serving's metadata does
                not carry them; the CLI takes them from the training flags).
            cluster_file: the cluster bank to compute features from (None: sampled in the server's graph).

        Raises:
            RuntimeError: the server does not answer, or the model lacks the signatures the editor needs.
        """
        self.url = url.rstrip("/")
        if not re.match(r"^https?://[^/]+/v1/models/[^/:]+(/versions/\d+)?$", self.url):
            raise ValueError(f"--serving_url must look like http://host:8501/v1/models/NAME, got {url!r}")
        self.timeout = timeout
        self.label_nc = int(label_nc)
        self.size_multiple = int(size_multiple)
        self.use_instance = use_instance
        self.label_feat = label_feat
        self.signatures = self._signatures()
        if "serving_default" not in self.signatures:
            raise RuntimeError(f"{self.url} has no serving_default signature: is it a pix2pixhd_tf export?")
        features = self.signatures.get("generate_with_features", {}).get("features")
        self.feat_num = int(features[-1]) if features else 0
        self.clusters = None
        if self.feat_num and cluster_file:
            self.clusters = ClusterBank.load(
                cluster_file, label_nc=self.label_nc, feat_num=self.feat_num, allow_pickle=allow_pickle
            )
        styles = f"; styles from {cluster_file}" if self.clusters is not None else ""
        self.description = f"TF Serving {self.url}{styles}"

    def _request(self, suffix: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.url + suffix,
            data=data,
            headers={"Content-Type": "application/json"},
            method="GET" if data is None else "POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            payload = e.read().decode("utf-8", "replace")
            try:
                message = json.loads(payload).get("error", payload)
            except json.JSONDecodeError:
                message = payload
            raise RuntimeError(f"TF Serving answered HTTP {e.code} for {self.url}{suffix}: {message[:500]}") from None
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(f"cannot reach TF Serving at {self.url}{suffix}: {e}") from None

    def _signatures(self) -> dict[str, dict[str, list[int]]]:
        """{signature: {input name: shape}} from the model's metadata."""
        body = self._request("/metadata")
        try:
            defs = body["metadata"]["signature_def"]["signature_def"]
        except (KeyError, TypeError):
            raise RuntimeError(f"unexpected metadata from {self.url}/metadata: {str(body)[:300]}") from None
        out = {}
        for name, sig in defs.items():
            shapes = {}
            for key, spec in (sig.get("inputs") or {}).items():
                dims = (spec.get("tensor_shape") or {}).get("dim") or []
                shapes[key] = [int(d.get("size", -1)) for d in dims]
            out[name] = shapes
        return out

    def generate(self, label, instance, *, styles=None, seed=0):
        inputs: dict[str, Any] = {"label": np.asarray(label, np.int32)[None].tolist()}
        if self.use_instance:
            inputs["instance"] = np.asarray(instance, np.int32)[None].tolist()
        if not self.feat_num:
            signature = "serving_default"
        elif self.clusters is None:
            signature, inputs["seed"] = "generate_with_seed", image_seeds(seed, 1).tolist()
        else:
            signature = "generate_with_features"
            inputs["features"] = np.round(self.features(label, instance, styles, seed), 6)[None].tolist()
        body = self._request(":predict", {"signature_name": signature, "inputs": inputs})
        if "error" in body:
            raise RuntimeError(f"TF Serving error: {body['error']}")
        outputs = body.get("outputs")
        if isinstance(outputs, dict):
            outputs = outputs.get("image")
        if outputs is None:
            raise RuntimeError(f"unexpected answer from {self.url}:predict: keys {sorted(body)}")
        return np.asarray(outputs, np.uint8)[0]


# ------------------------------------------------------------------------------------------ choosing one


def make_backend(
    opts,
    *,
    saved_model: str | None = None,
    serving_url: str | None = None,
    cluster_file: str | None = None,
) -> Backend:
    """The backend the CLI flags name: a SavedModel (`saved_model`), TF Serving (`serving_url`), or else the
    experiment's checkpoint (`opts.checkpoints_dir/opts.name`, `opts.which_epoch`).

    Args:
        opts: the experiment's options (for REST: label_nc, the generator's size and instance/feature flags).
        cluster_file: the cluster bank (default: the experiment's clusters.npz; see the module docstring).
    """
    if saved_model and serving_url:
        raise ValueError("pass either --saved_model or --serving_url, not both")
    if saved_model:
        return SavedModelBackend(saved_model, cluster_file=cluster_file, allow_pickle=opts.allow_pickle)
    if serving_url:
        if cluster_file is None and opts.use_features and os.path.isfile(default_cluster_file(opts)):
            cluster_file = default_cluster_file(opts)
        return RestBackend(
            serving_url,
            label_nc=opts.label_nc,
            size_multiple=opts.size_multiple,  # no network at hand: the sizes the model was trained at
            use_instance=not opts.no_instance,
            label_feat=opts.label_feat,
            cluster_file=cluster_file if opts.use_features else None,
            allow_pickle=opts.allow_pickle,
        )
    return CheckpointBackend.from_options(opts, cluster_file=cluster_file)
