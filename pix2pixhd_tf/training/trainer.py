"""The training loop: one custom loop over `strategy.run(model.train_step)` for every strategy.

Keras 3.15's `fit()` fails under MultiWorkerMirroredStrategy (keras#20585), so the loop is ours. It follows
the official train.py: epochs counted from 1, LR constant for niter epochs then linear to zero over
niter_decay, the global G held fixed for the first niter_fix_global epochs of a local G. Every epoch's
data order and crops come from (seed, epoch), so a run resumed mid-epoch sees exactly the batches the
uninterrupted run would have seen.

Nothing is lost: `train` refuses to start over an existing experiment (`check_experiment_dir`), and a file
the input pipeline cannot read ends training only after the steps done are saved, with a message naming
the file (found by decoding the samples the pipeline was reading) and how to resume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from absl import logging as absl_logging

from pix2pixhd_tf import visualize
from pix2pixhd_tf.data.classes import SYNTHETIC, ClassTable
from pix2pixhd_tf.data.dataset import (
    build_dataset,
    find_unreadable_file,
    list_dataset_files,
    op_error_text,
    sample_order,
)
from pix2pixhd_tf.data.files import DatasetError, DatasetFiles, DatasetLayout
from pix2pixhd_tf.data.synthetic import ensure_synthetic_dataset
from pix2pixhd_tf.experiment import check_experiment_options
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.training import checkpoint as ckpt
from pix2pixhd_tf.training import distribute
from pix2pixhd_tf.training.model import Pix2PixHD, make_optimizers


def learning_rate(opts: Options, epoch: int) -> float:
    """LR during `epoch` (1-based): lr for epochs 1..niter+1, then lr/niter_decay less per epoch (official)."""
    decayed_epochs = max(0, epoch - 1 - opts.niter)
    return max(0.0, opts.lr * (1.0 - decayed_epochs / max(1, opts.niter_decay)))


def total_epochs(opts: Options) -> int:
    return opts.niter + opts.niter_decay


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of `epoch` (order, crops, flips): its own every epoch, the same on a resumed run."""
    return seed * 100003 + epoch


def set_precision_policy(opts: Options) -> None:
    policy = "mixed_float16" if opts.fp16 else "mixed_bfloat16" if opts.bf16 else "float32"
    keras.mixed_precision.set_global_policy(policy)


def prepare_data(opts: Options) -> None:
    """Write the built-in synthetic dataset when asked (--synthetic); the Trainer checks the files up front."""
    if opts.synthetic:
        if opts.label_nc != SYNTHETIC.label_nc:
            raise ValueError(
                f"the synthetic dataset has {SYNTHETIC.label_nc} classes: set --label_nc={SYNTHETIC.label_nc}"
            )
        ensure_synthetic_dataset(
            opts.dataroot,
            n_train=opts.synthetic_size,
            n_test=max(8, opts.synthetic_size // 10),
            height=opts.loadSize // 2,
            width=opts.loadSize,
            seed=opts.seed,
        )


def check_experiment_dir(opts: Options, command: str | None = None) -> None:
    """Never let a new run overwrite an experiment: call before building anything.

    Without --continue_train, an experiment directory that already holds a checkpoint is refused (its first
    save would replace the old run's `latest`), unless --overwrite_experiment asks to move it aside first.
    With --continue_train, the architecture flags are checked against the experiment's options.json, so a
    wrong --ngf is named as such rather than as a shape error deep in the checkpoint.

    Args:
      opts: the training options.
      command: the command line that was run (for the two commands the refusal suggests); default generic.

    Raises:
      FileExistsError: the experiment exists and neither --continue_train nor --overwrite_experiment is given.
      FileNotFoundError: --continue_train without a checkpoint to continue from.
      ValueError: --continue_train with flags that differ from the trained ones, or with --overwrite_experiment.
    """
    directory = ckpt.experiment_dir(opts)
    existing = ckpt.available_checkpoints(directory)
    if opts.continue_train:
        if opts.overwrite_experiment:
            raise ValueError("--continue_train and --overwrite_experiment contradict each other: pass one of them")
        which = ckpt.checkpoint_dir(directory, opts.which_epoch)
        if ckpt.find(which) is None:
            raise FileNotFoundError(
                f"--continue_train: no checkpoint {which} (available: {', '.join(existing) or 'none'}); check "
                "--checkpoints_dir, --name and --which_epoch, or drop --continue_train to start a new experiment"
            )
        check_experiment_options(opts)
        return
    if not existing:
        return
    if opts.overwrite_experiment:
        aside = f"{directory.rstrip(os.sep)}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            os.replace(directory, aside)
        except FileNotFoundError:  # another worker of the same run moved it first
            return
        print(f"--overwrite_experiment: moved the earlier experiment to {aside}")
        return
    command = command or "python tools/train.py <the same flags>"
    raise FileExistsError(
        f"{directory} already holds an experiment ({_describe_experiment(directory, existing)}); a new run would "
        f"overwrite it, so nothing was started. To continue it: {command} --continue_train . To start afresh: "
        f"pass another --name, or {command} --overwrite_experiment (moves the old one to "
        f"{os.path.basename(directory.rstrip(os.sep))}.replaced-<date>-<time> beside it)"
    )


def _describe_experiment(directory: str, existing: list[str]) -> str:
    """'checkpoints latest, epoch_20; 1165 steps trained' (the step count when the checkpoint says it)."""
    text = f"checkpoints {', '.join(existing)}"
    path = ckpt.find(ckpt.checkpoint_dir(directory, ckpt.LATEST))
    try:
        steps = tf.train.load_checkpoint(path).get_tensor("position/global_step/.ATTRIBUTES/VARIABLE_VALUE")
        return f"{text}; {int(steps)} steps trained"
    except Exception:  # noqa: BLE001 - only decoration: a converted or damaged checkpoint lacks the count
        return text


@contextlib.contextmanager
def _quiet_tf_info():
    """Hold back TensorFlow's INFO log lines (e.g. the checkpoint writer's "Sharding callback duration")
    that would otherwise be glued onto the progress bar at every save."""
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(min(verbosity, absl_logging.WARNING))
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)


