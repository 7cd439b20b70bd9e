"""Quantizers: differential tests against Larq 0.14 (the reference), aliases, edge
cases, serialization, use as activations and custom quantizers.

Larq objects are always built from explicit Larq classes: plain names such as
``"ste_sign"`` resolve to bnn_cli's objects (see ``conftest.py``).
"""

from __future__ import annotations

import ast
import inspect
import uuid
from pathlib import Path

import numpy as np
import pytest

from bnn_cli import quantizers as bq
from bnn_cli._keras import keras, tf
from bnn_cli.errors import UserError
from bnn_cli.layers import QuantDense

lq = pytest.importorskip(
    "larq", reason="Larq, the reference these tests compare with, is a test extra")

F32 = np.float32

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _edge_values(clip: float | None) -> np.ndarray:
    """0, the clip boundaries exactly, one ulp inside and outside, and large values."""
    c = F32(1.0 if clip is None else clip)
    inside = np.nextafter(c, F32(0))
    outside = np.nextafter(c, F32(np.inf))
    values = [0.0, c, -c, inside, -inside, outside, -outside, 1.0, -1.0, 0.5, -0.5,
              0.05, -0.05, 1e-7, -1e-7, 2.0, -2.0, 1e3, -1e3, 1e30, -1e30]
    return np.array(values, dtype=F32)


def _random_values(seed: int = 0, n: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.2, size=n).astype(F32)


def _dorefa_values() -> np.ndarray:
    """Activation-mode inputs around [0, 1], incl. (m + 0.5) / n for every k_bit <= 4."""
    halves = [(m + 0.5) / n for n in (1, 3, 7, 15) for m in range(n)]
    return np.array([0.0, 1.0, -0.5, 1.5, *halves, 0.3, 0.7, 1e3, -1e3], dtype=F32)


def _upstream(shape, seed: int = 1) -> tf.Tensor:
    """A non-uniform upstream gradient with no zeros (so a wrong mask shows)."""
    rng = np.random.default_rng(seed)
    mag = rng.uniform(0.5, 2.0, size=shape)
    sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
    return tf.constant((mag * sign).astype(F32))


def _value_and_grad(fn, x: np.ndarray, dy: tf.Tensor | None = None):
    x = tf.constant(x)
    dy = _upstream(x.shape) if dy is None else dy
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    grad = tape.gradient(y, x, output_gradients=dy)
    assert grad is not None, "no gradient flows through the quantizer"
    return y.numpy(), grad.numpy()


def _assert_same(ours, theirs, *, grad_rtol: float = 1e-6):
    y, g = ours
    y_ref, g_ref = theirs
    np.testing.assert_array_equal(y, y_ref, err_msg="forward values differ from Larq")
    np.testing.assert_allclose(g, g_ref, rtol=grad_rtol, atol=1e-7,
                               err_msg="gradients differ from Larq")


def _larq_alias_table() -> dict[str, str]:
    """Larq's alias -> class name table, read from its ``@register_alias`` decorators.

    Parsing the source is independent of import order (both libraries register the
    same plain names with Keras, and the last import wins).
    """
    tree = ast.parse(Path(inspect.getfile(lq.quantizers)).read_text())
    table = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for dec in node.decorator_list:
            if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)
                    and dec.func.attr == "register_alias"):
                table[dec.args[0].value] = node.name
    return table


LARQ_ALIASES = _larq_alias_table()
LARQ_CLASSES = ["SteSign", "ApproxSign", "SwishSign", "SteHeaviside", "SteTern", "DoReFa",
                "MagnitudeAwareSign", "NoOp"]
BASE_KEYS = {"name", "trainable", "dtype", "metrics"}


def _own_config(quantizer) -> dict:
    return {k: v for k, v in quantizer.get_config().items() if k not in BASE_KEYS}


# ---------------------------------------------------------------------------------------
# Differential tests: every quantizer class x arguments, values and gradients.
# ---------------------------------------------------------------------------------------

