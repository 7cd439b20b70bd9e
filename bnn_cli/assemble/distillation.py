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

each weighted as the stage's ``distill`` section says. :class:`Distiller` is what
``fit`` trains; the student is the model that is checkpointed, evaluated and saved.
"""

from __future__ import annotations

from typing import Any

from bnn_cli._keras import keras, tf
from bnn_cli.config.schema import Distill
from bnn_cli.errors import UserError

TERMS = ("label_loss", "distill_loss", "attention_loss")  # logged beside loss each epoch


def logits_of(model: keras.Model) -> tf.Tensor:
    """The input of the model's final softmax layer (checks made sure there is one)."""
    return model.layers[-1].input


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
    and metrics are the student's alone."""

    def __init__(self, student: keras.Model, teacher: keras.Model, spec: Distill,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.student, self.teacher, self.spec = student, teacher, spec
        teacher.trainable = False
        pairs = [(p.student, p.teacher or p.student) for p in spec.attention]
        self.student_taps = keras.Model(
            student.inputs, [logits_of(student), *(_output(student, s) for s, _ in pairs)])
        self.teacher_taps = keras.Model(
            teacher.inputs, [logits_of(teacher), *(_output(teacher, t) for _, t in pairs)])
        for (s, t), a, b in zip(pairs, self.student_taps.outputs[1:],
                                self.teacher_taps.outputs[1:], strict=True):
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
        teacher_logits, *teacher_maps = _taps(self.teacher_taps, x, training=False)
        spec = self.spec
        with tf.GradientTape() as tape:
            student_logits, *student_maps = _taps(self.student_taps, x, training=True)
            probs = tf.nn.softmax(student_logits)
            label = tf.reduce_mean(self.label_loss(y, probs))
            soft = soft_target_loss(teacher_logits, student_logits, spec.temperature)
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
        probs = self.student(x, training=False)
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
