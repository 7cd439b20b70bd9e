"""A job: a checked config built into what one run trains (model, optimizer, the
checkpoint that saves both; a distilling stage's teacher), and restoring a checkpoint
into it. Training, evaluation and export all start from a job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bnn_cli._keras import keras, tf
from bnn_cli.assemble import mixed_precision as precision
from bnn_cli.assemble import strategy as distribute
from bnn_cli.assemble import test_time
from bnn_cli.assemble.check import CheckedConfig, CheckedStage, CheckedTeacher
from bnn_cli.assemble.distillation import Distiller
from bnn_cli.assemble.model import build_loss, build_optimizer
from bnn_cli.assemble.vetting import load_vetted_model
from bnn_cli.config.schema import Config
from bnn_cli.data import pipeline as datamod
from bnn_cli.errors import UserError, error_text
from bnn_cli.metrics import metrics_scope
from bnn_cli.rundir.run import Checkpoint, RunDir


@dataclass
class Job:
    """Everything one training run works with."""

    checked: CheckedConfig
    run: RunDir
    model: keras.Model
    checkpoint: tf.train.Checkpoint
    trainer: keras.Model | None = None  # what `fit` trains, if not the model (distillation)
    stage: CheckedStage | None = None  # of a multi-stage config
    scorer: keras.Model | None = None  # what scores the model, if not itself (test_time)

    @property
    def fit_model(self) -> keras.Model:
        return self.trainer or self.scorer or self.model

    @property
    def scoring_model(self) -> keras.Model:
        """What validation, evaluation and prediction call: the model, or its test-time
        augmented form."""
        return self.scorer or self.model

    @property
    def config(self) -> Config:
        return self.checked.config

    @property
    def data_dir(self) -> str | None:
        return self.checked.data_dir

    @property
    def steps_per_epoch(self) -> int:
        return self.checked.steps_per_epoch


def prepare(checked: CheckedConfig, run: RunDir, stage: CheckedStage | None = None,
            teachers: list[keras.Model] | None = None, *,
            for_training: bool = True) -> Job:
    """Build the model and the optimizer of a checked config (new run or resume).

    A stage that distills trains a :class:`~bnn_cli.assemble.distillation.Distiller` of
    the model and ``teachers``; test-time augmentation scores through a
    :class:`~bnn_cli.assemble.test_time.TestTimeAugmented` of the model. Not
    ``for_training`` (evaluation, export), the model is float32 whatever
    ``runtime.mixed_precision`` says: the weights are float32 either way."""
    training = checked.spec.training
    if training.seed is not None:
        keras.utils.set_random_seed(training.seed)
    if training.deterministic:
        tf.config.experimental.enable_op_determinism()

    # Everything with variables (model, optimizer, metrics, the checkpoint) is created
    # under the strategy's scope (a no-op scope without one), the model in the config's
    # precision (runtime.mixed_precision).
    policy = distribute.precision(checked.spec.runtime) if for_training else None
    with distribute.strategy().scope():
        # training.flip_ratio: every kernel quantizer logs the share of weights that flipped.
        with metrics_scope(["flip_ratio"] if training.flip_ratio else []):
            model = precision.build_model(checked, policy)
        optimizer = build_optimizer(training, checked.steps_per_epoch)
        runtime = checked.spec.runtime
        engine = {"jit_compile": runtime.jit_compile,
                  "steps_per_execution": runtime.steps_per_execution}
        loss = build_loss(training)
        model.compile(optimizer=optimizer, loss=loss,
                      metrics=list(training.metrics), **engine)
        # data.test_time_augmentation: validation and evaluation score through a wrapper
        # of the model, which trains the model as it is.
        scorer = test_time.augmented(model, checked.spec.data.test_time_augmentation)
        trainer = None
        if stage is not None and stage.distill is not None:
            trainer = Distiller(model, teachers, stage.distill, scorer=scorer)
        # The wrappers train with the model's own optimizer: under mixed_float16, the
        # loss-scale wrapper compile gave it (an optimizer takes only one).
        for wrapper in (w for w in (scorer, trainer) if w is not None):
            wrapper.compile(optimizer=model.optimizer, loss=loss,
                            metrics=list(training.metrics), **engine)
        # Create the optimizer's slots now, so a checkpoint restores into them.
        if hasattr(optimizer, "build"):
            optimizer.build(model.trainable_variables)
        # (with its loss scale, under mixed_float16: state to resume too)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return Job(checked, run, model, checkpoint, trainer, stage, scorer)


def check_training_step(job: Job) -> None:
    """Trace one training step (without running it) before a run directory is written.

    Some config mistakes surface only when Keras traces the step: a layer argument of
    the wrong type (``momentum: {}``), a loss that does not fit the labels
    (``categorical_crossentropy`` without ``data.one_hot``). Found here they are config
    errors, not a run directory whose first epoch crashed. ``fit`` reuses the trace.
    """
    spec = job.config.spec
    train = datamod.load_split(spec.data, spec.data.train_split, training=True,
                               batch_size=spec.training.batch_size,
                               seed=datamod.epoch_seed(spec.training.seed, 0),
                               data_dir=job.data_dir)
    try:
        job.fit_model.make_train_function().get_concrete_function(
            tf.data.IteratorSpec(train.element_spec))
    except (TypeError, ValueError, AttributeError, NotImplementedError,
            tf.errors.OpError) as exc:
        layer = re.search(r"calling layer ['\"]([^'\"]+)['\"]", str(exc))
        where = f" (in layer {layer.group(1)!r})" if layer else ""
        raise UserError(f"{job.config.path}: the model cannot be trained with this config"
                        f"{where}: {error_text(exc)}. Check the layer arguments, and "
                        "training.loss and training.metrics against the labels "
                        "(data.one_hot)") from None


def start_pointer(stage: CheckedStage) -> str:
    """The checkpoint pointer that keeps what a stage started from (its ``from``)."""
    return f"start-{stage.name}"


def stage_pointer(stage: CheckedStage) -> str:
    """The checkpoint pointer that keeps what a finished stage selected."""
    return f"stage-{stage.name}"


def stage_job(run: RunDir, stage: CheckedStage, stages: list[CheckedStage], *,
              teacher_weights: bool = True) -> Job:
    """The job of one stage; a distilling stage's teachers are built from their configs
    and given the weights their stage selected (or their run directory's best
    checkpoint), or loaded from their model files."""
    teachers = [_teacher(run, t, stages, distribute.precision(stage.checked.spec.runtime),
                         teacher_weights) for t in stage.teachers]
    return prepare(stage.checked, run, stage, teachers)


def _teacher(run: RunDir, teacher: CheckedTeacher, stages: list[CheckedStage],
             policy: str | None, weights: bool) -> keras.Model:
    with distribute.strategy().scope():
        if teacher.file is not None:  # (vetted: nothing in the file runs)
            return load_vetted_model(teacher.file)
        model = precision.build_model(teacher.checked, policy)
    if teacher.run is not None:
        _read_weights(model, teacher.run.load_checkpoint("best"))
    elif weights:
        _read_weights(model, selected_checkpoint(run, stages[teacher.stage]))
    return model


def selected_checkpoint(run: RunDir, stage: CheckedStage) -> Checkpoint:
    if run.pointed(stage_pointer(stage)) is None:
        raise UserError(f"{run.path}: stage {stage.name!r} has no selected checkpoint (no "
                        f"{stage_pointer(stage)} pointer), so the stages after it cannot start")
    return run.load_checkpoint(stage_pointer(stage))


def _read_weights(model: keras.Model, checkpoint: Checkpoint) -> None:
    tf.train.Checkpoint(model=model).read(checkpoint.prefix).expect_partial()


def carry_weights(source: keras.Model, target: keras.Model) -> tuple[int, list[str]]:
    """Copy each layer's weights to the layer of the same name and weight shapes; the
    number copied, and the names of the target's layers with weights that got none."""
    by_name = {layer.name: layer for layer in source.layers}
    carried, fresh = 0, []
    for layer in target.layers:
        if not layer.weights:
            continue
        old = by_name.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if old is not None and [tuple(w.shape) for w in old.weights] == shapes:
            layer.set_weights(old.get_weights())
            carried += 1
        else:
            fresh.append(layer.name)
    return carried, fresh


def restore(job: Job, checkpoint: Checkpoint, *, partial: bool = False) -> None:
    """Load a checkpoint's weights (and optimizer) into the job's model."""
    try:
        status = job.checkpoint.read(checkpoint.prefix)
        if partial:  # evaluation needs the weights only
            status.expect_partial()
        else:
            status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        # E.g. config.yaml was edited after training: the layers no longer match.
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise UserError(f"checkpoint {checkpoint.path} does not fit the model of the run's "
                        f"config ({type(exc).__name__}: {first}); was config.yaml edited "
                        "after training?") from None