# (class name, constructor kwargs, clip value whose boundaries the inputs probe)
CASES = [
    ("SteSign", {}, 1.0),
    ("SteSign", {"clip_value": 0.5}, 0.5),
    ("SteSign", {"clip_value": None}, None),
    ("SteSign", {"clip_value": 2.0}, 2.0),
    ("ApproxSign", {}, 1.0),
    ("SwishSign", {}, 1.0),
    ("SwishSign", {"beta": 1.0}, 1.0),
    ("SwishSign", {"beta": 10.0}, 1.0),
    ("SteHeaviside", {}, 1.0),
    ("SteHeaviside", {"clip_value": 0.5}, 0.5),
    ("SteHeaviside", {"clip_value": None}, None),
    ("SteHeaviside", {"clip_value": 2.0}, 2.0),
    ("SteTern", {}, 1.0),
    ("SteTern", {"threshold_value": 0.5}, 1.0),
    ("SteTern", {"threshold_value": 0.3, "clip_value": 0.5}, 0.5),
    ("SteTern", {"clip_value": None}, None),
    ("SteTern", {"clip_value": 2.0, "threshold_value": 1.0}, 2.0),
    ("SteTern", {"ternary_weight_networks": True}, 1.0),
    ("SteTern", {"ternary_weight_networks": True, "clip_value": None}, None),
    ("SteTern", {"ternary_weight_networks": True, "clip_value": 0.5}, 0.5),
    ("MagnitudeAwareSign", {}, 1.0),
    ("MagnitudeAwareSign", {"clip_value": 0.5}, 0.5),
    ("MagnitudeAwareSign", {"clip_value": None}, None),
    ("MagnitudeAwareSign", {"clip_value": 2.0}, 2.0),
    ("NoOp", {"precision": 1}, 1.0),
    ("NoOp", {"precision": 8}, 1.0),
    *[("DoReFa", {"k_bit": k, "mode": mode}, 1.0)
      for mode in ("activations", "weights") for k in (1, 2, 3, 4)],
]


def _case_id(case) -> str:
    name, kwargs, _ = case
    args = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{name}({args})"


def _pair(name: str, kwargs: dict):
    return getattr(bq, name)(**kwargs), getattr(lq.quantizers, name)(**kwargs)


def _inputs_for(name: str, kwargs: dict, clip, kind: str) -> np.ndarray:
    if kind == "random":
        return _random_values()
    if name == "DoReFa" and kwargs.get("mode", "activations") == "activations":
        return _dorefa_values()
    if name == "SteTern" and not kwargs.get("ternary_weight_networks"):
        t = F32(kwargs.get("threshold_value", 0.05))
        around = [t, -t, np.nextafter(t, F32(0)), -np.nextafter(t, F32(0)),
                  np.nextafter(t, F32(1)), -np.nextafter(t, F32(1))]
        return np.concatenate([_edge_values(clip), np.array(around, dtype=F32)])
    return _edge_values(clip)


