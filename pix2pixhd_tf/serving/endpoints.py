"""The in-graph pre/post-processing around G (and E) that every exported signature shares.

Everything a client would otherwise re-implement runs in the graph, with the library's own functions:
G's input is built by `inputs.encode_input` + `inputs.generator_input` (one-hot labels, instance
boundaries, the size check, features), styles are sampled by `styles.sample_features_graph` (the in-graph
twin of the sampler `Synthesizer` uses), and the checks (label range, image size, matching sizes) fail
with INVALID_ARGUMENT instead of silently producing garbage. `saved_model` turns these into SavedModel
signatures, `tflite` into a fixed-size TFLite model.

One request must never take the server down (issue 19): every SavedModel signature first checks what a
client sent, in the graph and before any work, and answers INVALID_ARGUMENT naming the input, what it must
be and what it got: the rank and channels of each tensor, an empty batch, a batch whose inputs disagree in
size, and the pixel limits `max_pixels` (per image) and `max_batch_pixels` (per request) set at export time.
`serving_png` reads the width and height from each PNG's IHDR header (bytes 16..24), after checking the
length and the PNG signature, so a 439 KB PNG declaring 20000x20000 is refused before it is decoded.
(The dtype of an input is enforced by TensorFlow before the graph runs, and TF Serving's REST API converts
JSON values to the signature's dtype or answers an error naming it.)
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

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_SEED", "Endpoints", "png_header_sizes"]

DEFAULT_SEED = 0  # the style seed of serving_default and serving_png
# 2048x2048 = 4,194,304 pixels: twice the paper's largest resolution (Cityscapes 1024x2048), so two such
# frames fit one request, while a 4096x4096 request (which aborted the process with std::bad_alloc) does not.
DEFAULT_MAX_PIXELS = 2048 * 2048
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEAD = 33  # signature 8 + IHDR length and type 8 + IHDR data 13 + CRC 4: the least a PNG can have


def _runtime_shape(x: tf.Tensor) -> tf.Tensor:
    """`x`'s shape as fed (int64). The signature's static rank would let TensorFlow fold a rank check to
    True at trace time (and Grappler at run time), while TF Serving feeds whatever rank a request has:
    PlaceholderWithDefault hides the static shape from both."""
    hidden = tf.raw_ops.PlaceholderWithDefault(input=x, shape=tf.TensorShape(None))
    return tf.shape(hidden, out_type=tf.int64)


def _check(condition: tf.Tensor, template: str, values: tuple = ()) -> tf.Operation:
    """An Assert whose message is `template` formatted with `values` ({} placeholders), so TF Serving's
    INVALID_ARGUMENT reads as one sentence."""
    message = tf.strings.format(template, values) if values else tf.constant(template)
    return tf.debugging.Assert(condition, [message])


def _first_true(mask: tf.Tensor) -> tf.Tensor:
    return tf.argmax(tf.cast(mask, tf.int32), output_type=tf.int64)


def _big_endian(raw: tf.Tensor) -> tf.Tensor:
    """uint8 [..., 4] -> int64 [...]: PNG stores width and height as big-endian 32-bit integers."""
    weights = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64)
    return tf.reduce_sum(tf.cast(raw, tf.int64) * weights, axis=-1)


def png_header_sizes(pngs: tf.Tensor, name: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(pngs, [N, 2] int64 height and width) after checking, without decoding, that `pngs` is a non-empty
    batch [N] of strings that each start with a PNG signature and IHDR header; sizes come from the header.

    Checking the length first matters: substr past the end of a short string fails with an opaque
    `pos 24 out of range`.
    """
    shape = _runtime_shape(pngs)
    rank_ok = _check(
        tf.equal(tf.size(shape), 1),
        f"{name} must be a 1-D batch [N] of PNG-encoded strings; got shape {{}}: wrap a single PNG in a list",
        (shape,),
    )
    with tf.control_dependencies([rank_ok]):
        non_empty = _check(shape[0] > 0, f"{name} is an empty batch: send at least one PNG")
    with tf.control_dependencies([non_empty]):
        lengths = tf.strings.length(pngs)
        short = lengths < _PNG_HEAD
        i = _first_true(short)
        long_enough = _check(
            tf.logical_not(tf.reduce_any(short)),
            f"{name}[{{}}] is not a PNG: {{}} bytes, less than the {_PNG_HEAD} of a PNG signature and header",
            (i, tf.gather(lengths, i)),
        )
    with tf.control_dependencies([long_enough]):
        head = tf.io.decode_raw(tf.strings.substr(pngs, 0, _PNG_HEAD), tf.uint8)  # [N, 33]
        expected = tf.constant(list(PNG_SIGNATURE) + [0, 0, 0, 13] + list(b"IHDR"), tf.uint8)
        wrong = tf.reduce_any(tf.not_equal(head[:, :16], expected), axis=1)
        signature_ok = _check(
            tf.logical_not(tf.reduce_any(wrong)),
            f"{name}[{{}}] is not a PNG: it does not start with the PNG signature and IHDR header "
            '(send PNG-encoded bytes, base64 in TF Serving\'s JSON as {{"b64": ...}})',
            (_first_true(wrong),),
        )
    with tf.control_dependencies([signature_ok]):
        sizes = tf.stack([_big_endian(head[:, 20:24]), _big_endian(head[:, 16:20])], axis=1)  # height, width
        return tf.identity(pngs), sizes


