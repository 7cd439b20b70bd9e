"""``bnn check``: check a config, build its model and optimizer, summarize them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnn_cli.assemble import deployability
from bnn_cli.assemble.check import CheckedConfig, check
from bnn_cli.assemble.model import build_model, build_optimizer
from bnn_cli.models import summary, summary_data


@dataclass
class CheckReport:
    checked: CheckedConfig
    summary: Any  # bnn_cli.models.ModelSummary
    text: list[str]
    deployability: Any = None  # bnn_cli.assemble.deployability.Deployability, with --target

    def as_dict(self) -> dict[str, Any]:
        config = self.checked.config
        unchecked = self.checked.data_unchecked
        return {"config": str(config.path), "name": config.name, "valid": True,
                "data_checked": unchecked is None,
                **({"data_warning": unchecked} if unchecked else {}),
                "monitor": self.checked.spec.training.monitor,
                "monitor_chosen": self.checked.monitor_chosen is not None,
                **self.summary.as_dict(),
                **({"deployability": self.deployability.as_dict()}
                   if self.deployability else {}),
                **({"stages": [_stage_dict(s) for s in self.checked.stages]}
                   if self.checked.stages else {}),
                **({"data": _data_dict(self.checked.data)} if self.checked.data else {})}

    def print(self) -> None:
        print("\n".join(self.text))
        if self.checked.stages:
            print(f"\n{len(self.checked.stages)} stages (the summary above is the last "
                  "one's model):")
            for stage in self.checked.stages:
                print("  " + _stage_line(stage))
        if self.deployability:
            print("\n" + "\n".join(self.deployability.lines()))
        if self.checked.monitor_chosen:
            print(f"\ntraining.monitor is not set: the best checkpoint is chosen by "
                  f"{self.checked.monitor_chosen} (the default for this model; set "
                  "training.monitor to choose another)")
        data = self.checked.spec.data
        if data.validation_split and data.validation_split == data.test_split:
            print(f"\nwarning: data.validation_split is the test split {data.test_split!r}:"
                  " the checkpoint is chosen on it, so its test metrics are optimistic; "
                  "hold validation data out of the training split (e.g. "
                  "train_split: 'train[:90%]', validation_split: 'train[90%:]')")
        if self.checked.data is not None:
            print("\n" + "\n".join(_data_lines(self.checked.data)))
        if self.checked.data_unchecked:
            print(f"\nwarning: the data section was NOT checked (the model was, with its "
                  f"given input shapes); `bnn train` will refuse this config until the "
                  f"dataset is prepared: {self.checked.data_unchecked}")
        print(f"\n{self.checked.config.path}: OK")


def check_config(path: str | Path, overrides: list[str], *, plugins: list[str] | None = None,
                 data_dir: str | None = None, target: str | None = None) -> CheckReport:
    """Check ``path`` (with overrides), build the model and optimizer, summarize; with a
    deployment ``target`` (``lce``), also say which layers it runs as binary operations."""

    if target is not None:
        deployability.check_target(target)  # (before the slow part)
    checked = check(path, overrides, plugins=plugins or [], data_dir=data_dir,
                    allow_unprepared_data=True)
    # (With stages, the model the run ends with: the last stage's.)
    model = build_model(checked.final)
    for stage in checked.stages or [checked]:
        stage_checked = getattr(stage, "checked", stage)
        build_optimizer(stage_checked.spec.training, stage_checked.steps_per_epoch)
    lines: list[str] = []
    summary(model, print_fn=lines.append)
    verdicts = deployability.lce_report(model) if target is not None else None
    return CheckReport(checked, summary_data(model), lines, verdicts)


def _stage_dict(stage: Any) -> dict[str, Any]:
    return {"name": stage.name, "epochs": stage.checked.spec.training.epochs,
            "set": stage.set, "distill": stage.distill.model_dump() if stage.distill else None}


def _stage_line(stage: Any) -> str:
    """``2. binary_activations: 7 epochs; sets a, b; learns from 'real' (kd 3.0, ...)``"""
    data = _stage_dict(stage)
    text = f"{stage.index + 1}. {stage.name}: {data['epochs']} epochs"
    if data["set"]:
        text += f"; sets {', '.join(data['set'])}"
    if stage.distill is not None:
        d = stage.distill
        names = " + ".join(f"{t.model!r}" + (f" x {t.weight:g}" if t.weight != 1 else "")
                           for t in d.teachers)
        text += (f"; learns from {names} (labels {d.label_weight:g}, soft targets "
                 f"{d.kd_weight:g} at T={d.temperature:g}"
                 + (f", attention {d.attention_weight:g} on {len(d.attention)} layers"
                    if d.attention else "") + ")")
    return text


def _data_dict(info: Any) -> dict[str, Any]:
    return {"dataset": info.full_name, "kind": info.kind, "classes": info.num_classes,
            "class_names": list(info.class_names or []), "splits": info.split_sizes,
            "input_shape": list(info.input_shape),
            "image_sizes": [list(size) for size in info.image_sizes],
            "skipped": list(info.skipped)}


def _data_lines(info: Any) -> list[str]:
    """What ``bnn check`` says of the data: classes, splits, image sizes, skipped files."""
    kinds = {"tfds": "TFDS", "tfds_directory": "a TFDS dataset directory",
             "image_folder": "a folder of images"}
    names = list(info.class_names or [])
    shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10
                                     else "")
    lines = [f"data: {info.full_name} ({kinds[info.kind]})",
             f"  classes: {info.num_classes}" + (f" ({shown})" if names else ""),
             "  examples: " + ", ".join(f"{s} {n:,}" for s, n in info.split_sizes.items()),
             "  model input: " + "x".join("?" if d is None else str(d)
                                          for d in info.input_shape)]
    if info.image_sizes:
        lines.append("  image sizes (commonest, height x width): "
                     + ", ".join(f"{h}x{w}" for h, w in info.image_sizes))
    if info.skipped:
        lines.append(f"  skipped {len(info.skipped)} file(s) (data.bad_images: skip):")
        lines += [f"    {line}" for line in info.skipped[:10]]
    return lines
