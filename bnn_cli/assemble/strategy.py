"""tf.distribute: the strategy a config's ``runtime.strategy`` names, and who writes.

``default`` trains on one device; ``mirrored`` on every local GPU (or the devices named
in ``runtime.devices``); ``multi_worker_mirrored`` on the hosts that TensorFlow's
standard ``TF_CONFIG`` environment variable describes (one process per host, each with
its local GPUs, or its CPU); ``tpu`` on the cores ``TPUClusterResolver`` finds. These
are TensorFlow's own strategies; this module only chooses, checks and starts one.

Checking (:func:`runtime_problems`, called by the config checks) needs no strategy: it
reads ``TF_CONFIG`` and the machine's devices, so a wrong cluster description or a batch
size that does not split over the replicas is a config error before anything runs or is
written. :func:`start` creates the strategy; a multi-worker strategy must be created
before TensorFlow initializes its runtime ("Collective ops must be configured at program
startup"), which is why the checks call it right after reading the config.

Only the chief (the ``chief`` task, else ``worker`` 0) writes the run directory. The
other workers run the same loop, which every worker must (saving a checkpoint and
reading batch-norm statistics are collective operations), into a temporary folder that
is deleted when they end.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from bnn_cli._keras import tf
from bnn_cli.assemble import machine
from bnn_cli.config.schema import RuntimeConfig

TF_CONFIG = "TF_CONFIG"


# ---------------------------------------------------------------------------------------
# The cluster (TF_CONFIG)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """The parts of ``TF_CONFIG`` that training needs."""

    jobs: dict[str, list[str]]  # "chief" / "worker" -> host:port addresses
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return len(self.jobs.get("chief", [])) + len(self.jobs.get("worker", []))

    @property
    def is_chief(self) -> bool:
        if "chief" in self.jobs:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def task(self) -> str:
        return f"{self.task_type} {self.task_index}"


EXAMPLE_TF_CONFIG = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


class ClusterError(ValueError):
    """``TF_CONFIG`` is missing or does not describe a multi-worker cluster."""


def cluster_from_env(environ: dict[str, str] | None = None) -> Cluster:
    """The cluster ``TF_CONFIG`` describes; :class:`ClusterError` says what is wrong."""
    env = os.environ if environ is None else environ
    text = env.get(TF_CONFIG, "").strip()
    fix = (f"set it on every host before `bnn train`, the same cluster everywhere and "
           f"each host's own task, e.g. TF_CONFIG='{EXAMPLE_TF_CONFIG}' (index 1 on host2)")
    if not text:
        raise ClusterError(f"the environment variable {TF_CONFIG} is not set; {fix}")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClusterError(f"{TF_CONFIG} is not JSON ({exc}); {fix}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict) \
            or not isinstance(spec.get("task"), dict):
        raise ClusterError(f"{TF_CONFIG} needs a \"cluster\" and a \"task\" object; {fix}")
    jobs = spec["cluster"]
    unknown = sorted(set(jobs) - {"chief", "worker"})
    if unknown:
        raise ClusterError(f"{TF_CONFIG} names the job {unknown[0]!r}; "
                           "multi_worker_mirrored trains with \"worker\" tasks (and at most "
                           f"one \"chief\") only; {fix}")
    for name, hosts in jobs.items():
        if not isinstance(hosts, list) or not hosts or not all(
                isinstance(h, str) and re.fullmatch(r"\S+:\d+", h) for h in hosts):
            raise ClusterError(f"{TF_CONFIG}'s cluster.{name} must be a list of "
                               f"\"host:port\" addresses, got {hosts!r}; {fix}")
    if len(jobs.get("chief", [])) > 1:
        raise ClusterError(f"{TF_CONFIG} names {len(jobs['chief'])} chiefs; a cluster has "
                           "at most one")
    if "worker" not in jobs and "chief" not in jobs:
        raise ClusterError(f"{TF_CONFIG}'s cluster names no \"worker\"; {fix}")
    task = spec["task"]
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in jobs:
        raise ClusterError(f"{TF_CONFIG}'s task.type is {kind!r}, which is not a job of its "
                           f"cluster ({', '.join(sorted(jobs))}); {fix}")
    if not isinstance(index, int) or isinstance(index, bool) or not \
            0 <= index < len(jobs[kind]):
        raise ClusterError(f"{TF_CONFIG}'s task.index is {index!r}, but cluster.{kind} has "
                           f"{len(jobs[kind])} address(es): use 0 to {len(jobs[kind]) - 1}, "
                           "a different one on each host")
    return Cluster({k: list(v) for k, v in jobs.items()}, kind, index)


def current_cluster() -> Cluster | None:
    """The cluster of a running multi-worker training, else None."""
    return _STARTED.get("cluster")


def is_chief() -> bool:
    """Whether this process writes the run directory (True outside a cluster)."""
    cluster = current_cluster()
    return cluster is None or cluster.is_chief


# ---------------------------------------------------------------------------------------
# Devices and replicas
# ---------------------------------------------------------------------------------------


def _device(name: str) -> tuple[str, int]:
    """``"/gpu:1"`` -> ("GPU", 1)."""
    kind, index = re.fullmatch(r"/?(?:device:)?(\w+):(\d+)", name).groups()
    return kind.upper(), int(index)


def _device_name(name: str) -> str:
    kind, index = _device(name)
    return f"/{kind.lower()}:{index}"


def _gpus() -> int:
    return len(tf.config.list_physical_devices("GPU"))


def _tpus() -> int:
    return len(tf.config.list_physical_devices("TPU"))


def _has_tpu() -> bool:
    """A local TPU (a TPU VM), or one named by the environment (TPU_NAME, Colab's)."""
    return bool(_tpus() or os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"))


def replica_count(runtime: RuntimeConfig) -> int:
    """How many replicas the strategy will train on (the batch splits over them), as
    far as this host can tell before the strategy exists."""
    if runtime.strategy == "mirrored":
        return len(runtime.devices) if runtime.devices else max(1, _gpus())
    if runtime.strategy == "multi_worker_mirrored":
        return cluster_from_env().num_workers * max(1, _gpus())
    if runtime.strategy == "tpu":
        return max(1, _tpus() or 8)  # (a remote TPU: a v2/v3-8's cores, checked at start)
    return 1


def runtime_problems(runtime: RuntimeConfig) -> list[tuple[tuple, str]]:
    """What stops this runtime from starting on this machine: (key path, message)."""
    path = ("runtime", "strategy")
    if runtime.devices is not None and runtime.strategy != "mirrored":
        return [(("runtime", "devices"), "devices are chosen for the mirrored strategy only; "
                 "remove runtime.devices or set runtime.strategy: mirrored")]
    if runtime.strategy == "multi_worker_mirrored":
        try:
            cluster_from_env()
        except ClusterError as exc:
            return [(path, f"multi_worker_mirrored reads the cluster from {TF_CONFIG}, but "
                           f"{exc}")]
    if runtime.strategy == "tpu" and not _has_tpu():
        return [(path, "the tpu strategy needs a TPU, and this machine has none (no TPU "
                       "device, no TPU_NAME); train with runtime.strategy: default or "
                       "mirrored here, or run on a TPU VM (or set TPU_NAME)")]
    if runtime.strategy == "mirrored" and runtime.devices:
        names = [_device_name(d) for d in runtime.devices]
        for i, name in enumerate(names):
            kind, index = _device(name)
            if name in names[:i]:
                return [(("runtime", "devices", i), f"{name} is named twice; name each "
                         "device once")]
            if kind == "GPU" and index >= _gpus():
                return [(("runtime", "devices", i), f"{name} does not exist: this machine "
                         f"has {_gpus()} GPU(s); name /gpu:0 to /gpu:{max(0, _gpus() - 1)} "
                         "or leave runtime.devices out to use every GPU")]
    return []


def batch_problem(runtime: RuntimeConfig, batch_size: int) -> str | None:
    """The global batch must split evenly over the replicas."""
    replicas = replica_count(runtime)
    if batch_size % replicas == 0:
        return None
    lower = batch_size - batch_size % replicas
    return (f"{batch_size} is the global batch, split over the {replicas} replicas of "
            f"runtime.strategy {runtime.strategy}, and does not divide by {replicas}; use "
            f"a multiple of {replicas}, e.g. {lower or replicas} or {lower + replicas}")


# ---------------------------------------------------------------------------------------
# Starting the strategy
# ---------------------------------------------------------------------------------------


_STARTED: dict[str, Any] = {}  # "key", "strategy", "cluster": the strategy of this process


def start(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    """Create (once per process) the strategy ``runtime`` names; checked already."""
    key = (runtime.strategy, tuple(runtime.devices or ()))
    if _STARTED.get("key") == key:
        return _STARTED["strategy"]
    if _STARTED.get("key", (None,))[0] in ("multi_worker_mirrored", "tpu"):
        raise RuntimeError(f"this process already trains with {_STARTED['key'][0]}; "
                           "start another process for another strategy")
    cluster = None
    if runtime.strategy == "mirrored":
        devices = [_device_name(d) for d in runtime.devices] if runtime.devices else None
        _split_cpu(devices or [])
        strategy = tf.distribute.MirroredStrategy(devices)
    elif runtime.strategy == "multi_worker_mirrored":
        cluster = cluster_from_env()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif runtime.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    else:
        strategy = tf.distribute.get_strategy()  # the default: one device, no-op scope
    _STARTED.update(key=key, strategy=strategy, cluster=cluster)
    return strategy


def _split_cpu(devices: list[str]) -> None:
    """Virtual CPU devices for ``/cpu:N`` beyond the machine's CPUs (to run a mirrored
    config on a machine without GPUs, as TensorFlow's and Larq's tests do)."""
    wanted = 1 + max([_device(d)[1] for d in devices if _device(d)[0] == "CPU"], default=0)
    if wanted <= 1:
        return
    if _initialized():
        if len(tf.config.list_logical_devices("CPU")) >= wanted:
            return
        raise RuntimeError(f"runtime.devices names /cpu:{wanted - 1}, but the CPU can be "
                           "split into virtual devices only before TensorFlow starts; "
                           "start a new process")
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * wanted)


def _initialized() -> bool:
    from tensorflow.python.eager import context

    return bool(context.context()._initialized)  # noqa: SLF001 - no public flag exists


def strategy() -> tf.distribute.Strategy:
    """The strategy this process trains with (TensorFlow's default one until started)."""
    return _STARTED.get("strategy") or tf.distribute.get_strategy()


def workers() -> int:
    """How many processes train together (1 without a multi-worker cluster)."""
    cluster = current_cluster()
    return cluster.num_workers if cluster else 1


def replicas() -> int:
    return strategy().num_replicas_in_sync


# Tensor cores (float16 matrix units) came with compute capability 7.0 (Volta).
TENSOR_CORES = (7, 0)


def precision(runtime: RuntimeConfig) -> str | None:
    """The Keras policy this process trains in (None: float32): ``runtime.mixed_precision``,
    or for ``auto`` what the devices do well.

    ``auto`` is ``mixed_float16`` where the strategy trains on GPUs and every one has
    tensor cores, and float32 elsewhere. On CPUs too, even those with native bfloat16
    (AVX-512 BF16, AMX; :mod:`bnn_cli.assemble.machine`): ``mixed_bfloat16`` is faster
    there, but it has not been shown to cost a BNN nothing (configs/
    fashion_mnist_bnn_fast.yaml, seed 1, on an AVX-512 BF16 EPYC: 1.4x faster epochs,
    92.32 % test against 92.81 %), so ``auto`` does not choose it (name it to use it).
    """
    if runtime.mixed_precision != "auto":
        return runtime.mixed_precision
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus or not any("gpu" in d.lower() for d in runtime.devices or ["gpu"]):
        return None  # (runtime.devices may name only virtual CPUs)
    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability")
                    for g in gpus]
    return "mixed_float16" if all(c and tuple(c) >= TENSOR_CORES for c in capabilities) \
        else None


def describe(runtime: RuntimeConfig) -> dict[str, Any]:
    """run.json's ``runtime``: what the run trains on (for ``auto``, what it chose)."""
    chosen = {"mixed_precision": precision(runtime)}
    if runtime.mixed_precision == "auto":
        chosen["mixed_precision_setting"] = "auto"
    return {"strategy": runtime.strategy, "replicas": replicas(), "workers": workers(),
            **chosen, "cpu": str(machine.cpu())}  # (wall times mean little without it)


def reset() -> None:
    """Forget the started strategy (tests; a multi-worker one cannot be restarted)."""
    _STARTED.clear()