class Endpoints:
    """G's (and E's) graph pieces for one model: input specs, generation, sampling, encoding, PNG I/O and
    the SavedModel signatures built from them."""

    def __init__(
        self,
        opts: Options,
        generator: keras.Model,
        encoder: keras.Model | None,
        bank: ClusterBank | None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch_pixels: int | None = None,
    ):
        """
        Args:
            opts, generator, encoder, bank: the model, its networks and its cluster bank (or None).
            max_pixels: the most pixels (height x width) one image of a request may have.
            max_batch_pixels: the most pixels one request may hold in all (default `max_pixels`: a request
                never does more work than one largest image).
        """
        if max_pixels < 1 or (max_batch_pixels is not None and max_batch_pixels < 1):
            raise ValueError(f"max_pixels ({max_pixels}) and max_batch_pixels ({max_batch_pixels}) must be >= 1")
        if opts.label_feat and opts.label_nc == 0:
            raise ValueError("--label_feat pools features per label id, which a --label_nc 0 (RGB input) model lacks")
        self.opts = opts
        self.generator = generator
        self.encoder = encoder
        self.bank = bank
        self.max_pixels = int(max_pixels)
        self.max_batch_pixels = int(max_batch_pixels or max_pixels)
        self.use_instance = not opts.no_instance
        self.use_features = opts.use_features
        self.g_multiple = size_multiple(generator)
        self.e_multiple = size_multiple(encoder) if encoder is not None else 1
        self.label_name = "label" if opts.label_nc else "input_image"
        self.label_png_name = f"{self.label_name}_png_bytes"
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

    # Request checks ---------------------------------------------------------------------------------
    def _layout(self, name: str) -> tuple[str, int, int | None]:
        """(description, rank, channels or None) of a signature input."""
        if name == "input_image":
            return f"uint8 [N,H,W,{self.opts.input_nc}]", 4, self.opts.input_nc
        if name == "image":
            return f"uint8 [N,H,W,{self.opts.output_nc}]", 4, self.opts.output_nc
        if name == "features":
            return f"float32 [N,H,W,{self.opts.feat_num}]", 4, self.opts.feat_num
        if name == "seed":
            return "int32 [N] (one seed per example)", 1, None
        return "int32 [N,H,W] (a batch of id maps)", 3, None

    def check_request(self, **inputs: tf.Tensor) -> list[tf.Tensor]:
        """The inputs, in the order given, after checking in the graph (before any work) each one's rank
        and channels, a non-empty batch, the same batch size for all, and the pixel limits (on the first
        input with height and width; the others must match its size, see `inputs.check_same_size`)."""
        checks: list[tf.Operation] = []
        batch = None
        limited = False
        for name, x in inputs.items():
            layout, rank, channels = self._layout(name)
            shape = _runtime_shape(x)
            rank_ok = _check(
                tf.equal(tf.size(shape), rank),
                f"{name} must be {layout}; got shape {{}}" + (": add the batch axis" if rank > 1 else ""),
                (shape,),
            )
            with tf.control_dependencies(checks + [rank_ok]):
                checks.append(rank_ok)
                checks.append(_check(shape[0] > 0, f"{name} is an empty batch: send at least one example"))
                if channels is not None:
                    checks.append(
                        _check(tf.equal(shape[3], channels), f"{name} must be {layout}; got {{}} channels", (shape[3],))
                    )
                if batch is None:
                    batch, first = shape[0], name
                else:
                    checks.append(
                        _check(
                            tf.equal(shape[0], batch),
                            f"{name} has {{}} examples but {first} has {{}}: send one of each per example",
                            (shape[0], batch),
                        )
                    )
                if rank > 1 and not limited:
                    limited = True
                    n, h, w = (tf.cast(shape[i], tf.float64) for i in range(3))
                    checks.append(self._check_pixels(name, shape[0], shape[1:3], h * w, n * h * w))
        with tf.control_dependencies(checks):
            return [tf.identity(x) for x in inputs.values()]

    def _check_pixels(
        self, name: str, n: tf.Tensor, size: tf.Tensor, largest: tf.Tensor, total: tf.Tensor
    ) -> tf.Operation:
        """The two limits: `largest` pixels in one image <= max_pixels, `total` in the request <= max_batch_pixels.

        Pixel counts are float64: a PNG header may declare 2^32-1 x 2^32-1, whose product wraps int64 around
        to a negative number that would pass an integer comparison.
        """
        per_image = tf.debugging.Assert(
            largest <= self.max_pixels,
            [
                tf.strings.join(
                    [
                        tf.strings.format(f"{name}: an image of {{}} (height, width) is ", (size,)),
                        tf.strings.as_string(largest, precision=0),
                        f" pixels; this model accepts at most {self.max_pixels} pixels per image (set at export: "
                        "tools/export.py --max_pixels): send a smaller image, or re-export with a larger limit if "
                        "the server has the memory",
                    ]
                )
            ],
        )
        with tf.control_dependencies([per_image]):
            return tf.debugging.Assert(
                total <= self.max_batch_pixels,
                [
                    tf.strings.join(
                        [
                            tf.strings.format(f"{name}: the request holds {{}} images, ", (n,)),
                            tf.strings.as_string(total, precision=0),
                            f" pixels in all; this model accepts at most {self.max_batch_pixels} pixels per request "
                            "(tools/export.py --max_batch_pixels): split it into smaller requests",
                        ]
                    )
                ],
            )

    def check_png_request(self, name: str, pngs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(pngs, sizes [N, 2]) after `png_header_sizes` and the pixel limits, all before any decoding."""
        pngs, sizes = png_header_sizes(pngs, name)
        pixels = tf.cast(sizes[:, 0], tf.float64) * tf.cast(sizes[:, 1], tf.float64)
        check = self._check_pixels(
            name,
            tf.size(pixels, out_type=tf.int64),
            tf.gather(sizes, tf.argmax(pixels)),
            tf.reduce_max(pixels),
            tf.reduce_sum(pixels),
        )
        with tf.control_dependencies([check]):
            return tf.identity(pngs), tf.identity(sizes)

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
        """One image at a time (tf.map_fn), so a request, or a server-side batch, may mix image sizes.
        Every PNG's header is checked against the limits before any is decoded."""
        label_png, _ = self.check_png_request(self.label_png_name, label_png)
        if self.use_instance:
            instance_png, _ = self.check_png_request("instance_png_bytes", instance_png)
            n, n_instance = tf.size(label_png), tf.size(instance_png)
            same = _check(
                tf.equal(n, n_instance),
                f"{self.label_png_name} has {{}} PNGs but instance_png_bytes has {{}}: send one of each per example",
                (n, n_instance),
            )
            with tf.control_dependencies([same]):
                label_png, instance_png = tf.identity(label_png), tf.identity(instance_png)

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

        def checked(label, instance=None, **extra):
            named = {self.label_name: label, **({"instance": instance} if instance is not None else {}), **extra}
            return self.check_request(**named)

        if self.use_instance:

            def serving_default(label, instance):
                label, instance = checked(label, instance)
                return {"image": to_uint8(self.generate_sampled(label, instance, default_seed(label)))}

            def serving_png(label_png_bytes, instance_png_bytes):
                return {"image_png_bytes": self.png_endpoint(label_png_bytes, instance_png_bytes)}

            instance_png_spec = [tf.TensorSpec([None], tf.string, name="instance_png_bytes")]
        else:

            def serving_default(label):
                (label,) = checked(label)
                return {"image": to_uint8(self.generate_sampled(label, None, default_seed(label)))}

            def serving_png(label_png_bytes):
                return {"image_png_bytes": self.png_endpoint(label_png_bytes)}

            instance_png_spec = []
        sigs["serving_default"] = (serving_default, maps)
        label_png_spec = tf.TensorSpec([None], tf.string, name=self.label_png_name)
        sigs["serving_png"] = (serving_png, [label_png_spec] + instance_png_spec)

        if self.use_features:
            seed_spec = tf.TensorSpec([None], tf.int32, name="seed")
            if self.use_instance:

                def generate_with_seed(label, instance, seed):
                    label, instance, seed = checked(label, instance, seed=seed)
                    return {"image": to_uint8(self.generate_sampled(label, instance, seed))}

                def generate_with_features(label, instance, features):
                    label, instance, features = checked(label, instance, features=features)
                    return {"image": to_uint8(self.generate(label, instance, features))}

            else:

                def generate_with_seed(label, seed):
                    label, seed = checked(label, seed=seed)
                    return {"image": to_uint8(self.generate_sampled(label, None, seed))}

                def generate_with_features(label, features):
                    label, features = checked(label, features=features)
                    return {"image": to_uint8(self.generate(label, None, features))}

            sigs["generate_with_seed"] = (generate_with_seed, maps + [seed_spec])
            sigs["generate_with_features"] = (generate_with_features, maps + [self.features_spec()])

        if self.encoder is not None:
            image_spec = tf.TensorSpec([None, None, None, self.opts.output_nc], tf.uint8, name="image")
            if self.opts.label_feat:

                def encode(image, label):
                    image, label = self.check_request(image=image, label=label)
                    return {"features": self.encode(image, label)}

            else:

                def encode(image, instance):
                    image, instance = self.check_request(image=image, instance=instance)
                    return {"features": self.encode(image, instance)}

            sigs["encode"] = (encode, [image_spec, self.ids_spec(self.region_name)])
        return sigs
