"""Knowledge distillation: a student trained against a frozen teacher's outputs.

The losses of Real-to-Binary (Martinez et al., 2020) and ReActNet (Liu et al., 2020):

- soft targets: ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` on the logits ``z``
  (the input of each model's final softmax), temperature ``T``;
- attention transfer between named layers of equal spatial size, in one of two forms
  (``attention_form``): the paper's, ``|a_s - a_t|_2`` with ``a = normalize(sum_c
  x_c^2)``, the L2-normalized map of squared activations summed over channels
  (Zagoruyko & Komodakis, 2017), summed over the pairs; or the Larq zoo's, the mean
  squared difference of ``q = mean_c x_c^2 / max(mean_c x_c^2)``, averaged over the
  pairs (so the zoo's weights, e.g. Real-to-Binary's 30, carry over with it);
- and the stage's own ``training.loss`` on the labels,

each weighted as the stage's ``distill`` section says. With several teachers the
soft-target term is the sum of each one's, times its ``weight``. A teacher is an earlier
stage, a run directory or a Keras model file (ReActNet's pretrained ResNet-34), which
sees the student's input through its own ``input`` preprocessing. :class:`Distiller`
is what ``fit`` trains; the student is the model that is checkpointed, evaluated and
saved.
"""

from __future__ import annotations

from typing import Any

from bnn_cli._keras import keras, tf
from bnn_cli.config.schema import Distill, Teacher, TeacherInput
from bnn_cli.errors import UserError

TERMS = ("label_loss", "distill_loss", "attention_loss")  # logged beside loss each epoch


def logits_of(model: keras.Model) -> tf.Tensor:
    """The input of the model's final softmax layer (checks made sure there is one)."""
    return model.layers[-1].input


def teacher_logits(model: keras.Model) -> tf.Tensor:
    """A teacher's logits: the input of a final softmax layer (every model bnn builds);
    for a model from a file, the output of a final layer whose own activation is
    softmax, with that activation switched off (``model`` is the teacher's private
    copy), else the output itself."""
    last = model.layers[-1]
    if _is_softmax(last):
        return last.input
    if _is_softmax(getattr(last, "activation", None)):
        last.activation = keras.activations.linear  # (read by `call`: the taps see logits)
    return model.outputs[0]


def _is_softmax(thing: Any) -> bool:
    if isinstance(thing, keras.layers.Softmax):
        return True
    if isinstance(thing, keras.layers.Activation):
        thing = thing.activation
    return getattr(thing, "__name__", None) == "softmax"


def teacher_problem(model: keras.Model, spec: Teacher, student_shape: list[int | None],
                    classes: int | None) -> str | None:
    """What keeps a model from a file from teaching this student, if anything."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return (f"it has {len(model.inputs)} inputs and {len(model.outputs)} outputs; a "
                "teacher takes one image and gives one distribution over the classes")
    size = list(spec.input.size) if spec.input and spec.input.size else student_shape[:-1]
    wanted = [*size, student_shape[-1]]
    have = list(model.inputs[0].shape[1:])
    if len(have) != len(wanted) or any(
            h not in (None, w) for h, w in zip(have, wanted, strict=True)):
        return (f"it takes inputs of shape {have}, but the student's input reaches it as "
                f"{wanted}; set the teacher's input.size to its height and width")
    channels = wanted[-1]
    for key in ("scale", "offset"):
        value = getattr(spec.input, key) if spec.input else 1.0
        if isinstance(value, list) and len(value) not in (1, channels):
            return (f"its input.{key} has {len(value)} values; give one, or one per "
                    f"channel ({channels})")
    out = model.outputs[0].shape[-1]
    if classes is not None and out != classes:
        return f"it gives {out} outputs, but the dataset has {classes} classes"
    return None


def teacher_input(x: tf.Tensor, spec: TeacherInput | None) -> tf.Tensor:
    """The student's input as a teacher from a file wants it (``TeacherInput``)."""
    if spec is None:
        return x
    if spec.size is not None:
        x = tf.image.resize(x, spec.size)
    if spec.channels == "bgr":
        x = x[..., ::-1]
    return x * tf.constant(spec.scale, x.dtype) + tf.constant(spec.offset, x.dtype)


def attention_map(x: tf.Tensor) -> tf.Tensor:
    """``normalize(sum over channels of x^2)``, flattened per example."""
    energy = tf.reduce_sum(tf.square(tf.cast(x, tf.float32)), axis=-1)
    return tf.math.l2_normalize(tf.reshape(energy, [tf.shape(x)[0], -1]), axis=-1)


def zoo_attention_map(x: tf.Tensor) -> tf.Tensor:
    """The Larq zoo's map: ``mean over channels of x^2``, flattened per example and
    divided by its maximum."""
    energy = tf.reduce_mean(tf.square(tf.cast(x, tf.float32)), axis=-1)
    flat = tf.reshape(energy, [tf.shape(x)[0], -1])
    return flat / tf.reduce_max(flat, axis=-1, keepdims=True)


def attention_loss(student_maps: list[tf.Tensor], teacher_maps: list[tf.Tensor],
                   form: str) -> tf.Tensor:
    """The attention term over the layer pairs, in the paper's form or the zoo's."""
    if not student_maps:
        return tf.constant(0.0)
    pairs = list(zip(student_maps, teacher_maps, strict=True))
    if form == "zoo":  # per pair and example: the mean squared difference; then the mean
        return tf.reduce_mean(tf.stack([tf.reduce_mean(tf.square(
            zoo_attention_map(s) - zoo_attention_map(t)), axis=-1) for s, t in pairs], -1))
    return tf.add_n([tf.reduce_mean(tf.norm(attention_map(s) - attention_map(t), axis=-1))
                     for s, t in pairs])


def soft_target_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor,
                     temperature: float) -> tf.Tensor:
    """``T^2 * KL(p_t || p_s)`` with both softened by ``T`` (Hinton et al., 2015): the
    ``T^2`` keeps its gradients' scale independent of ``T``."""
    p_t = tf.nn.softmax(teacher_logits / temperature)
    log_p_s = tf.nn.log_softmax(student_logits / temperature)
    log_p_t = tf.nn.log_softmax(teacher_logits / temperature)
    kl = tf.reduce_sum(p_t * (log_p_t - log_p_s), axis=-1)
    return temperature ** 2 * tf.reduce_mean(kl)


class Distiller(keras.Model):
    """Trains ``student`` on ``training.loss`` plus the distillation terms; validation
    and metrics are the student's alone (scored by ``scorer``, where test-time
    augmentation wraps it)."""

    def __init__(self, student: keras.Model, teachers: list[keras.Model], spec: Distill,
                 scorer: keras.Model | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.student, self.teachers, self.spec = student, teachers, spec
        self.scorer = scorer or student
        pairs = [(p.student, p.teacher or p.student) for p in spec.attention]
        self.student_taps = keras.Model(
            student.inputs, [logits_of(student), *(_output(student, s) for s, _ in pairs)])
        self.teacher_taps = []
        for teacher in teachers:
            teacher.trainable = False
            self.teacher_taps.append(keras.Model(
                teacher.inputs,
                [teacher_logits(teacher), *(_output(teacher, t) for _, t in pairs)]))
        for (s, t), a, b in zip(pairs, self.student_taps.outputs[1:],
                                self.teacher_taps[0].outputs[1:], strict=True):
            if a.shape[1:-1] != b.shape[1:-1]:
                raise UserError(f"attention transfer compares maps of the same size, but "
                                f"the student's {s!r} is {a.shape[1:-1]} and the teacher's "
                                f"{t!r} is {b.shape[1:-1]}; pair layers of equal height "
                                "and width")
        # Means over the epoch's batches (a step's own value is one batch's).
        self.loss_mean = keras.metrics.Mean("loss")
        self.terms = {name: keras.metrics.Mean(name) for name in TERMS}

    def compile(self, *, optimizer: Any, loss: str, metrics: list[str],
                **engine: Any) -> None:
        super().compile(optimizer=optimizer, metrics=metrics, **engine)
        self.label_loss = keras.losses.get(loss)

    def call(self, x: Any, training: bool = False) -> tf.Tensor:
        return self.student(x, training=training)

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, y = data
        spec = self.spec
        taught = [_taps(taps, teacher_input(x, given.input), training=False)
                  for taps, given in zip(self.teacher_taps, spec.teachers, strict=True)]
        teacher_maps = taught[0][1:]
        with tf.GradientTape() as tape:
            student_logits, *student_maps = _taps(self.student_taps, x, training=True)
            probs = tf.nn.softmax(student_logits)
            label = tf.reduce_mean(self.label_loss(y, probs))
            soft = tf.add_n([given.weight * soft_target_loss(
                outputs[0], student_logits, spec.temperature)
                for outputs, given in zip(taught, spec.teachers, strict=True)])
            attention = attention_loss(student_maps, teacher_maps, spec.attention_form)
            total = (spec.label_weight * label + spec.kd_weight * soft
                     + spec.attention_weight * attention + tf.add_n(self.student.losses
                                                                    or [0.0]))
            # Under a tf.distribute strategy each replica's gradients are summed: its
            # share of the loss is its mean over the replicas (as Keras's compiled loss).
            share = total / tf.distribute.get_strategy().num_replicas_in_sync
        # (minimize: a loss-scale optimizer, under mixed_float16, scales it first)
        self.optimizer.minimize(share, self.student.trainable_variables, tape=tape)
        self.loss_mean.update_state(total)
        for name, value in zip(TERMS, (label, soft, attention), strict=True):
            self.terms[name].update_state(value)
        self.compiled_metrics.update_state(y, probs)
        return {**self._results(), **{name: m.result() for name, m in self.terms.items()}}

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, y = data
        probs = self.scorer(x, training=False)
        self.loss_mean.update_state(tf.reduce_mean(self.label_loss(y, probs)))
        self.compiled_metrics.update_state(y, probs)
        return self._results()

    def _results(self) -> dict[str, tf.Tensor]:
        return {"loss": self.loss_mean.result(),
                **{m.name: m.result() for m in self.compiled_metrics.metrics}}

    @property
    def metrics(self) -> list[Any]:
        # What Keras resets at each epoch's (and each evaluation's) start.
        return [*super().metrics, self.loss_mean, *self.terms.values()]


def _taps(model: keras.Model, x: Any, *, training: bool) -> list[tf.Tensor]:
    """Logits, then the attention layers' outputs (a model of one output gives a tensor)."""
    outputs = model(x, training=training)
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    # (the losses in float32 whatever the models compute in: runtime.mixed_precision)
    return [tf.cast(o, tf.float32) for o in outputs]


def _output(model: keras.Model, name: str) -> tf.Tensor:
    return model.get_layer(name).output
