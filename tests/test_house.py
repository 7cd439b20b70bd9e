"""The house: each public module imports first in a fresh process, the import graph has no
cycles, and the rooms import downwards only (the import-linter contract).

tests/conftest.py imports TensorFlow and Larq before any bnn_cli module, which hides
import-order bugs; so every check of what a user imports first runs in a new interpreter
started from an empty folder, with nothing imported before the module under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each public module, and a few lines that use its main names as a Larq user would after
# `import <module>` alone. Where a module registers components, a model saved with them
# must load again through plain Keras (the built-ins are registered once Keras is in).
USES = {
    "bnn_cli": """
        import bnn_cli as bnn
        import tf_keras as keras
        x = keras.Input((4,))
        y = bnn.layers.QuantDense(2, kernel_quantizer="ste_sign",
                                  input_quantizer=bnn.quantizers.SteSign())(x)
        m = keras.Model(x, y)
        m.save(f"{tmp}/m.keras")
        again = keras.models.load_model(f"{tmp}/m.keras")
        assert type(again.layers[1]).__name__ == "QuantDense", again.layers
        assert callable(bnn.train) and callable(bnn.check)
    """,
    "bnn_cli.quantizers": """
        import bnn_cli.quantizers as bq
        import tensorflow as tf
        out = bq.SteSign()(tf.constant([-0.5, 0.0, 2.0])).numpy().tolist()
        assert out == [-1.0, 1.0, 1.0], out
        assert bq.get("ste_sign") is not None
    """,
    "bnn_cli.layers": """
        import bnn_cli.layers as bl
        import numpy as np
        import tf_keras as keras
        layer = bl.QuantConv2D(3, 3, kernel_quantizer="ste_sign", input_quantizer="ste_sign")
        y = layer(np.ones((1, 5, 5, 2), np.float32))
        assert tuple(y.shape) == (1, 3, 3, 3)
        x = keras.Input((4,))
        m = keras.Model(x, bl.QuantDense(2, kernel_quantizer="ste_sign")(x))
        m.save(f"{tmp}/m.keras")
        assert keras.models.load_model(f"{tmp}/m.keras").count_params() == 10
    """,
    "bnn_cli.constraints": """
        import bnn_cli.constraints as bc
        import tensorflow as tf
        out = bc.WeightClip(0.5)(tf.constant([-2.0, 0.2, 3.0])).numpy().tolist()
        assert out == [-0.5, 0.20000000298023224, 0.5], out
    """,
    "bnn_cli.activations": """
        import bnn_cli.activations as ba
        import tensorflow as tf
        assert ba.hard_tanh(tf.constant([-3.0, 0.5])).numpy().tolist() == [-1.0, 0.5]
    """,
    "bnn_cli.metrics": """
        import bnn_cli.metrics as bm
        assert bm.FlipRatio().name == "flip_ratio"
        with bm.metrics_scope(["flip_ratio"]):
            assert "flip_ratio" in bm.get_training_metrics()
    """,
    "bnn_cli.optimizers": """
        import bnn_cli.optimizers as bo
        import tf_keras as keras
        case = bo.CaseOptimizer((bo.Bop.is_binary_variable, bo.Bop()),
                                default_optimizer=keras.optimizers.legacy.Adam(0.01))
        assert case.get_config() and bo.Bop.is_binary_variable is not None
    """,
    "bnn_cli.callbacks": """
        import bnn_cli.callbacks as bcb
        assert bcb.HyperparameterScheduler(lambda epoch: 0.1, "gamma")
    """,
    "bnn_cli.models": """
        import bnn_cli.models as bmod
        import bnn_cli.layers as bl
        import tf_keras as keras
        x = keras.Input((4,))
        m = keras.Model(x, bl.QuantDense(2, kernel_quantizer="ste_sign")(x))
        lines = []
        bmod.summary(m, print_fn=lines.append)
        assert any("quant_dense" in x for x in lines), lines
        assert any("Total params" in x for x in lines), lines
    """,
    "bnn_cli.schedules": """
        import bnn_cli.schedules as bs
        s = bs.EpochSchedule({"type": "constant", "initial": 0.5, "decay_rate": 0.96,
                              "decay_epochs": 1.0, "boundaries": [], "values": [],
                              "alpha": 0.0, "warmup_epochs": 0.0}, 10, 3)
        assert float(s(5)) == 0.5
    """,
    "bnn_cli.math": """
        import bnn_cli.math as bmath
        import tensorflow as tf
        assert bmath.sign(tf.constant([0.0, -2.0])).numpy().tolist() == [1.0, -1.0]
    """,
    "bnn_cli.context": """
        import bnn_cli.context as ctx
        assert not ctx.should_quantize()
        with ctx.quantized_scope(True):
            assert ctx.should_quantize()
    """,
    "bnn_cli.utils": """
        import bnn_cli.utils as bu
        assert bu.memory_as_readable_str(2048 * 8) == bu.memory_as_readable_str(16384)
    """,
    "bnn_cli.quantized_variable": """
        import bnn_cli.quantized_variable as qv
        assert qv.QuantizedVariable is not None and qv.QuantizedVariableSpec is not None
    """,
    "bnn_cli.api": """
        import bnn_cli.api as api
        report = api.check({"model": {"layers": [{"type": "Flatten"},
                                                 {"type": "QuantDense", "units": 10}]},
                            "data": {"dataset": "sklearn_digits"}})
        assert report.summary.total_params > 0, report
    """,
}


def _fresh(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module", sorted(USES))
def test_a_public_module_imports_first_in_a_fresh_process(module, tmp_path):
    body = textwrap.dedent(USES[module])
    first = body.strip().splitlines()[0]
    assert first.startswith(("import bnn_cli", "from bnn_cli")), first
    code = f"tmp = {str(tmp_path)!r}\n{first}\nimport sys\n" \
           "assert not any(m.startswith('larq') for m in sys.modules)\n" + body
    proc = _fresh(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("form", ["from bnn_cli import layers", "import bnn_cli.layers as bl",
                                  "from bnn_cli.layers import QuantDense"])
def test_the_import_forms_of_the_issue_work(form, tmp_path):
    proc = _fresh(form, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("given,expected", [(None, "1"), ("0", "0")])
def test_importing_bnn_first_turns_on_onednn_unless_the_user_chose(given, expected,
                                                                   tmp_path, monkeypatch):
    """TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI,
    BF16 or AMX; bnn's default turns them on before TensorFlow loads (convolution
    gradients about 2x faster on an AVX2 CPU), and a user's own setting wins."""
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    if given is not None:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", given)
    proc = _fresh("import bnn_cli, os, sys\n"
                  "assert 'tensorflow' not in sys.modules\n"
                  "print(os.environ['TF_ENABLE_ONEDNN_OPTS'])", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == expected


def test_the_import_graph_has_no_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("bnn_cli")
    cycles = []
    for module in sorted(graph.modules):
        for other in graph.find_modules_directly_imported_by(module):
            if module < other and graph.chain_exists(importer=other, imported=module):
                cycles.append(f"{module} <-> {other}")
    assert not cycles, cycles


def test_the_layers_contract_holds():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout
