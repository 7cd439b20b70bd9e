"""``bnn check``: validate a config and build its model without training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnn_cli.config import Config


@dataclass
class CheckReport:
    config: Config
    summary: Any  # bnn_cli.models.ModelSummary
    text: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"config": str(self.config.path), "name": self.config.name, "valid": True,
                **self.summary.as_dict()}

    def print(self) -> None:
        print("\n".join(self.text))
        print(f"\n{self.config.path}: OK")


def check_config(path: str | Path, overrides: list[str], *, plugins: list[str] | None = None,
                 data_dir: str | None = None) -> CheckReport:
    """Validate ``path`` (with overrides), build the model, summarize it."""
    from bnn_cli.builder import build_model, load_checked_config
    from bnn_cli.models import summary, summary_data

    config = load_checked_config(path, overrides, plugins or [])
    input_shape = None
    if config.spec.model.inputs is None:
        from bnn_cli import data

        info = data.dataset_info(config.spec.data,
                                 data.resolve_data_dir(config.spec.data.data_dir, data_dir))
        input_shape = info.input_shape
    model = build_model(config, input_shape=input_shape)
    lines: list[str] = []
    summary(model, print_fn=lines.append)
    return CheckReport(config, summary_data(model), lines)
