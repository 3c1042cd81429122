"""Every setting of pix2pixHD, with the official flag names, meanings and defaults.

`Options` is the single source of truth: `pix2pixhd_tf.flags` turns its fields into absl flags, so a
user of NVIDIA's PyTorch code finds the same `--netG local --ngf 32 --label_nc 35` here. Fields that the
official code lacks (strategy, bf16, xla, gan_mode, ...) are marked "new" in their help text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Options:
    # Experiment.
    name: str = _opt("label2city", "Experiment name; checkpoints go to checkpoints_dir/name.")
    checkpoints_dir: str = _opt("./checkpoints", "Where models are saved.")
    gpu_ids: str = _opt("", "Comma-separated GPU ids to use ('' = all visible, '-1' = CPU).")
    seed: int = _opt(0, "new: random seed for weights, data order, crops and flips.")

    # Data.
    dataroot: str = _opt(
        "./datasets/cityscapes/",
        "Dataset root ('' with --synthetic builds one) on any tf.io.gfile filesystem (gs://, s3:// ...), or "
        "TFRecord shards from tools/make_tfrecords.py (a glob like /data/train-*.tfrecord, or their folder).",
    )
    phase: str = _opt("train", "train, val or test: the folder prefix {phase}_label etc.")
    label_nc: int = _opt(35, "Number of label classes; 0 uses RGB input from {phase}_A / {phase}_B.")
    input_nc: int = _opt(3, "Channels of the input image when label_nc is 0.")
    output_nc: int = _opt(3, "Channels of the output image.")
    batchSize: int = _opt(1, "Global batch size (split across replicas).")
    loadSize: int = _opt(1024, "Scale images to this size (width for scale_width modes).")
    fineSize: int = _opt(512, "Then crop to this size.")
    resize_or_crop: str = _opt(
        "scale_width",
        "Scaling and cropping of images at load time.",
        ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"),
    )
    no_flip: bool = _opt(False, "Do not flip the images for data augmentation.")
    serial_batches: bool = _opt(False, "Take images in order; otherwise shuffle.")
    max_dataset_size: int = _opt(2**31 - 1, "Use at most this many samples.")
    nThreads: int = _opt(2, "Threads for loading data (tf.data parallel calls).")
    synthetic: bool = _opt(False, "new: build the synthetic street-scene dataset under dataroot if missing.")
    synthetic_size: int = _opt(200, "new: number of synthetic training scenes.")
    check_data: bool = _opt(
        False,
        "new: before training, decode every file of the dataset (one pass, in parallel threads) to report any "
        "corrupt file or label id >= label_nc up front; otherwise only headers are checked and such a file "
        "stops training when it is reached (after saving a checkpoint).",
    )

    # Generator.
    netG: str = _opt("global", "Generator: global (G1) or local (G1 + local enhancers).", ("global", "local"))
    ngf: int = _opt(64, "Filters in the first generator conv layer.")
    n_downsample_global: int = _opt(4, "Downsampling layers in the global generator.")
    n_blocks_global: int = _opt(9, "Residual blocks in the global generator.")
    n_local_enhancers: int = _opt(1, "Number of local enhancers.")
    n_blocks_local: int = _opt(3, "Residual blocks in each local enhancer.")
    niter_fix_global: int = _opt(0, "Train only the local enhancers for this many epochs first.")

    # Instances and features.
    no_instance: bool = _opt(False, "Do not add the instance boundary map as input.")
    instance_feat: bool = _opt(False, "Add encoded instance features as input.")
    label_feat: bool = _opt(False, "Add encoded label features as input.")
    feat_num: int = _opt(3, "Channels of the encoded features.")
    load_features: bool = _opt(False, "Load precomputed feature maps from {phase}_feat.")
    n_downsample_E: int = _opt(4, "Downsampling layers in the encoder.")
    nef: int = _opt(16, "Filters in the first encoder conv layer.")
    n_clusters: int = _opt(10, "Clusters per class for the features.")

    # Discriminator and losses.
    num_D: int = _opt(2, "Discriminator scales (the paper uses 3).")
    n_layers_D: int = _opt(3, "Layers of each discriminator.")
    ndf: int = _opt(64, "Filters in the first discriminator conv layer.")
    lambda_feat: float = _opt(10.0, "Weight of the feature matching and VGG losses.")
    no_ganFeat_loss: bool = _opt(False, "Do not use discriminator feature matching loss.")
    no_vgg_loss: bool = _opt(False, "Do not use the VGG19 perceptual loss.")
    no_lsgan: bool = _opt(False, "Use the BCE GAN loss instead of least squares (same as --gan_mode=vanilla).")
    gan_mode: str = _opt("", "new: lsgan, vanilla or hinge; '' follows no_lsgan.", ("", "lsgan", "vanilla", "hinge"))
    lambda_L1: float = _opt(
        0.0, "new: weight of pix2pix's L1 reconstruction loss; not in pix2pixHD (0 = off), see configs/local.cfg."
    )
    pool_size: int = _opt(0, "Size of the buffer of generated images shown to D (0 = no pool).")
    vgg_weights: str = _opt(
        "imagenet", "new: VGG19 weights: 'imagenet' (Keras download or cache) or a local .h5/.weights.h5 path."
    )

    # Optimisation and schedule.
    niter: int = _opt(100, "Epochs at the starting learning rate.")
    niter_decay: int = _opt(100, "Epochs to linearly decay the learning rate to zero.")
    lr: float = _opt(0.0002, "Initial Adam learning rate.")
    beta1: float = _opt(0.5, "Adam beta1.")
    steps_per_epoch: int = _opt(0, "new: cap on steps per epoch (0 = the whole dataset).")
    ema_decay: float = _opt(
        0.0,
        "new: keep an exponential moving average of G's (and E's) weights with this decay, e.g. 0.999 (0 = off, "
        "the official behaviour). Its decay ramps in as min(decay, n / (n + 10)) after n updates, so early "
        "checkpoints are usable; test, export, encode_features and the editor use it when a checkpoint has it.",
    )
    raw_weights: bool = _opt(
        False, "new: use G's (and E's) raw trained weights, not their moving average, where a checkpoint has both."
    )
    recompute: str = _opt(
        "none",
        "new: trade compute for memory by recomputing activations in the backward pass: none, blocks (G's "
        "residual blocks) or all (also the whole of G and each scale of D); same results, see README 'Memory'.",
        ("none", "blocks", "all"),
    )

    # Checkpoints and resuming.
    continue_train: bool = _opt(False, "Continue training from the latest checkpoint of this experiment.")
    overwrite_experiment: bool = _opt(
        False,
        "new: start training afresh although checkpoints_dir/name already holds an experiment, which is first "
        "moved aside to checkpoints_dir/name.replaced-<date>-<time> (nothing is deleted). Without it, training "
        "refuses to start over an existing experiment: resume it with --continue_train, or pick another --name.",
    )
    load_pretrain: str = _opt("", "Load a pretrained (e.g. global) model from this experiment directory.")
    which_epoch: str = _opt("latest", "Which checkpoint to load: 'latest' or an epoch number.")

    # Logging.
    print_freq: int = _opt(100, "Steps between loss printouts.")
    display_freq: int = _opt(100, "Steps between image summaries.")
    save_latest_freq: int = _opt(1000, "Steps between saves of the latest checkpoint.")
    save_epoch_freq: int = _opt(10, "Epochs between numbered checkpoints.")

    # Precision, compilation, distribution.
    fp16: bool = _opt(False, "Mixed precision training with float16 and loss scaling.")
    bf16: bool = _opt(False, "new: mixed precision training with bfloat16.")
    xla: bool = _opt(False, "new: compile the train step with XLA (jit_compile=True).")
    strategy: str = _opt(
        "default",
        "new: tf.distribute strategy: default (one device), mirrored (local GPUs), multi_worker (TF_CONFIG).",
        ("default", "mirrored", "multi_worker"),
    )

    # Inference.
    results_dir: str = _opt("./results/", "Where test results go.")
    how_many: int = _opt(50, "How many test images to run.")
    cluster_path: str = _opt("features_clustered_010.npy", "Cluster bank file for feature sampling.")
    allow_pickle: bool = _opt(
        False,
        "new: allow reading the official pickled features_clustered_*.npy (--cluster_path, --clusters_file). "
        "Unpickling runs any code the file holds: pass it only for files you trust, or convert the file once "
        "with tools/convert_checkpoint.py --clusters_file=... --allow_pickle into a pickle-free clusters.npz.",
    )
    use_encoded_image: bool = _opt(False, "Encode the real image to get the feature map.")

    def __post_init__(self) -> None:
        self.validate()

    # Derived settings: kept as properties so they can never disagree with the fields.
    @property
    def resolved_gan_mode(self) -> str:
        return self.gan_mode or ("vanilla" if self.no_lsgan else "lsgan")

    @property
    def use_features(self) -> bool:
        return self.instance_feat or self.label_feat

    @property
    def use_encoder(self) -> bool:
        return self.use_features and not self.load_features

    @property
    def generator_input_nc(self) -> int:
        nc = self.label_nc if self.label_nc else self.input_nc
        if not self.no_instance:
            nc += 1
        if self.use_features:
            nc += self.feat_num
        return nc

    @property
    def discriminator_input_nc(self) -> int:
        nc = self.label_nc if self.label_nc else self.input_nc
        if not self.no_instance:
            nc += 1
        return nc + self.output_nc

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this for the generator's down/up sampling to round-trip."""
        n = self.n_downsample_global + (self.n_local_enhancers if self.netG == "local" else 0)
        if self.use_encoder:
            n = max(n, self.n_downsample_E)
        return 2**n

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"--{f.name}={value!r} is not one of {', '.join(map(repr, choices))}.")
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 are exclusive: pick one mixed precision policy.")
        if self.label_nc < 0:
            raise ValueError(f"--label_nc={self.label_nc} must be >= 0 (0 means RGB input).")
        if self.instance_feat and self.no_instance:
            raise ValueError(
                "--instance_feat pools features per instance and so needs instance maps: drop --no_instance."
            )
        if self.gan_mode and self.no_lsgan and self.gan_mode != "vanilla":
            raise ValueError(f"--no_lsgan contradicts --gan_mode={self.gan_mode}: use one of them.")

    def replace(self, **changes: Any) -> "Options":
        return dataclasses.replace(self, **changes)
