"""The in-graph pre/post-processing around G (and E) that every exported signature shares.

Everything a client would otherwise re-implement runs in the graph, with the library's own functions:
G's input is built by `inputs.encode_input` + `inputs.generator_input` (one-hot labels, instance
boundaries, the size check, features), styles are sampled by `styles.sample_features_graph` (the in-graph
twin of the sampler `Synthesizer` uses), and the checks (label range, image size, matching sizes) fail
with INVALID_ARGUMENT instead of silently producing garbage. `saved_model` turns these into SavedModel
signatures, `tflite` into a fixed-size TFLite model.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pix2pixhd_tf.inputs import (
    check_image_size,
    check_same_size,
    encode_input,
    from_uint8,
    generator_input,
    size_multiple,
    to_uint8,
)
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.styles import ClusterBank, sample_features_graph

__all__ = ["DEFAULT_SEED", "Endpoints"]

DEFAULT_SEED = 0  # the style seed of serving_default and serving_png


class Endpoints:
    """G's (and E's) graph pieces for one model: input specs, generation, sampling, encoding, PNG I/O and
    the SavedModel signatures built from them."""

    def __init__(self, opts: Options, generator: keras.Model, encoder: keras.Model | None, bank: ClusterBank | None):
        if opts.label_feat and opts.label_nc == 0:
            raise ValueError("--label_feat pools features per label id, which a --label_nc 0 (RGB input) model lacks")
        self.opts = opts
        self.generator = generator
        self.encoder = encoder
        self.bank = bank
        self.use_instance = not opts.no_instance
        self.use_features = opts.use_features
        self.g_multiple = size_multiple(generator)
        self.e_multiple = size_multiple(encoder) if encoder is not None else 1
        self.label_name = "label" if opts.label_nc else "input_image"
        # One trace of each network, shared by every signature (called as a function from each).
        self._generator_fn = tf.function(
            lambda x: generator(x, training=False),
            input_signature=[tf.TensorSpec([None, None, None, opts.generator_input_nc], tf.float32)],
            autograph=False,
        )
        if encoder is not None:
            self._encoder_fn = tf.function(
                lambda image, regions: encoder([image, regions], training=False),
                input_signature=[
                    tf.TensorSpec([None, None, None, opts.output_nc], tf.float32),
                    tf.TensorSpec([None, None, None], tf.int32),
                ],
                autograph=False,
            )
        self.region_name = "label" if opts.label_feat else "instance"

    # Specs ------------------------------------------------------------------------------------------
    def label_spec(self, fixed: tuple[int, int, int] | None = None) -> tf.TensorSpec:
        n, h, w = fixed or (None, None, None)
        if self.opts.label_nc:
            return tf.TensorSpec([n, h, w], tf.int32, name="label")
        return tf.TensorSpec([n, h, w, self.opts.input_nc], tf.uint8, name="input_image")

    @staticmethod
    def ids_spec(name: str, fixed: tuple[int, int, int] | None = None) -> tf.TensorSpec:
        return tf.TensorSpec(list(fixed or (None, None, None)), tf.int32, name=name)

    def features_spec(self, fixed: tuple[int, int, int] | None = None) -> tf.TensorSpec:
        return tf.TensorSpec(list(fixed or (None, None, None)) + [self.opts.feat_num], tf.float32, name="features")

    def map_specs(self, fixed=None) -> list[tf.TensorSpec]:
        """label (or input_image), then instance unless no_instance."""
        specs = [self.label_spec(fixed)]
        if self.use_instance:
            specs.append(self.ids_spec("instance", fixed))
        return specs

    # Graph pieces -----------------------------------------------------------------------------------
    def generate(self, label, instance, features=None) -> tf.Tensor:
        """G's output in [-1, 1], float32: G's input built exactly as in training and `Synthesizer`."""
        conditioning = encode_input(label, instance, label_nc=self.opts.label_nc, input_nc=self.opts.input_nc)
        feat_num = self.opts.feat_num if self.use_features else 0
        x = generator_input(conditioning, features, feat_num=feat_num, size_multiple=self.g_multiple)
        return tf.cast(self.run_generator(x), tf.float32)

    def run_generator(self, x: tf.Tensor) -> tf.Tensor:
        return self._generator_fn(x)

    def sampled_features(self, label, instance, seed) -> tf.Tensor:
        regions = label if self.opts.label_feat else instance
        return sample_features_graph(regions, seed, self.bank, feat_num=self.opts.feat_num)

    def generate_sampled(self, label, instance, seed) -> tf.Tensor:
        features = self.sampled_features(label, instance, seed) if self.use_features else None
        return self.generate(label, instance, features)

    def encode(self, image, regions) -> tf.Tensor:
        image = check_image_size(image, self.e_multiple, "the encoder input")
        regions = check_same_size(tf.cast(regions, tf.int32), image, f"the image and the {self.region_name} map")
        return tf.cast(self._encoder_fn(from_uint8(image), regions), tf.float32)

    # PNG I/O ----------------------------------------------------------------------------------------
    @staticmethod
    def decode_id_png(png: tf.Tensor, what: str) -> tf.Tensor:
        """A single-channel 8- or 16-bit PNG -> int32 [H,W]; the bit depth is read from the IHDR header
        (decode_png with dtype uint16 would scale 8-bit values by 257)."""
        header = tf.io.decode_raw(tf.strings.substr(png, 24, 2), tf.uint8)
        check = tf.debugging.Assert(
            tf.logical_and(tf.equal(tf.size(header), 2), tf.equal(header[-1], 0)),
            [f"{what} must be a single-channel (grayscale) 8- or 16-bit PNG id map, not a palette or RGB PNG"],
        )
        with tf.control_dependencies([check]):
            depth = tf.identity(header[0])
        ids = tf.cond(
            tf.equal(depth, 16),
            lambda: tf.cast(tf.io.decode_png(png, channels=1, dtype=tf.uint16), tf.int32),
            lambda: tf.cast(tf.io.decode_png(png, channels=1, dtype=tf.uint8), tf.int32),
        )
        return ids[..., 0]

    def decode_label_png(self, png: tf.Tensor) -> tf.Tensor:
        if self.opts.label_nc:
            return self.decode_id_png(png, "label_png_bytes")
        return tf.io.decode_png(png, channels=self.opts.input_nc, dtype=tf.uint8)

    def png_endpoint(self, label_png, instance_png=None) -> tf.Tensor:
        """One image at a time (tf.map_fn), so a request, or a server-side batch, may mix image sizes."""

        def one(args):
            label = self.decode_label_png(args[0])[None]
            instance = self.decode_id_png(args[1], "instance_png_bytes")[None] if self.use_instance else None
            seed = tf.constant([DEFAULT_SEED], tf.int32)
            image = to_uint8(self.generate_sampled(label, instance, seed))[0]
            return tf.io.encode_png(image)

        elems = (label_png, instance_png) if self.use_instance else (label_png,)
        return tf.map_fn(one, elems, fn_output_signature=tf.TensorSpec([], tf.string))

    # Signatures -------------------------------------------------------------------------------------
    def signatures(self) -> dict[str, tuple[Any, list[tf.TensorSpec]]]:
        """name -> (python function with named arguments, input specs); outputs are dicts."""
        sigs: dict[str, tuple[Any, list[tf.TensorSpec]]] = {}
        maps = self.map_specs()

        def default_seed(label):
            return tf.fill(tf.shape(label)[:1], DEFAULT_SEED)

        if self.use_instance:

            def serving_default(label, instance):
                return {"image": to_uint8(self.generate_sampled(label, instance, default_seed(label)))}

            def serving_png(label_png_bytes, instance_png_bytes):
                return {"image_png_bytes": self.png_endpoint(label_png_bytes, instance_png_bytes)}

            instance_png_spec = [tf.TensorSpec([None], tf.string, name="instance_png_bytes")]
        else:

            def serving_default(label):
                return {"image": to_uint8(self.generate_sampled(label, None, default_seed(label)))}

            def serving_png(label_png_bytes):
                return {"image_png_bytes": self.png_endpoint(label_png_bytes)}

            instance_png_spec = []
        label_png_name = "label_png_bytes" if self.opts.label_nc else "input_image_png_bytes"
        sigs["serving_default"] = (serving_default, maps)
        sigs["serving_png"] = (serving_png, [tf.TensorSpec([None], tf.string, name=label_png_name)] + instance_png_spec)

        if self.use_features:
            seed_spec = tf.TensorSpec([None], tf.int32, name="seed")
            if self.use_instance:

                def generate_with_seed(label, instance, seed):
                    return {"image": to_uint8(self.generate_sampled(label, instance, seed))}

                def generate_with_features(label, instance, features):
                    return {"image": to_uint8(self.generate(label, instance, features))}

            else:

                def generate_with_seed(label, seed):
                    return {"image": to_uint8(self.generate_sampled(label, None, seed))}

                def generate_with_features(label, features):
                    return {"image": to_uint8(self.generate(label, None, features))}

            sigs["generate_with_seed"] = (generate_with_seed, maps + [seed_spec])
            sigs["generate_with_features"] = (generate_with_features, maps + [self.features_spec()])

        if self.encoder is not None:
            image_spec = tf.TensorSpec([None, None, None, self.opts.output_nc], tf.uint8, name="image")
            if self.opts.label_feat:

                def encode(image, label):
                    return {"features": self.encode(image, label)}

            else:

                def encode(image, instance):
                    return {"features": self.encode(image, instance)}

            sigs["encode"] = (encode, [image_spec, self.ids_spec(self.region_name)])
        return sigs