@pytest.mark.parametrize("kind", ["edges", "random"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_quantizer_matches_larq(case, kind):
    name, kwargs, clip = case
    ours, theirs = _pair(name, kwargs)
    x = _inputs_for(name, kwargs, clip, kind)
    if name == "MagnitudeAwareSign":
        x = x[: len(x) // 3 * 3].reshape(-1, 3)  # per-channel scale needs channels
    dy = _upstream(x.shape)
    _assert_same(_value_and_grad(ours, x, dy), _value_and_grad(theirs, x, dy))
    assert ours.precision == theirs.precision


@pytest.mark.parametrize("clip_value", [1.0, 0.5, None, 2.0])
@pytest.mark.parametrize("shape", [(6, 5), (3, 3, 4, 5)], ids=["2d", "4d"])
def test_magnitude_aware_sign_per_channel_matches_larq(shape, clip_value):
    rng = np.random.default_rng(3)
    # Channels with very different magnitudes, so a wrong reduction axis shows.
    x = (rng.normal(size=shape) * np.linspace(0.2, 3.0, shape[-1])).astype(F32)
    ours, theirs = _pair("MagnitudeAwareSign", {"clip_value": clip_value})
    dy = _upstream(shape)
    y, g = _value_and_grad(ours, x, dy)
    _assert_same((y, g), _value_and_grad(theirs, x, dy))
    # And against the definition: one scale per output channel.
    scale = np.abs(x).reshape(-1, shape[-1]).mean(axis=0)
    np.testing.assert_allclose(y, scale * np.where(x < 0, -1.0, 1.0), rtol=1e-6)
    mask = np.ones_like(x) if clip_value is None else np.abs(x) <= clip_value
    np.testing.assert_allclose(g, scale * mask * dy.numpy(), rtol=1e-6)


# Module-level functions: (bnn_cli fn, Larq fn, kwargs, clip)
FUNCTION_CASES = [
    ("ste_sign", {}, 1.0),
    ("ste_sign", {"clip_value": 0.5}, 0.5),
    ("ste_sign", {"clip_value": None}, None),
    ("ste_sign", {"clip_value": 2.0}, 2.0),
    ("approx_sign", {}, 1.0),
    ("swish_sign", {}, 1.0),
    ("swish_sign", {"beta": 2.5}, 1.0),
    ("ste_heaviside", {}, 1.0),
    ("ste_heaviside", {"clip_value": 0.5}, 0.5),
    ("ste_heaviside", {"clip_value": None}, None),
    ("ste_tern", {}, 1.0),
    ("ste_tern", {"threshold_value": 0.5, "clip_value": 2.0}, 2.0),
    ("ste_tern", {"ternary_weight_networks": True}, 1.0),
    ("ste_tern", {"ternary_weight_networks": True, "clip_value": None}, None),
]


@pytest.mark.parametrize("kind", ["edges", "random"])
@pytest.mark.parametrize("case", FUNCTION_CASES, ids=_case_id)
def test_quantizer_function_matches_larq(case, kind):
    name, kwargs, clip = case
    ours, theirs = getattr(bq, name), getattr(lq.quantizers, name)
    x = _edge_values(clip) if kind == "edges" else _random_values(seed=7)
    dy = _upstream(x.shape)
    _assert_same(_value_and_grad(lambda t: ours(t, **kwargs), x, dy),
                 _value_and_grad(lambda t: theirs(t, **kwargs), x, dy))


@pytest.mark.parametrize("clip_value", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("name", ["SteSign", "SteHeaviside", "SteTern", "MagnitudeAwareSign"])
def test_clip_boundary_passes_gradient(name, clip_value):
    c = F32(clip_value)
    x = np.array([[c, -c], [np.nextafter(c, F32(9)), -np.nextafter(c, F32(9))]], dtype=F32)
    dy = tf.constant([[2.0, 3.0], [5.0, 7.0]])
    _, g = _value_and_grad(getattr(bq, name)(clip_value=clip_value), x, dy)
    scale = np.abs(x).mean(axis=0) if name == "MagnitudeAwareSign" else np.ones(2)
    np.testing.assert_allclose(g, [[2.0 * scale[0], 3.0 * scale[1]], [0.0, 0.0]], rtol=1e-6)


def test_approx_sign_gradient_definition():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, 0.25], dtype=F32)
    dy = tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    y, g = _value_and_grad(bq.ApproxSign(), x, dy)
    np.testing.assert_array_equal(y, [1, 1, -1, 1, -1, 1, 1])
    np.testing.assert_allclose(g, [2.0, 2.0, 3.0, 0.0, 0.0, 0.0, 10.5], rtol=1e-6)


def test_swish_sign_gradient_definition():
    beta = 3.0
    x = np.array([0.0, 0.2, -0.7, 2.0], dtype=F32)
    _, g = _value_and_grad(bq.SwishSign(beta=beta), x, tf.ones([4]))
    bx = beta * x.astype(np.float64)
    expected = beta * (2 - bx * np.tanh(bx / 2)) / (1 + np.cosh(bx))
    np.testing.assert_allclose(g, expected, rtol=1e-5)
    assert g[0] == pytest.approx(beta)  # dq/dx(0) = beta


# ---------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SteSign", "ApproxSign", "SwishSign", "MagnitudeAwareSign"])
def test_sign_of_zero_is_plus_one(name):
    # Zeros next to non-zero values, so that MagnitudeAwareSign's scale is not zero.
    x = tf.constant([[0.0, -0.0, 0.0], [2.0, -4.0, 6.0]])
    y = getattr(bq, name)()(x).numpy()
    scale = np.array([1.0, 2.0, 3.0]) if name == "MagnitudeAwareSign" else np.ones(3)
    np.testing.assert_array_equal(y, [scale, [1.0, -1.0, 1.0] * scale])
    np.testing.assert_array_equal(bq.ste_sign(tf.constant([0.0, -0.0])).numpy(), [1.0, 1.0])


def test_heaviside_of_zero_is_zero():
    y = bq.SteHeaviside()(tf.constant([0.0, -0.0, 1e-7, -1e-7, 3.0])).numpy()
    np.testing.assert_array_equal(y, [0.0, 0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(bq.ste_heaviside(tf.constant([0.0])).numpy(), [0.0])


@pytest.mark.parametrize("threshold", [0.05, 0.3, 1.0])
def test_ste_tern_thresholds(threshold):
    t = F32(threshold)
    below = np.nextafter(t, F32(0))
    x = tf.constant([0.0, below, -below, np.nextafter(t, F32(9)), -np.nextafter(t, F32(9)),
                     5.0, -5.0])
    y = bq.SteTern(threshold_value=threshold)(x).numpy()
    np.testing.assert_array_equal(y, [0, 0, 0, 1, -1, 1, -1])


def test_ste_tern_exactly_at_threshold_matches_larq_formula():
    """``sign(sign(x + D) + sign(x - D))`` gives +-1 (not 0) at exactly ``x == +-D``.

    This is what Larq computes (its docstring leaves the boundary undefined); bnn_cli
    must compute the same.
    """
    x = tf.constant([0.05, -0.05, 0.3, -0.3])
    ours = np.concatenate([bq.SteTern()(x[:2]).numpy(),
                           bq.SteTern(threshold_value=0.3)(x[2:]).numpy()])
    theirs = np.concatenate([lq.quantizers.SteTern()(x[:2]).numpy(),
                             lq.quantizers.SteTern(threshold_value=0.3)(x[2:]).numpy()])
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, [1, -1, 1, -1])


def test_ste_tern_twn_threshold():
    x = np.array([0.1, -0.2, 0.3, -1.0, 2.0, 0.0], dtype=F32)
    delta = 0.7 * np.abs(x).mean()  # 0.42
    y = bq.SteTern(ternary_weight_networks=True)(tf.constant(x)).numpy()
    np.testing.assert_array_equal(y, np.where(x > delta, 1, np.where(x < -delta, -1, 0)))


@pytest.mark.parametrize(
    ("k_bit", "x", "expected"),
    [
        (1, 0.5, 0.0),  # round(0.5) = 0 (half to even)
        (2, 0.5, 2 / 3),  # round(1.5) = 2
        (3, 0.5, 4 / 7),  # round(3.5) = 4
        (4, 0.5, 8 / 15),  # round(7.5) = 8
        (2, 1.2, 1.0),  # clipped to 1
        (2, -0.3, 0.0),  # clipped to 0
    ],
)
def test_dorefa_activations_round_half_to_even(k_bit, x, expected):
    y = bq.DoReFa(k_bit=k_bit)(tf.constant([x])).numpy()
    np.testing.assert_allclose(y, [expected], rtol=1e-6)


@pytest.mark.parametrize(("k_bit", "expected_at_zero"), [(1, -1.0), (2, 1 / 3), (3, 1 / 7)])
def test_dorefa_weights_mode(k_bit, expected_at_zero):
    x = tf.constant([0.0, 3.0, -3.0])
    y = bq.DoReFa(k_bit=k_bit, mode="weights")(x).numpy()
    # The largest |w| maps to +-1; w = 0 maps to t = 0.5, which rounds half to even.
    np.testing.assert_allclose(y, [expected_at_zero, 1.0, -1.0], rtol=1e-6, atol=1e-7)
    # An all-zero tensor does not divide by zero.
    assert np.isfinite(bq.DoReFa(k_bit=k_bit, mode="weights")(tf.zeros([3])).numpy()).all()


def test_dorefa_invalid_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        bq.DoReFa(mode="weight")


def test_dorefa_precision_is_k_bit():
    assert bq.DoReFa(k_bit=3).precision == 3
    assert bq.DoReFa(k_bit=3, mode="weights").get_config()["k_bit"] == 3


@pytest.mark.parametrize("name", LARQ_CLASSES)
def test_precision_matches_larq(name):
    kwargs = {"precision": 4} if name == "NoOp" else {}
    ours, theirs = _pair(name, kwargs)
    assert ours.precision == theirs.precision
    assert isinstance(ours, bq.Quantizer)


# ---------------------------------------------------------------------------------------
# Aliases and lookup
# ---------------------------------------------------------------------------------------


def test_larq_alias_table_was_read():
    # Guards the tests below against vacuously passing on an empty table.
    assert len(LARQ_ALIASES) >= 7
    assert LARQ_ALIASES["ste_sign"] == "SteSign"
    assert LARQ_ALIASES["dorefa_quantizer"] == "DoReFa"


@pytest.mark.parametrize("alias", sorted(LARQ_ALIASES))
def test_alias_resolves_like_larq(alias):
    cls_name = LARQ_ALIASES[alias]
    ours = bq.get(alias)
    assert type(ours) is getattr(bq, cls_name)
    theirs = getattr(lq.quantizers, cls_name)()  # Larq's alias = its class with defaults
    for key, value in _own_config(theirs).items():
        assert ours.get_config()[key] == value, key
    assert ours.precision == theirs.precision


def test_alias_defaults_explicitly():
    q = bq.get("ste_sign")
    assert isinstance(q, bq.SteSign) and q.clip_value == 1.0
    assert bq.get("swish_sign").beta == 5.0
    assert bq.get("ste_heaviside").clip_value == 1.0
    tern = bq.get("ste_tern")
    assert (tern.threshold_value, tern.ternary_weight_networks, tern.clip_value) == (
        0.05, False, 1.0)
    dorefa = bq.get("dorefa_quantizer")
    assert (dorefa.precision, dorefa.mode) == (2, "activations")
    assert bq.get("magnitude_aware_sign").clip_value == 1.0
    assert isinstance(bq.get("approx_sign"), bq.ApproxSign)


@pytest.mark.parametrize("name", [c for c in LARQ_CLASSES if c != "NoOp"])
def test_class_name_resolves(name):
    assert type(bq.get(name)) is getattr(bq, name)


def test_get_passes_through_and_rejects():
    q = bq.SteSign(clip_value=0.3)
    assert bq.get(q) is q
    assert bq.get(None) is None
    fn = bq.ste_sign
    assert bq.get(fn) is fn
    with pytest.raises(ValueError):
        bq.get(42)


def test_backward_compatible_class_aliases():
    assert bq.NoOpQuantizer is bq.NoOp
    assert bq.DoReFaQuantizer is bq.DoReFa


@pytest.mark.parametrize("typo", ["ste_sing", "SteSing", "aprox_sign"])
def test_unknown_name_suggests(typo):
    with pytest.raises(Exception, match="did you mean") as info:
        bq.get(typo)
    assert typo in str(info.value)
    with pytest.raises(Exception, match="did you mean"):
        QuantDense(2, kernel_quantizer=typo)


def test_noop_by_name_needs_precision():
    with pytest.raises(UserError, match="precision"):
        bq.get("NoOp")


# ---------------------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_get_config_from_config_round_trip(case):
    name, kwargs, _ = case
    q = getattr(bq, name)(**kwargs)
    config = q.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    clone = type(q).from_config(config)
    assert type(clone) is type(q)
    assert clone.get_config() == config
    x = _random_values(seed=11).reshape(-1, 4)
    np.testing.assert_array_equal(clone(tf.constant(x)).numpy(), q(tf.constant(x)).numpy())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_serialize_deserialize(case):
    name, kwargs, _ = case
    q = getattr(bq, name)(**kwargs)
    data = bq.serialize(q)
    assert data["class_name"] == name
    clone = bq.deserialize(data)
    assert type(clone) is type(q)
    assert _own_config(clone) == _own_config(q)
    assert bq.get(data).get_config() == q.get_config()


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_deserialize_larq_serialized_quantizer(case):
    name, kwargs, _ = case
    theirs = getattr(lq.quantizers, name)(**kwargs)
    ours = bq.deserialize(lq.quantizers.serialize(theirs))
    assert type(ours) is getattr(bq, name)
    assert _own_config(ours) == _own_config(theirs)


def test_serialize_none_and_strings():
    assert bq.serialize(None) is None
    assert bq.deserialize("ste_sign").get_config()["clip_value"] == 1.0


def test_flip_ratio_metric_accepted():
    q = bq.SteSign(metrics=["flip_ratio"])
    assert q.get_config()["metrics"] == ["flip_ratio"]
    assert bq.SteSign.from_config(q.get_config()).get_config()["metrics"] == ["flip_ratio"]
    layer = QuantDense(3, kernel_quantizer=bq.DoReFa(k_bit=2, metrics=["flip_ratio"]))
    assert layer.get_config()["kernel_quantizer"]["config"]["metrics"] == ["flip_ratio"]
    with pytest.raises(ValueError, match="flip_ratio"):
        bq.SteSign(metrics=["flip_rate"])


def _flip_ratio_oracle(kernels: list[np.ndarray]) -> float:
    """FlipRatio's documented result, computed here: the mean over consecutive updates
    of the share of binary values (sign, with sign(0) = +1) that changed."""
    signs = [np.where(k >= 0, 1, -1) for k in kernels]
    return float(np.mean([np.mean(a != b) for a, b in zip(signs[:-1], signs[1:], strict=True)]))


def test_flip_ratio_counts_the_flips_of_kernels_set_here():
    import bnn_cli.metrics  # noqa: F401 - an ImportError fails this test

    layer = QuantDense(5, kernel_quantizer=bq.SteSign(metrics=["flip_ratio"]),
                       kernel_constraint="weight_clip", use_bias=False)
    layer.build((None, 4))
    rng = np.random.default_rng(0)
    kernels = [rng.choice([-1.0, 1.0], size=(4, 5)).astype(F32) * rng.uniform(0.1, 1.0, (4, 5))
               for _ in range(4)]
    kernels[2] = -kernels[1]  # every value flips: 1.0 for that step
    kernels[3] = kernels[2].copy()  # none does: 0.0 for that one
    x = np.ones((2, 4), F32)
    results = []
    for kernel in kernels:
        layer.kernel.assign(kernel)
        layer(x)
        results.append(float(layer.kernel_quantizer.flip_ratio.result()))
    assert results[0] == 0.0  # nothing to compare the first values with
    for t in range(1, len(kernels)):
        assert results[t] == pytest.approx(_flip_ratio_oracle(kernels[:t + 1]), abs=1e-6)
    assert results[-1] == pytest.approx((np.mean(kernels[1] * kernels[0] < 0) + 1.0) / 3)


def test_flip_ratio_metric_in_training():
    import bnn_cli.metrics  # noqa: F401 - an ImportError fails this test

    keras.utils.set_random_seed(0)
    layer = QuantDense(2, kernel_quantizer=bq.SteSign(metrics=["flip_ratio"]),
                       kernel_constraint=keras.constraints.MaxNorm(1.0))
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(keras.optimizers.SGD(1.0), "mse")
    seen: list[list[np.ndarray]] = []  # each epoch's kernels, as each step's forward sees them

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append([])

        def on_train_batch_begin(self, batch, logs=None):
            seen[-1].append(layer.kernel.numpy().copy())

    x = np.random.default_rng(0).normal(size=(32, 4)).astype(F32)
    y = np.random.default_rng(1).normal(size=(32, 2)).astype(F32)
    history = model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
                        callbacks=[Record()])
    names = [k for k in history.history if "flip_ratio" in k]
    assert len(names) == 1, f"no flip_ratio metric among {list(history.history)}"
    # Each epoch starts the mean again: its first step counts no flips.
    expected = [_flip_ratio_oracle(kernels) for kernels in seen]
    assert all(len(kernels) == 4 for kernels in seen) and max(expected) > 0  # (flips happen)
    np.testing.assert_allclose(history.history[names[0]], expected, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Quantizers as activations
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", sorted(LARQ_ALIASES))
def test_activation_by_alias_equals_quantizer(alias):
    cls_name = LARQ_ALIASES[alias]
    x = _random_values(seed=5).reshape(-1, 4)
    x[0, :] = [0.0, 1.0, -1.0, 1e3]
    dy = _upstream(x.shape)
    act = keras.layers.Activation(alias)
    via_activation = _value_and_grad(act, x, dy)
    via_class = _value_and_grad(getattr(bq, cls_name)(), x, dy)
    _assert_same(via_activation, via_class)
    _assert_same(via_activation, _value_and_grad(getattr(lq.quantizers, cls_name)(), x, dy))
    assert keras.activations.get(alias).precision == getattr(bq, cls_name).precision


def test_ste_sign_object_equals_activation():
    x = _edge_values(1.0)
    dy = _upstream(x.shape)
    _assert_same(_value_and_grad(bq.SteSign(clip_value=1.0), x, dy),
                 _value_and_grad(keras.layers.Activation("ste_sign"), x, dy))
    _assert_same(_value_and_grad(bq.SteSign(clip_value=1.0), x, dy),
                 _value_and_grad(keras.layers.Dense(2, activation="ste_sign").activation,
                                 x, dy))


def _activation_models():
    keras.utils.set_random_seed(1)
    sequential = keras.Sequential([
        keras.Input((6,)),
        QuantDense(512, activation="ste_sign"),
        keras.layers.Dense(10, activation="ste_sign"),
        keras.layers.Activation("approx_sign"),
        keras.layers.Dense(4),
        keras.layers.Activation("ste_sign"),
    ])
    inputs = keras.Input((6,))
    h = QuantDense(16, activation="ste_heaviside", input_quantizer="ste_sign")(inputs)
    h = keras.layers.Dense(8, activation="swish_sign")(h)
    h = keras.layers.Activation("ste_tern")(h)
    functional = keras.Model(inputs, keras.layers.Dense(3, activation="ste_sign")(h))
    return {"sequential": sequential, "functional": functional}


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_activation_models_save_and_reload(tmp_path, kind, fmt):
    model = _activation_models()[kind]
    x = np.random.default_rng(2).normal(size=(8, 6)).astype(F32)
    y = model.predict(x, verbose=0)
    assert set(np.unique(y)) <= {-1.0, 1.0}
    path = tmp_path / f"model.{fmt}"
    model.save(path)
    reloaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), y)
    names = [getattr(layer.activation, "name", None) for layer in reloaded.layers
             if hasattr(layer, "activation")]
    assert "ste_sign" in names


# ---------------------------------------------------------------------------------------
# Custom quantizers
# ---------------------------------------------------------------------------------------


@tf.custom_gradient
def identity_sign(x):
    """Sign (sign(0) = +1) with an identity gradient."""
    return tf.where(x < 0, -tf.ones_like(x), tf.ones_like(x)), lambda dy: dy


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _dense_pair(quantizer_ours, quantizer_theirs, units=3, in_dim=4):
    ours = QuantDense(units, input_quantizer=quantizer_ours, kernel_quantizer=quantizer_ours,
                      kernel_constraint=keras.constraints.MaxNorm(10.0))
    theirs = lq.layers.QuantDense(units, input_quantizer=quantizer_theirs,
                                  kernel_quantizer=quantizer_theirs,
                                  kernel_constraint=keras.constraints.MaxNorm(10.0))
    ours.build((None, in_dim))
    theirs.build((None, in_dim))
    rng = np.random.default_rng(4)
    weights = [rng.uniform(-1.5, 1.5, size=w.shape).astype(F32) for w in ours.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs, weights


def _layer_value_and_grads(layer, x, dy):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    grads = tape.gradient(y, [x, *layer.trainable_weights], output_gradients=dy)
    return y.numpy(), [g.numpy() for g in grads]


def test_custom_gradient_function_as_layer_quantizers():
    ours, theirs, (w, b) = _dense_pair(identity_sign, identity_sign)
    x = np.random.default_rng(6).normal(size=(5, 4)).astype(F32)
    dy = _upstream((5, 3))
    y, grads = _layer_value_and_grads(ours, x, dy)
    y_ref, grads_ref = _layer_value_and_grads(theirs, x, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)
    sx, sw = np.where(x < 0, -1.0, 1.0), np.where(w < 0, -1.0, 1.0)
    np.testing.assert_allclose(y, sx @ sw + b, rtol=1e-6)
    np.testing.assert_allclose(grads[0], dy.numpy() @ sw.T, rtol=1e-5)  # identity grad
    np.testing.assert_allclose(grads[1], sx.T @ dy.numpy(), rtol=1e-5)


def test_register_custom_function_by_string(tmp_path):
    name = _unique("my_sign")

    @bq.register_quantizer(name=name, precision=1)
    def my_sign(x):
        return identity_sign(x)

    assert bq.get(name) is my_sign
    assert my_sign.precision == 1
    x = np.array([[-2.0, -0.0, 0.3, 5.0]], dtype=F32)
    # As a layer quantizer ...
    layer = QuantDense(2, input_quantizer=name, kernel_quantizer=name,
                       kernel_constraint=keras.constraints.MaxNorm(1.0))
    assert layer.input_quantizer is my_sign and layer.kernel_quantizer is my_sign
    layer.build((None, 4))
    np.testing.assert_array_equal(layer.quantized_weights()["kernel"].numpy(),
                                  np.where(layer.kernel.numpy() < 0, -1.0, 1.0))
    assert layer.kernel.precision == 1
    # ... and as an activation, with the identity gradient.
    dy = tf.constant([[1.0, 2.0, 3.0, 4.0]])
    y, g = _value_and_grad(keras.layers.Activation(name), x, dy)
    np.testing.assert_array_equal(y, [[-1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(g, dy.numpy())
    np.testing.assert_array_equal(keras.layers.Dense(4, activation=name).activation(x), y)
    # Serialized by name.
    assert layer.get_config()["kernel_quantizer"] == name


def test_register_custom_gradient_object_directly():
    name = _unique("identity_sign")
    bq.register_quantizer(identity_sign, name=name)
    assert bq.get(name) is identity_sign
    assert bq.serialize(identity_sign) == name
    y = keras.layers.Activation(name)(tf.constant([-1.0, 0.0]))
    np.testing.assert_array_equal(y.numpy(), [-1.0, 1.0])


def test_register_taken_name_needs_replace():
    name = _unique("taken")

    def first(x):
        return bq.ste_sign(x)

    def second(x):
        return 2.0 * bq.ste_sign(x)

    bq.register_quantizer(first, name=name)
    with pytest.raises(UserError, match="already registered"):
        bq.register_quantizer(second, name=name)
    assert bq.get(name) is first
    bq.register_quantizer(second, name=name, replace=True)
    assert bq.get(name) is second
    y = keras.layers.Activation(name)(tf.constant([-3.0, 3.0]))
    np.testing.assert_array_equal(y.numpy(), [-2.0, 2.0])
    # Built-in names are protected too.
    with pytest.raises(UserError, match="already registered"):
        bq.register_quantizer(second, name="ste_sign")
    with pytest.raises(UserError, match="already registered"):
        bq.register_quantizer(second, name=_unique("x"), aliases=("approx_sign",))
    assert isinstance(bq.get("ste_sign"), bq.SteSign)


def test_register_non_layer_class_rejected():
    class NotAQuantizer:
        pass

    with pytest.raises(UserError, match="Quantizer"):
        bq.register_quantizer(NotAQuantizer, name=_unique("bad"))


def _make_scaled_sign_class(base):
    """A Larq-style quantizer class: subclass the base class and override ``call``."""

    class ScaledSign(base):
        precision = 1

        def __init__(self, scale: float = 2.0, **kwargs):
            self.scale = scale
            super().__init__(**kwargs)

        def call(self, inputs):
            return self.scale * bq.ste_sign(inputs)

        def get_config(self):
            return {**super().get_config(), "scale": self.scale}

    return ScaledSign


class HalfSign(bq.BaseQuantizer):
    """A bnn_cli-style quantizer class that implements ``quantize``."""

    precision = 1

    def quantize(self, inputs):
        return 0.5 * bq.ste_sign(inputs)


@pytest.mark.parametrize("style", ["call_override", "quantize_override"])
def test_registered_class_quantizer(tmp_path, style):
    cls = _make_scaled_sign_class(bq.Quantizer) if style == "call_override" else HalfSign
    scale = 2.0 if style == "call_override" else 0.5
    name, alias = _unique("ScaledSign"), _unique("scaled_sign")
    bq.register_quantizer(cls, name=name, aliases=(alias,))
    x = tf.constant([[-1.5, 0.0, 0.7]])
    for ident in (name, alias):
        q = bq.get(ident)
        assert isinstance(q, cls)
        np.testing.assert_allclose(q(x).numpy(), [[-scale, scale, scale]])
    layer = QuantDense(2, kernel_quantizer=alias,
                       kernel_constraint=keras.constraints.MaxNorm(1.0))
    assert isinstance(layer.kernel_quantizer, cls)
    assert bq.serialize(layer.kernel_quantizer)["class_name"] == name
    # As an activation, by its alias: the same values as the class with defaults.
    np.testing.assert_allclose(keras.layers.Activation(alias)(x).numpy(),
                               [[-scale, scale, scale]])


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_model_with_registered_custom_quantizers_reloads(tmp_path, fmt):
    fn_name = _unique("my_fn_sign")
    bq.register_quantizer(name=fn_name, precision=1)(lambda x: identity_sign(x))
    cls_name, cls_alias = _unique("MyScaled"), _unique("my_scaled")

    class HalfSign2(HalfSign):
        pass

    bq.register_quantizer(HalfSign2, name=cls_name, aliases=(cls_alias,))
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((5,)),
        QuantDense(6, input_quantizer=fn_name, kernel_quantizer=fn_name,
                   kernel_constraint=keras.constraints.MaxNorm(1.0)),
        QuantDense(4, input_quantizer=cls_alias, kernel_quantizer=cls_alias,
                   kernel_constraint=keras.constraints.MaxNorm(1.0), activation=fn_name),
        keras.layers.Activation(cls_alias),
    ])
    x = np.random.default_rng(9).normal(size=(7, 5)).astype(F32)
    y = model.predict(x, verbose=0)
    path = tmp_path / f"custom.{fmt}"
    model.save(path)
    reloaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), y)
    assert bq.serialize(reloaded.layers[0].kernel_quantizer) == fn_name


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_unregistered_custom_function_fails_clearly_at_save(tmp_path, fmt):
    def unregistered_sign(x):
        return identity_sign(x)

    model = keras.Sequential([keras.Input((3,)),
                              QuantDense(2, kernel_quantizer=unregistered_sign)])
    model.predict(np.ones((1, 3), F32), verbose=0)  # usable before saving
    with pytest.raises(UserError, match="register_quantizer") as info:
        model.save(tmp_path / f"bad.{fmt}")
    assert "unregistered_sign" in str(info.value)


def test_tanh_is_real_to_binarys_soft_sign_with_its_own_gradient():
    import numpy as np
    import tensorflow as tf

    from bnn_cli import quantizers

    q = quantizers.get("tanh")
    x = tf.constant([-3.0, -0.5, 0.0, 0.5, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x)
    np.testing.assert_allclose(y.numpy(), np.tanh(x.numpy()), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), 1 - np.tanh(x.numpy()) ** 2,
                               rtol=1e-5, atol=1e-6)
    assert getattr(q, "precision", None) is None  # real-valued: not counted as binary


@pytest.mark.parametrize("name", ["ste_sign", "approx_sign"])
def test_sign_pseudo_gradients_bit_for_bit_as_larq(name):
    """The training-speed rewrites of the pseudo-gradients (a scalar zero in the mask,
    approx_sign's mask as a maximum) keep Larq's values to the last bit: at the clip
    boundary, one ulp either side of it, at zero and far out, on a large random tensor."""
    ulp = np.float32(np.spacing(np.float32(1.0)))
    edges = [1.0, -1.0, 1.0 + 2 * ulp, 1.0 - ulp, -1.0 - 2 * ulp, -1.0 + ulp, 0.0, -0.0,
             0.5, -0.999, 3.0, -1e6]
    x = np.concatenate([np.array(edges, F32),
                        np.random.default_rng(3).normal(0, 1.5, 4096).astype(F32)])
    ours = _value_and_grad(getattr(bq, name), x)
    theirs = _value_and_grad(getattr(lq.quantizers, name), x)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("clip_value", [1.0, 0.3, 1e-3, 3.14159, 100.0, 1e30])
def test_straight_through_mask_bit_for_bit_as_larq(clip_value, dtype):
    """The one-op mask (float32: a fake quantization's gradient, whose bounds must come
    out exactly +-c) and the select it replaces (the half-precision types) pass exactly
    Larq's gradient, in a traced step as in training: at +-c, one ulp either side of it,
    at zero, far out and at NaN, for clip values that are not powers of two."""
    c = np.float32(clip_value)
    edges = [c, -c, np.nextafter(c, F32(0)), -np.nextafter(c, F32(0)),
             np.nextafter(c, F32(np.inf)), -np.nextafter(c, F32(np.inf)), 0.0, -0.0,
             np.inf, -np.inf, np.nan]
    rng = np.random.default_rng(5)
    x = tf.cast(np.concatenate([np.array(edges, F32),
                                (rng.normal(0, 1.5, 4096) * c).astype(F32)]), dtype)
    dy = tf.cast(_upstream(x.shape), dtype)

    def traced(fn):
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x, clip_value=clip_value)
            return y, tape.gradient(y, x, output_gradients=dy)
        return [t.numpy().astype(F32) for t in step(x)]

    ours, theirs = traced(bq.ste_sign), traced(lq.quantizers.ste_sign)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])
