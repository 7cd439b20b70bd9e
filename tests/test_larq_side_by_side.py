"""Larq and bnn_cli in one process, in both import orders.

Both libraries register the same plain names with Keras, and an import cannot be undone,
so each order runs in a fresh Python process. There, every quantizer alias is looked up
through both libraries' own string lookups; the forward values and pseudo-gradients are
sent back and compared here, and so is what each lookup built.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("larq", reason="Larq is a test extra: pip install -e '.[test]'")

PROBE = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if sys.argv[1] == "larq-first":
        import larq as lq
        import bnn_cli.quantizers as bq
    else:
        import bnn_cli.quantizers as bq
        import larq as lq
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    import bnn_cli as bnn
    from bnn_cli.registry import REGISTRY

    x = tf.Variable(np.linspace(-2.0, 2.0, 41, dtype="float32").reshape(41, 1)
                    * np.ones((1, 3), "float32"))
    w = tf.constant(np.random.default_rng(0).normal(size=(41, 3)).astype("float32"))

    def probe(quantizer):
        with tf.GradientTape() as tape:
            y = quantizer(x)
            loss = tf.reduce_sum(y * w)
        grad = tape.gradient(loss, x)
        return {"module": type(quantizer).__module__, "value": y.numpy().tolist(),
                "grad": grad.numpy().tolist()}

    def layer_quantizer(lib, alias):
        layer = lib.layers.QuantDense(3, input_quantizer=alias, kernel_quantizer=alias,
                                      kernel_constraint="weight_clip")
        layer(x)
        return type(layer.input_quantizer).__module__

    out = {}
    for entry in REGISTRY.entries("quantizer"):
        for alias in entry.aliases:
            if alias in ("xnor_weight_scale", "magnitude_aware_sign_unclipped"):
                continue  # bnn_cli's own (the Larq zoo's, not Larq's): nothing to compare
            out[alias] = {"larq": probe(lq.quantizers.get(alias)),
                          "bnn": probe(bq.get(alias)),
                          "larq_layer": layer_quantizer(lq, alias),
                          "bnn_layer": layer_quantizer(bnn, alias)}
    try:
        activation = keras.layers.Activation("ste_sign")(x)
        out["activation"] = activation.numpy().tolist()
    except Exception as exc:
        out["activation"] = f"{type(exc).__name__}: {exc}"
    out["keras_ste_sign"] = repr(keras.activations.get("ste_sign"))
    print(json.dumps(out))
""")


def _probe(order: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, order], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["larq-first", "bnn-first"])
def side_by_side(request) -> tuple[str, dict]:
    return request.param, _probe(request.param)


def test_every_alias_is_each_librarys_own(side_by_side):
    _, out = side_by_side
    aliases = [k for k in out if k not in ("activation", "keras_ste_sign")]
    assert len(aliases) == 7
    for alias in aliases:
        assert out[alias]["larq"]["module"] == "larq.quantizers", alias
        assert out[alias]["larq_layer"] == "larq.quantizers", alias
        assert out[alias]["bnn"]["module"] == "bnn_cli.quantizers", alias
        assert out[alias]["bnn_layer"] == "bnn_cli.quantizers", alias


def test_values_and_pseudo_gradients_agree_through_both_lookups(side_by_side):
    _, out = side_by_side
    for alias, found in out.items():
        if alias in ("activation", "keras_ste_sign"):
            continue
        np.testing.assert_allclose(found["bnn"]["value"], found["larq"]["value"],
                                   rtol=1e-6, err_msg=alias)
        np.testing.assert_allclose(found["bnn"]["grad"], found["larq"]["grad"],
                                   rtol=1e-5, atol=1e-6, err_msg=alias)
        assert np.any(np.asarray(found["bnn"]["grad"]) != 0), alias  # a real gradient


def test_keras_activation_by_name(side_by_side):
    order, out = side_by_side
    if order == "larq-first":  # bnn_cli took the name with a callable that works
        assert out["keras_ste_sign"] == "NamedActivation('ste_sign')"
        values = np.asarray(out["activation"])
        assert set(np.unique(values)) == {-1.0, 1.0}
    else:  # Larq, imported last, put its class back: Keras calls it as a constructor,
        # as it does with Larq alone (README: "Larq and bnn_cli in one process")
        assert "larq.quantizers.SteSign" in out["keras_ste_sign"]
        assert not isinstance(out["activation"], list)


BNN_ONLY = textwrap.dedent("""
    import json, sys
    import bnn_cli.quantizers as bq
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    from bnn_cli.registry import NamedActivation, keras_objects

    table = keras.utils.get_custom_objects()
    x = tf.constant(np.linspace(-2.0, 2.0, 9, dtype="float32"))
    out = {"larq_loaded": "larq" in sys.modules, "not_ours": [], "built": {}}
    for name, obj in keras_objects().items():
        if table.get(name) is not obj:
            out["not_ours"].append(name)
        if isinstance(obj, NamedActivation):
            # As Larq and Keras's legacy loader build from a table entry, and as
            # Keras's activation lookup hands it back.
            built = table[name].from_config({})
            same = keras.activations.get(name)(x).numpy().tolist() == built(x).numpy().tolist()
            out["built"][name] = same
    print(json.dumps(out))
""")


def test_without_larq_bnn_cli_owns_its_names_and_each_builds():
    proc = subprocess.run([sys.executable, "-c", BNN_ONLY], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["larq_loaded"] is False
    assert out["not_ours"] == []
    assert len(out["built"]) >= 9  # seven quantizer aliases, hard_tanh, leaky_tanh
    assert all(out["built"].values()), out["built"]
