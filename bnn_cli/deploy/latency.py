"""``bnn benchmark-model``: inference latency of exported ``.tflite`` files on this machine.

Each file runs through the runtime a device would use (TensorFlow's TFLite interpreter,
or LCE's where the file has LCE operations) on one example at a time, the batch size the
converters produce. The file and its float32 baseline are timed in alternating rounds, so
machine noise hits both alike and their ratio is measured in one run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnn_cli.deploy import runtimes
from bnn_cli.errors import UserError

FLOAT_NAME = "model.tflite"  # what `bnn export --format tflite` writes beside the others
ARM_NOTE = ("LCE's optimized binary kernels target 64-bit ARM (phones, Raspberry Pi 4, "
            "Apple silicon); on x86 its portable reference kernels run, as LCE's "
            "interpreter documents: correct, not optimized for speed")


@dataclass
class Timing:
    """Latency of one file, in milliseconds per example."""

    path: str
    format: str
    runtime: str
    size_bytes: int
    samples_ms: list[float] = field(repr=False)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    def spread_ms(self) -> tuple[float, float]:
        """The 10th and 90th percentiles."""
        low, high = np.percentile(self.samples_ms, [10, 90])
        return float(low), float(high)

    def as_dict(self) -> dict[str, Any]:
        low, high = self.spread_ms()
        data = {k: v for k, v in asdict(self).items() if k != "samples_ms"}
        return {**data, "runs": len(self.samples_ms), "median_ms": self.median_ms,
                "p10_ms": low, "p90_ms": high, "min_ms": min(self.samples_ms)}


@dataclass
class BenchmarkReport:
    threads: int
    timings: list[Timing]  # the file, then its float32 baseline (same runtime first)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"threads": self.threads,
                                "models": [t.as_dict() for t in self.timings]}
        if len(self.timings) > 1:
            data["speedup_vs_float32"] = self.speedup
            data["size_ratio_vs_float32"] = self.size_ratio
        if self.note:
            data["note"] = self.note
        return data

    @property
    def speedup(self) -> float:
        file, base = self.timings[:2]
        return base.median_ms / file.median_ms

    @property
    def size_ratio(self) -> float:
        file, base = self.timings[:2]
        return file.size_bytes / base.size_bytes

    def print(self) -> None:
        runs = len(self.timings[0].samples_ms)
        print(f"latency per example, {self.threads} thread(s), median of {runs} runs "
              "(10th-90th percentile):")
        for t in self.timings:
            low, high = t.spread_ms()
            print(f"  {t.path}  [{t.format}, {t.runtime} interpreter]  "
                  f"{t.median_ms:.3f} ms ({low:.3f}-{high:.3f})  {t.size_bytes / 1024:.1f} KiB")
        if len(self.timings) > 1:
            print(f"vs float32 in the same runtime: {self.speedup:.2f}x the speed, "
                  f"{self.size_ratio:.1%} of the size")
        if self.note:
            print(f"note: {self.note}")


def benchmark(path: str | Path, *, threads: int = 1, runs: int = 100, warmup: int = 10,
              baseline: str | Path | None = None) -> BenchmarkReport:
    """Time ``path`` and its float32 baseline (``baseline``, else a ``model.tflite``
    beside it) in alternating rounds, ``runs`` timed invocations each.

    The baseline runs in the file's runtime, so their ratio is the model's alone; for an
    LCE file it also runs in TensorFlow's interpreter (XNNPACK), what float users ship."""
    if threads < 1 or runs < 1 or warmup < 0:
        raise UserError("--threads and --runs must be at least 1 and --warmup at least 0")
    path = Path(path)
    fmt = _tflite_format(path)
    base = Path(baseline) if baseline else _float_beside(path)
    plan = [(path, fmt)]
    if base is not None:
        if _tflite_format(base) == "lce":
            raise UserError(f"the baseline {base} has LCE operations; pass the float32 "
                            "model that `bnn export RUN --format tflite` writes")
        plan += [(base, fmt)] + ([(base, "tflite")] if fmt == "lce" else [])
    loaded = [runtimes.load(p, fmt=f, threads=threads) for p, f in plan]
    samples = _alternate(loaded, runs, warmup)
    timings = [Timing(str(p), _tflite_format(p), r.name, p.stat().st_size, s)
               for (p, _), r, s in zip(plan, loaded, samples, strict=True)]
    return BenchmarkReport(threads, timings, _note(path, base, fmt))


def _note(path: Path, base: Path | None, fmt: str) -> str | None:
    notes = [ARM_NOTE] if fmt == "lce" else []
    if base is None:
        notes.insert(0, f"no float32 baseline: none given with --baseline and no "
                        f"{FLOAT_NAME} beside {path} (write one with `bnn export RUN "
                        "--format tflite`)")
    return "; ".join(notes) or None


def _float_beside(path: Path) -> Path | None:
    candidate = path.with_name(FLOAT_NAME)
    return candidate if candidate.is_file() and candidate.resolve() != path.resolve() \
        else None


def _tflite_format(path: Path) -> str:
    if path.is_dir():
        raise UserError(_folder_message(path))
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass a .tflite file that `bnn export "
                        "--format tflite|lce` wrote")
    fmt = runtimes.detect_format(path)
    if fmt not in ("tflite", "lce"):
        raise UserError(f"{path} is a {fmt} model, not a .tflite flatbuffer; "
                        "benchmark-model times what runs on devices: export it with "
                        "`bnn export RUN --format tflite` or `--format lce` first")
    return fmt


def _folder_message(folder: Path) -> str:
    """What benchmark-model takes, for a folder given instead: a run directory's (or an
    export folder's) .tflite files by name, where it has some."""
    found = sorted({*folder.glob("*.tflite"), *folder.glob("export/*.tflite")})
    if found:
        names = ", ".join(str(f) for f in found)
        return (f"{folder} is a folder; benchmark-model times one .tflite file: pass one "
                f"of {names}")
    return (f"{folder} is a folder, with no .tflite file in it or in its export/; "
            "benchmark-model times a .tflite file that `bnn export RUN --format tflite` "
            f"(or lce) wrote, e.g. {folder / 'export' / FLOAT_NAME}")


def _alternate(loaded: list[runtimes.Runtime], runs: int, warmup: int) -> list[list[float]]:
    """Per-example latencies (ms) of each runtime, rounds interleaved across them."""
    inputs = [_example(r) for r in loaded]
    for r, x in zip(loaded, inputs, strict=True):
        for _ in range(warmup):
            r.invoke(x)
    samples: list[list[float]] = [[] for _ in loaded]
    for _ in range(runs):
        for r, x, out in zip(loaded, inputs, samples, strict=True):
            start = time.perf_counter()
            r.invoke(x)
            out.append((time.perf_counter() - start) * 1e3)
    return samples


def _example(runtime: runtimes.Runtime) -> np.ndarray:
    """One input of the file's shape (batch 1); values do not change a TFLite kernel's
    work, but a fixed seed keeps runs comparable."""
    shape = runtime.input_shape()
    return np.random.default_rng(0).uniform(-1, 1, (1, *shape[1:])).astype(np.float32)