class _StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step, so a checkpoint can be written.

    Under MultiWorkerMirroredStrategy the flags of all workers are combined after every step
    (`distribute.StopAgreement`): a signal to any one worker stops all of them after the same global step.
    """

    def __init__(self):
        self.signal: int | None = None

    def agreed(self, agreement: distribute.StopAgreement, step: int) -> bool:
        """Whether to stop after `step`: this process was signalled or, multi-worker, any worker was.
        Collective under MultiWorkerMirroredStrategy: every worker calls it after every step."""
        stopping = agreement(self.signal is not None)
        if stopping and self.signal is None:
            print(f"\nAnother worker was asked to stop: saving a checkpoint after step {step} with it.", flush=True)
        return stopping

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.signal is not None:  # a second signal stops at once
                raise KeyboardInterrupt
            self.signal = signum
            print(f"\nSignal {signum} received: saving a checkpoint after this step (send it again to abort).")

        try:
            for s in previous:
                signal.signal(s, handler)
        except ValueError:  # not in the main thread (e.g. inside a test runner's worker thread)
            yield self
            return
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


@dataclass
class TrainResult:
    model: Pix2PixHD
    epoch: int
    global_step: int
    interrupted: bool
    losses: dict[str, float]
    checkpoint_dir: str


def finish_message(opts: Options, result: TrainResult) -> str:
    """What the run did, and the step a feature model needs before tools/test.py can sample styles."""
    state = "interrupted" if result.interrupted else "finished"
    message = f"Training {state} after {result.global_step} steps; checkpoints in {result.checkpoint_dir}."
    if opts.use_encoder and not result.interrupted:
        message += (
            "\nNext, with the same flags: tools/encode_features.py (the cluster bank tools/test.py samples from)."
        )
    return message


class Trainer:
    """Owns the strategy, the model, its checkpoint and the logs of one experiment."""

    def __init__(
        self,
        opts: Options,
        strategy: tf.distribute.Strategy | None = None,
        vgg: keras.Model | None = None,
        optimizers: Callable[[Options], tuple] = make_optimizers,
        files: DatasetFiles | None = None,
    ):
        """`optimizers(opts)` makes G's and D's optimizers (inside the strategy scope); Adam by default.
        `files`: the dataset's files, already listed (and checked); listed on first use otherwise."""
        self.opts = opts
        set_precision_policy(opts)
        self.strategy = strategy or distribute.make_strategy(opts)
        self.is_chief = distribute.is_chief(self.strategy)
        self.dir = ckpt.experiment_dir(opts)
        self.write_dir = distribute.worker_scratch_dir(self.dir, self.strategy)
        keras.utils.set_random_seed(opts.seed)
        with self.strategy.scope():
            self.model = Pix2PixHD.from_options(opts, vgg=vgg)
            self.model.compile(*optimizers(opts))
        self.position = ckpt.TrainingPosition()  # host-side counters: plain, not mirrored, variables
        self.checkpoint = ckpt.make_checkpoint(
            self.model.generator,
            self.model.discriminator,
            self.model.encoder,
            self.model.g_optimizer,
            self.model.d_optimizer,
            self.position,
            average=self.model.average,
        )
        self._step_fn = None
        self._files = files

    # ------------------------------------------------------------------ state
    def restore_or_initialise(self) -> None:
        opts = self.opts
        if opts.continue_train:
            directory = ckpt.checkpoint_dir(self.dir, opts.which_epoch)
            average = self.model.average
            if average is None or ckpt.holds_average(directory):
                path = ckpt.restore(self.checkpoint, directory)
            else:  # trained without --ema_decay so far: the average starts here, from the restored G
                path = ckpt.restore(self._checkpoint_without_average(), directory)
                average.reset(self.model.generator, self.model.encoder)
                print(f"{path} holds no average of G's weights: averaging (--ema_decay {opts.ema_decay}) starts now")
            epoch, step = int(self.position.epoch), int(self.position.step_in_epoch)
            print(f"Resuming from {path} at epoch {epoch}, step {step}")
            if opts.netG == "local" and (epoch, step) <= (opts.niter_fix_global + 1, 0) and opts.niter_fix_global:
                # Saved while G1 was still held fixed: unfreezing (and its optimizer reset) is still ahead.
                self.model.set_update_global(False)
        elif opts.load_pretrain:
            ckpt.load_pretrained_global(self.model.generator, opts)
            if self.model.average is not None:
                self.model.average.reset(self.model.generator, self.model.encoder)
            print(f"Loaded the pretrained global generator from {opts.load_pretrain}")

    def _checkpoint_without_average(self) -> tf.train.Checkpoint:
        model = self.model
        return ckpt.make_checkpoint(
            model.generator, model.discriminator, model.encoder, model.g_optimizer, model.d_optimizer, self.position
        )

    def save(self, which: str = ckpt.LATEST) -> None:
        """Every worker takes part (variables are read collectively); only the chief's copy is kept."""
        directory = ckpt.checkpoint_dir(self.write_dir, which)
        with _quiet_tf_info():
            ckpt.save(self.checkpoint, directory)
        if not self.is_chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)

    # ------------------------------------------------------------------ data
    @property
    def files(self):
        """The dataset's files, listed and checked once (missing, unpaired or corrupt files fail here)."""
        if self._files is None:
            self._files = list_data(self.opts)
        return self._files

    def epoch_dataset(self, epoch: int, skip: int):
        """The distributed batches of `epoch`, seeded by (seed, epoch), with the first `skip` steps dropped."""
        opts, seed = self.opts, epoch_seed(self.opts.seed, epoch)

        def dataset_fn(input_context):
            ds = build_dataset(opts, seed=seed, training=True, input_context=input_context, files=self.files)
            if opts.steps_per_epoch:
                ds = ds.take(opts.steps_per_epoch)
            return ds.skip(skip)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def steps_per_epoch(self) -> int:
        steps = len(self.files) // self.opts.batchSize
        if steps == 0:
            raise ValueError(
                f"--batchSize={self.opts.batchSize} is larger than the dataset ({len(self.files)} samples)"
            )
        return min(steps, self.opts.steps_per_epoch) if self.opts.steps_per_epoch else steps

    def _data_error(self, err: BaseException, epoch: int, saved: bool = True) -> DatasetError:
        """The error a data failure mid-training ends with: the file, the saved position, how to go on."""
        files, step = self.files, int(self.position.step_in_epoch)
        kinds = [getattr(files, kind) for kind in ("label", "instance", "image", "feat") if getattr(files, kind)]
        named = [i for i in range(len(files)) if any(infos[i].path in str(err) for infos in kinds)]
        first = named + [
            i for i in sample_order(self.opts, files, epoch_seed(self.opts.seed, epoch))[step * self.opts.batchSize :]
        ]
        found = find_unreadable_file(self.opts, files, first)
        detail = found[1] if found else f"the input pipeline failed: {op_error_text(err)}"
        where = ckpt.checkpoint_dir(self.dir, ckpt.LATEST)
        kept = (
            f"every step done is saved in {where}"
            if saved
            else f"the last periodic checkpoint in {where} is kept (a multi-worker run cannot save on one worker alone)"
        )
        return DatasetError(
            f"{detail} Training stopped at epoch {epoch}, step {step} of the epoch ({int(self.position.global_step)} "
            f"steps in all), and {kept}: fix or remove the file, then resume with the same flags and "
            "--continue_train. To find every bad file before training, add --check_data (decodes the whole "
            "dataset once)."
        )

    # ------------------------------------------------------------------ steps
    def _distributed_step(self, batch):
        pool = self.model.image_pool
        if pool is not None and not pool.built:
            image = self.strategy.experimental_local_results(batch)[0]["image"]
            with self.strategy.scope():
                pool.build(image.shape)
        if self._step_fn is None:
            model = self.model
            step = tf.function(model.train_step, jit_compile=True) if self.opts.xla else model.train_step

            @tf.function
            def run(batch):
                self.strategy.run(step, args=(batch,))

            self._step_fn = run
        return self._step_fn

    def set_epoch(self, epoch: int) -> None:
        lr = learning_rate(self.opts, epoch)
        self.model.g_optimizer.learning_rate.assign(lr)
        self.model.d_optimizer.learning_rate.assign(lr)
        update_global = not (self.opts.netG == "local" and epoch <= self.opts.niter_fix_global)
        if update_global != self.model.update_global:
            self.model.set_update_global(update_global)
            self._step_fn = None  # retrace with the new variable list

    # ------------------------------------------------------------------ loop
    def train(self, max_steps: int | None = None) -> TrainResult:
        """Train to the end of the schedule (or `max_steps` more steps), saving as the options say."""
        opts = self.opts
        if self.is_chief:
            ckpt.save_options(opts, self.dir)
        steps_per_epoch = self.steps_per_epoch()
        logger = TrainingLogger(opts, self.model, self.dir, enabled=self.is_chief)
        stop = _StopRequested()
        agreement = distribute.StopAgreement(self.strategy)
        done = 0
        interrupted = False
        with stop.installed(), logger:
            epoch = int(self.position.epoch)
            while epoch <= total_epochs(opts) and not interrupted:
                self.set_epoch(epoch)
                first = int(self.position.step_in_epoch)
                logger.start_epoch(epoch, steps_per_epoch, first)
                batches = iter(self.epoch_dataset(epoch, first))
                while True:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except (tf.errors.OpError, DatasetError) as err:  # a file the pipeline cannot read
                        logger.interrupt()
                        # Keep every step done so far, as Ctrl-C does. Not under MultiWorkerMirroredStrategy: a save
                        # is collective there, and the other workers, which read other files, would never join it.
                        saved = not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
                        if saved:
                            self.save()
                        raise self._data_error(err, epoch, saved) from None
                    self._distributed_step(batch)(batch)
                    done += 1
                    self.position.step_in_epoch.assign_add(1)
                    self.position.global_step.assign_add(1)
                    step = int(self.position.global_step)
                    logger.step(step, int(self.position.step_in_epoch), batch, self.strategy)
                    if stop.agreed(agreement, step) or (max_steps is not None and done >= max_steps):
                        interrupted = True
                        break
                    if opts.save_latest_freq and step % opts.save_latest_freq == 0:
                        self.save()
                if interrupted:
                    break
                logger.end_epoch(epoch)
                self.position.epoch.assign_add(1)
                self.position.step_in_epoch.assign(0)
                if opts.save_epoch_freq and epoch % opts.save_epoch_freq == 0:
                    self.save(str(epoch))
                self.save()
                epoch += 1
            if interrupted:
                self.save()
        return TrainResult(
            self.model,
            int(self.position.epoch),
            int(self.position.global_step),
            interrupted,
            logger.last_losses,
            self.dir,
        )


