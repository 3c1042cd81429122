"""`Pix2PixHD`: G, multi-scale D and (optionally) E trained together with a subclassed `train_step`.

The batch is a dict (the contract of `pix2pixhd_tf.data`): `label` int32 [N,H,W] (float [N,H,W,input_nc]
with label_nc 0), `instance` int32 [N,H,W] (unless no_instance), `image` float [N,H,W,output_nc] in
[-1, 1], and `feat` float [N,H,W,feat_num] with load_features.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from pix2pixhd_tf import networks
from pix2pixhd_tf.inputs import check_image_size, encode_input, generator_input, size_multiple
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.training import losses
from pix2pixhd_tf.training.averaging import WeightAverage
from pix2pixhd_tf.training.optimizers import FusedAdam

G_LOSSES = ("G_GAN", "G_GAN_Feat", "G_VGG")
D_LOSSES = ("D_real", "D_fake")


class ImagePool(keras.layers.Layer):
    """The history of generated images shown to D (Shrivastava et al.), `pool_size` images per replica.

    Each new fake either enters a free slot, or with probability 1/2 swaps with a stored one (which D
    sees instead). Randomness is stateless, keyed by the training step, so runs are reproducible.
    The buffer is replica-local (`on_read`): build it inside the strategy scope, never in `strategy.run`.
    """

    def __init__(self, pool_size: int, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size

    def build(self, image_shape):
        _, h, w, c = image_shape
        if h is None or w is None or c is None:
            raise ValueError("--pool_size > 0 needs a fixed training image size (use a crop or scale mode)")
        if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
            raise RuntimeError(
                "the image pool's buffer cannot be created inside strategy.run: build it in strategy.scope() "
                "first, with model(batch) or model.image_pool.build(image_shape) (fit() does this itself)"
            )
        # Layer.add_weight takes no `synchronization`; a Variable assigned to the layer is tracked alike.
        local = dict(trainable=False, synchronization="on_read", aggregation="only_first_replica")
        zeros = keras.initializers.Zeros()  # an initializer (not a value) also works in fit()'s symbolic build
        self.images = keras.Variable(zeros, (self.pool_size, h, w, c), self.variable_dtype, name="images", **local)
        self.count = keras.Variable(zeros, (), "int32", name="count", **local)
        self.built = True

    def call(self, fakes, step):
        """Returns what D sees for `fakes` [N,H,W,C] at training step `step`; N may be dynamic."""
        fakes = tf.cast(fakes, self.images.dtype)
        n = tf.shape(fakes)[0]
        step = tf.cast(step, tf.int32)

        def push(i, images, count, outputs):
            coin = tf.random.stateless_uniform([], seed=tf.stack([step, 2 * i]))
            slot = tf.random.stateless_uniform(
                [], seed=tf.stack([step, 2 * i + 1]), maxval=self.pool_size, dtype=tf.int32
            )
            fill = count < self.pool_size
            swap = tf.logical_and(tf.logical_not(fill), coin > 0.5)
            target = tf.where(fill, count, slot)
            stored = images[target]
            images = tf.tensor_scatter_nd_update(images, [[target]], tf.where(fill | swap, fakes[i], stored)[None])
            outputs = outputs.write(i, tf.where(swap, stored, fakes[i]))
            return i + 1, images, tf.minimum(count + 1, self.pool_size), outputs

        _, images, count, outputs = tf.while_loop(
            lambda i, *_: i < n,
            push,
            (
                tf.constant(0),
                tf.convert_to_tensor(self.images),
                tf.convert_to_tensor(self.count),
                tf.TensorArray(fakes.dtype, n),
            ),
        )
        self.images.assign(images)
        self.count.assign(count)
        return tf.ensure_shape(outputs.stack(), fakes.shape)


class Pix2PixHD(keras.Model):
    """The pix2pixHD conditional GAN. Compile with `compile(g_optimizer=..., d_optimizer=...)`."""

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        encoder: keras.Model | None = None,
        vgg: keras.Model | None = None,
        *,
        label_nc: int,
        input_nc: int = 3,
        use_instance: bool = True,
        feature_source: str = "none",
        label_feat: bool = False,
        gan_mode: str = "lsgan",
        lambda_feat: float = 10.0,
        use_gan_feat_loss: bool = True,
        pool_size: int = 0,
        lambda_L1: float = 0.0,
        average: WeightAverage | None = None,
        **kwargs,
    ):
        """
        Args:
            generator, discriminator, encoder: the networks (see `pix2pixhd_tf.networks`).
            vgg: VGG19 feature model for the perceptual loss; None turns the loss off.
            feature_source: 'none', 'encoder' (E on the real image, trained through G's loss) or
                'loaded' (precomputed maps in batch['feat']).
            label_feat: pool E's features per label instead of per instance.
            lambda_L1: weight of pix2pix's L1 reconstruction term (not part of pix2pixHD; 0 = off).
            average: the moving average of G's (and E's) weights, updated after every G step; None = off.
        """
        super().__init__(**kwargs)
        if feature_source not in ("none", "encoder", "loaded"):
            raise ValueError(f"feature_source must be none, encoder or loaded, got {feature_source!r}")
        if feature_source == "encoder" and encoder is None:
            raise ValueError("feature_source='encoder' needs an encoder network")
        if gan_mode not in losses.GAN_MODES:
            raise ValueError(f"gan_mode must be one of {losses.GAN_MODES}, got {gan_mode!r}")
        self.generator = generator
        self.discriminator = discriminator
        self.encoder = encoder
        self.vgg_loss = losses.VGGLoss(vgg, lambda_feat) if vgg is not None else None
        self.vgg = vgg
        self.label_nc = label_nc
        self.input_nc = input_nc
        self.use_instance = use_instance
        self.feature_source = feature_source
        self.label_feat = label_feat
        self.gan_mode = gan_mode
        self.lambda_feat = lambda_feat
        self.use_gan_feat_loss = use_gan_feat_loss
        self.n_layers_D = discriminator.n_layers_D
        self.image_pool = ImagePool(pool_size, name="image_pool") if pool_size > 0 else None
        self.update_global = True
        self.lambda_L1 = lambda_L1
        self.average = average
        names = G_LOSSES + (("G_L1",) if lambda_L1 else ()) + D_LOSSES
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True

    @classmethod
    def from_options(cls, opts: Options, vgg: keras.Model | None = None) -> Pix2PixHD:
        """Build every network from `opts`. Pass `vgg` to reuse one (None builds it unless no_vgg_loss)."""
        if vgg is None and not opts.no_vgg_loss:
            vgg = losses.build_vgg19_features(opts.vgg_weights)
        feature_source = "none"
        if opts.use_features:
            feature_source = "loaded" if opts.load_features else "encoder"
        # G, D, E in this order: the seeded initial weights stay those of earlier versions.
        generator, discriminator, encoder = (
            networks.build_generator(opts),
            networks.build_discriminator(opts),
            networks.build_encoder(opts),
        )
        average = None
        if opts.ema_decay:
            average = WeightAverage(networks.build_generator(opts), networks.build_encoder(opts), opts.ema_decay)
            average.reset(generator, encoder)
        return cls(
            generator,
            discriminator,
            encoder,
            None if opts.no_vgg_loss else vgg,
            label_nc=opts.label_nc,
            input_nc=opts.input_nc,
            use_instance=not opts.no_instance,
            feature_source=feature_source,
            label_feat=opts.label_feat,
            gan_mode=opts.resolved_gan_mode,
            lambda_feat=opts.lambda_feat,
            use_gan_feat_loss=not opts.no_ganFeat_loss,
            pool_size=opts.pool_size,
            lambda_L1=opts.lambda_L1,
            average=average,
            name="pix2pixhd",
        )

    # ---------------------------------------------------------------- optimisation setup
    def compile(self, g_optimizer: keras.optimizers.Optimizer, d_optimizer: keras.optimizers.Optimizer, **kwargs):
        """Store both optimizers and build them now: under a strategy they must exist inside its scope."""
        # No Keras `optimizer`: the default ("rmsprop") would be built by fit() over every weight of G, D and E.
        super().compile(optimizer=None, **kwargs)
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            # compile(auto_scale_loss=True) would only wrap self.optimizer, which this model does not use.
            g_optimizer = _loss_scaled(g_optimizer)
            d_optimizer = _loss_scaled(d_optimizer)
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.g_optimizer.build(self.all_generator_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)

    @property
    def all_generator_variables(self) -> list:
        """G's and E's variables: E learns through G's loss and shares its optimizer."""
        variables = list(self.generator.trainable_variables)
        if self.encoder is not None:
            variables += self.encoder.trainable_variables
        return variables

    @property
    def generator_variables(self) -> list:
        """The variables G's optimizer updates now: without the global G1 while it is held fixed."""
        variables = self.all_generator_variables
        if self.update_global:
            return variables
        frozen = {id(v) for v in self.generator.global_variables()}
        return [v for v in variables if id(v) not in frozen]

    def set_update_global(self, update: bool) -> None:
        """Train the embedded G1 or hold it fixed (the first niter_fix_global epochs of a local G).

        An explicit variable list, not `trainable`, decides this, so a traced step can never freeze
        the wrong layers; the cached train function is dropped so the next step retraces.
        """
        if not update and not hasattr(self.generator, "global_variables"):
            raise ValueError("only a local generator (--netG local) has a global part to hold fixed")
        if update != self.update_global:
            if update:
                # The official update_fixed_params starts a new Adam for all of G (and E). Keras' Adam
                # corrects its bias with one step count for all variables, so keeping it would give the
                # never-updated G1 weights a first step of up to 1/sqrt(1 - beta_2) ≈ 16 times the LR.
                _reset_optimizer_state(self.g_optimizer)
            self.update_global = update
            self.train_function = None

    @property
    def metrics(self):
        return list(self.trackers.values())

    # ---------------------------------------------------------------- forward passes
    def input_map(self, data: dict) -> tf.Tensor:
        """[one-hot labels | instance boundaries] (or the RGB input with label_nc 0)."""
        instance = data["instance"] if self.use_instance else None
        return encode_input(data["label"], instance, label_nc=self.label_nc, input_nc=self.input_nc)

    def feature_map(self, data: dict, training: bool = False, averaged: bool = False) -> tf.Tensor | None:
        """Per-instance features for G: E (or the averaged E) on the real image, or precomputed maps."""
        if self.feature_source == "loaded":
            return tf.cast(data["feat"], tf.float32)
        if self.feature_source == "encoder":
            regions = data["label"] if self.label_feat else data["instance"]
            encoder = self.average.encoder if averaged else self.encoder
            return encoder([data["image"], tf.cast(regions, tf.int32)], training=training)
        return None

    def generate(
        self,
        data: dict,
        features: tf.Tensor | None = None,
        training: bool = False,
        input_map: tf.Tensor | None = None,
        averaged: bool = False,
    ) -> tf.Tensor:
        """G(x): the synthesised image in [-1, 1]. `features` overrides E's (style control at test time);
        `averaged` runs the moving average of G (and E) instead of the trained weights."""
        if averaged and self.average is None:
            raise ValueError("this model keeps no average of G's weights: train it with --ema_decay > 0")
        if input_map is None:
            input_map = self.input_map(data)
        multiple = size_multiple(self.generator)
        if features is None and self.feature_source == "encoder":  # E round-trips the image too
            multiple = max(multiple, size_multiple(self.encoder))
            input_map = check_image_size(input_map, multiple)  # before E sees the image
        if features is None and self.feature_source != "none":
            features = self.feature_map(data, training, averaged)
        # G's Input layer checks the feature width: E's output or the loaded maps, whatever the data hold.
        feat_num = 0 if features is None else features.shape[-1]
        g_input = generator_input(input_map, features, feat_num=feat_num, size_multiple=multiple)
        generator = self.average.generator if averaged else self.generator
        return generator(g_input, training=training)

    def call(self, data, training=False):
        """G(x). Like any Keras model, calling it on a batch builds its state (the image pool's buffer): fit()
        does so inside the strategy scope, as replica-local variables cannot be created in `strategy.run`."""
        if self.image_pool is not None and not self.image_pool.built:
            self.image_pool.build(data["image"].shape)
        return self.generate(data, training=training)

    def discriminate(self, input_map: tf.Tensor, image: tf.Tensor, training: bool = False):
        return self.discriminator([input_map, tf.cast(image, input_map.dtype)], training=training)

    # ---------------------------------------------------------------- the objective
    def compute_losses(self, data: dict, training: bool = False, d_tape: tf.GradientTape | None = None):
        """One forward of the official objective. Returns (per-sample G losses, per-sample D losses, fake).

        D_fake sees the fake detached (through the image pool when there is one); D_real's predictions
        also serve as the fixed targets of feature matching, as in the official code.

        `d_tape`, the tape of D's gradient (train_step's), does not record G. Without an image pool D then
        judges the fake once for both losses: the official code runs D twice on the same values (once on the
        detached fake), which costs a third more of D's forward and keeps a third more of its activations
        through the backward pass. The values and both gradients are the same.
        """
        input_map = self.input_map(data)
        real = data["image"]
        with d_tape.stop_recording() if d_tape is not None else contextlib.nullcontext():
            fake = self.generate(data, training=training, input_map=input_map)

        pooled = self.image_pool is not None and training
        pred_fake = self.discriminate(input_map, fake, training)
        pred_real = self.discriminate(input_map, real, training)
        if d_tape is not None and not pooled:
            pred_fake_pool = pred_fake  # d_tape sees `fake` as a constant: the detached fake
        else:
            fake_for_d = tf.stop_gradient(fake)
            if pooled:
                fake_for_d = self.image_pool(fake_for_d, self._step())
            pred_fake_pool = self.discriminate(input_map, fake_for_d, training)

        d_losses = {
            "D_real": losses.gan_loss(pred_real, True, self.gan_mode),
            "D_fake": losses.gan_loss(pred_fake_pool, False, self.gan_mode),
        }
        zeros = tf.zeros_like(d_losses["D_real"])
        g_losses = {
            "G_GAN": losses.gan_loss(pred_fake, True, self.gan_mode, for_discriminator=False),
            "G_GAN_Feat": (
                losses.feature_matching_loss(pred_fake, pred_real, self.n_layers_D, self.lambda_feat)
                if self.use_gan_feat_loss
                else zeros
            ),
            "G_VGG": self.vgg_loss(fake, real) if self.vgg_loss is not None else zeros,
        }
        if self.lambda_L1:
            g_losses["G_L1"] = self.lambda_L1 * losses.l1_loss(fake, real)
        return g_losses, d_losses, fake

    def _step(self) -> tf.Tensor:
        return self.d_optimizer.iterations  # G's restarts when the global G1 is unfrozen

    def _update_trackers(self, named_losses: dict) -> dict:
        for name, per_sample in named_losses.items():
            self.trackers[name].update_state(tf.reduce_mean(per_sample))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    # ---------------------------------------------------------------- Keras steps
    def train_step(self, data):
        """G and D update from one forward, as the official trainer: G first, then D on the detached fake."""
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            g_losses, d_losses, fake = self.compute_losses(data, training=True, d_tape=d_tape)
            # Average over the global batch: replicas' gradients are summed by the optimizer.
            g_loss = tf.nn.compute_average_loss(tf.add_n(list(g_losses.values())))
            d_loss = tf.nn.compute_average_loss(0.5 * (d_losses["D_real"] + d_losses["D_fake"]))
            g_loss_scaled = self.g_optimizer.scale_loss(g_loss)
            d_loss_scaled = self.d_optimizer.scale_loss(d_loss)
        g_vars = self.generator_variables
        d_vars = self.discriminator.trainable_variables
        *g_grads, d_fake = g_tape.gradient(g_loss_scaled, g_vars + [fake])
        d_grads = d_tape.gradient(d_loss_scaled, d_vars)
        self.g_optimizer.apply_gradients(zip(g_grads, g_vars))
        if self.average is not None:
            self.average.update(self.generator, self.encoder)
        # G's backward pass through D is the last to read D's kernels: D's update waits for it (d_fake), so
        # it finds them unshared and updates them in place (see fast_ops._after_input_grad).
        with tf.control_dependencies([d_fake]):
            self.d_optimizer.apply_gradients(zip(d_grads, d_vars))
        return self._update_trackers({**g_losses, **d_losses})

    def test_step(self, data):
        g_losses, d_losses, _ = self.compute_losses(data, training=False)
        return self._update_trackers({**g_losses, **d_losses})

    def predict_step(self, data):
        return self.generate(data)


def _reset_optimizer_state(optimizer: keras.optimizers.Optimizer) -> None:
    """Zero the step count and every slot (moments) of `optimizer`, keeping its learning rate and, for a
    LossScaleOptimizer, its loss scale: the state of a newly created optimizer."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    keep = {id(inner.learning_rate)}
    for variable in inner.variables:
        if id(variable) not in keep:
            variable.assign(tf.zeros(variable.shape, variable.dtype))


def _loss_scaled(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


def make_optimizers(opts: Options, lr: float | None = None) -> tuple[keras.optimizers.Optimizer, ...]:
    """Adam(lr, beta1, 0.999, eps 1e-8) for G(+E) and for D, as the official (PyTorch-default) code, with the
    fused update kernel. The LR is a variable the trainer sets per epoch (constant for niter epochs, then
    linear decay)."""
    lr = opts.lr if lr is None else lr
    return tuple(FusedAdam(lr, beta_1=opts.beta1, beta_2=0.999, epsilon=1e-8, name=n) for n in ("g_adam", "d_adam"))