class TrainingLogger:
    """Progress bar, loss log, TensorBoard scalars and image grids, per-epoch sample images (chief only)."""

    def __init__(self, opts: Options, model: Pix2PixHD, directory: str, enabled: bool = True):
        self.opts = opts
        self.model = model
        self.enabled = enabled
        self.dir = directory
        self.last_losses: dict[str, float] = {}
        self.writer = None
        self.bar = None
        self.sample: dict | None = None
        self.start_time = time.time()
        # Losses that are switched off (e.g. G_VGG with --no_vgg_loss) stay 0: not shown, only returned.
        off = {"G_VGG"} if model.vgg is None else set()
        if not model.use_gan_feat_loss:
            off.add("G_GAN_Feat")
        self.shown = [name for name in model.trackers if name not in off]
        self.palette = ClassTable.for_dataset(opts.dataroot, opts.label_nc).palette  # the label maps' colours

    def __enter__(self):
        if self.enabled:
            os.makedirs(os.path.join(self.dir, "samples"), exist_ok=True)
            self.writer = tf.summary.create_file_writer(os.path.join(self.dir, "logs"))
            self.loss_log = open(os.path.join(self.dir, "loss_log.txt"), "a")
            self.loss_log.write(f"================ Training Loss ({time.strftime('%c')}) ================\n")
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.loss_log.close()
            self.writer.close()

    def start_epoch(self, epoch: int, steps: int, first: int) -> None:
        self.epoch = epoch
        self.epoch_start = time.time()
        for tracker in self.model.metrics:
            tracker.reset_state()
        if self.enabled:
            self.bar = _ResumedProgbar(steps, first, stateful_metrics=list(self.model.trackers), unit_name="step")
            print(f"Epoch {epoch}/{total_epochs(self.opts)} (lr {learning_rate(self.opts, epoch):.6g})")
            if first:
                self.bar.update(first)

    def step(self, global_step: int, step_in_epoch: int, batch, strategy) -> None:
        # Reading a metric all-reduces it under MultiWorkerMirroredStrategy: every worker must do it.
        losses = {name: float(t.result()) for name, t in self.model.trackers.items()}
        self.last_losses = losses
        if not self.enabled:
            return
        shown = [(name, losses[name]) for name in self.shown]
        self.bar.update(step_in_epoch, shown)
        if self.sample is None:
            self.sample = _first_replica(batch, strategy)
        if global_step % self.opts.print_freq == 0:
            with self.writer.as_default(step=global_step):
                for name, value in shown:
                    tf.summary.scalar(name, value)
            line = " ".join(f"{k}: {v:.3f}" for k, v in shown)
            self.loss_log.write(f"(epoch: {self.epoch}, iters: {step_in_epoch}, step: {global_step}) {line}\n")
            self.loss_log.flush()
        if global_step % self.opts.display_freq == 0:
            with self.writer.as_default(step=global_step):
                title = (
                    "label | generated | averaged G | real"
                    if self.model.average is not None
                    else "label | generated | real"
                )
                tf.summary.image(title, self.grid()[None])

    def interrupt(self) -> None:
        """End the bar's line, so that what is printed next starts on a line of its own."""
        if self.enabled and self.bar is not None:
            print(flush=True)

    def grid(self) -> np.ndarray:
        """Coloured label map | generated | real for the first sample of the first batch seen; with --ema_decay,
        label map | generated (trained weights) | generated (averaged weights) | real."""
        sample = self.sample
        fakes = [self.model.generate(sample)]
        if self.model.average is not None:
            fakes.append(self.model.generate(sample, averaged=True))
        label = sample["label"].numpy()[0]
        row = [
            visualize.input_visual(label, self.palette),
            *(visualize.tensor_to_uint8(fake.numpy()[0]) for fake in fakes),
            visualize.tensor_to_uint8(sample["image"].numpy()[0]),
        ]
        return visualize.image_grid([row])

    def end_epoch(self, epoch: int) -> None:
        if not self.enabled:
            return
        if self.sample is not None:
            visualize.save_image(os.path.join(self.dir, "samples", f"epoch{epoch:03d}.png"), self.grid())
        print(f"End of epoch {epoch}: {time.time() - self.epoch_start:.0f} s")


class _ResumedProgbar(keras.utils.Progbar):
    """A Progbar that starts at step `initial` of `target` (a resumed epoch), with its rate and ETA counted
    from there: Keras' own would divide the time since the start by every step, skipped ones included."""

    def __init__(self, target: int, initial: int = 0, **kwargs):
        super().__init__(target, **kwargs)
        self.initial = initial

    def _estimate_step_duration(self, current, now):
        return super()._estimate_step_duration(max(0, current - self.initial), now)


def _first_replica(batch, strategy) -> dict:
    local = strategy.experimental_local_results(batch)[0] if hasattr(strategy, "experimental_local_results") else batch
    return {k: v[:1] for k, v in local.items()}


def list_data(opts: Options) -> DatasetFiles:
    """The training files, checked: headers always, every file decoded with --check_data."""
    return list_dataset_files(DatasetLayout.of(opts), phase=opts.phase, deep_check=opts.check_data)


def train(
    opts: Options,
    max_steps: int | None = None,
    optimizers: Callable[[Options], tuple] = make_optimizers,
    command: str | None = None,
) -> TrainResult:
    """Check the experiment directory and the data, then build or resume the experiment and train it.

    `command`: the command line that was run, quoted in the message when an existing experiment is refused.
    """
    check_experiment_dir(opts, command)
    prepare_data(opts)
    files = list_data(opts)
    trainer = Trainer(opts, optimizers=optimizers, files=files)
    trainer.restore_or_initialise()
    return trainer.train(max_steps=max_steps)
