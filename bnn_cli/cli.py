"""The ``bnn`` command line: a thin shell over functions the tests call directly.

Exit codes: 0 success, 2 anything the user can fix (config, arguments, missing files),
1 a failure of the run itself, 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from bnn_cli.errors import UserError

app = typer.Typer(
    name="bnn",
    help="Train Binarized Neural Networks (and other quantized networks) from YAML configs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="KEY.PATH=VALUE overrides, e.g. training.epochs=3 "
                        "model.layers[0].filters=32 (values are YAML).",
                   show_default=False),
]
# A flag: no value follows it (metavar "" keeps help from showing it as `--json <bool>`).
JsonFlag = Annotated[bool, typer.Option("--json", is_flag=True, metavar="",
                                        help="Print one JSON object.")]
Plugins = Annotated[
    list[str] | None,
    typer.Option("--plugin", help="Python file or module to import first (registers custom "
                                  "quantizers/layers). Repeatable.", show_default=False),
]
TrustPlugins = Annotated[
    bool,
    typer.Option("--trust-plugins", metavar="",
                 help="Import the plugins that the run directory's stored config and "
                      "overrides.json name (their code runs); without it a run that names "
                      "any is refused, as a copied run directory could run any code."),
]
DataDir = Annotated[
    str | None,
    typer.Option("--data-dir", help="TFDS data_dir (else the config's data.data_dir, else "
                                    "$TFDS_DATA_DIR, else TFDS's default).", show_default=False),
]

CheckpointChoice = Annotated[
    str, typer.Option(help="best or last (for a run directory).")]


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _show(report: Any, json_: bool) -> None:
    """A command's report: one JSON object with --json, else its text."""
    if json_:
        _echo_json(report.as_dict())
    else:
        report.print()


def _import_plugins(plugins: list[str] | None) -> None:
    from bnn_cli.config.plugins import import_plugin

    for plugin in plugins or []:
        import_plugin(plugin)


ComponentName = Annotated[str | None, typer.Argument(
    metavar="[NAME]", show_default=False,
    help="Show this one in full (every parameter with its default, summary, aliases).")]


@app.command("list-quantizers")
def list_quantizers(name: ComponentName = None, json_: JsonFlag = False,
                    plugin: Plugins = None,
                    config: Annotated[Path | None, typer.Option(
                        help="Also load the plugins this config names.")] = None) -> None:
    """List every registered quantizer: aliases, precision, parameters, summary."""
    _list_components("quantizer", name, json_, plugin, config)


@app.command("list-layers")
def list_layers(name: ComponentName = None, json_: JsonFlag = False, plugin: Plugins = None,
                config: Annotated[Path | None, typer.Option(
                    help="Also load the plugins this config names.")] = None) -> None:
    """List every layer type a config can name (bnn_cli, Keras and registered ones)."""
    _list_components("layer", name, json_, plugin, config)


def _list_components(kind: str, name: str | None, json_: bool, plugins: list[str] | None,
                     config: Path | None) -> None:
    from bnn_cli.registry import REGISTRY, load_builtins

    _import_plugins(plugins)
    if config is not None:
        from bnn_cli.config.plugins import load_plugins
        from bnn_cli.config.schema import load_config

        load_plugins(load_config(config))
    load_builtins()
    if name is not None:  # (an unknown name: UnknownNameError, with a suggestion)
        entry = REGISTRY.get(kind, name)
        if json_:
            _echo_json(entry.as_dict())
        else:
            _print_entry(entry)
        return
    entries = REGISTRY.entries(kind)
    if json_:
        _echo_json([e.as_dict() for e in entries])
    else:
        _print_table(kind, entries)


def _print_entry(entry: Any) -> None:
    """One component in full: the table's row, nothing shortened."""
    data = entry.as_dict()
    lines = [f"{entry.kind} {entry.name}" + ("" if entry.builtin else " (custom)"),
             f"  summary: {entry.summary or '-'}",
             f"  aliases: {', '.join(entry.aliases) or '-'}"]
    if entry.kind == "quantizer":
        lines.append(f"  bits: {'varies' if entry.precision is None else entry.precision}")
    lines += [f"  module: {data['module']}", "  parameters:" if entry.params else
              "  parameters: none"]
    lines += [f"    {p.name}" + (" (required)" if p.required else f" = {p.default!r}")
              for p in entry.params]
    typer.echo("\n".join(lines))


def _print_table(kind: str, entries: list) -> None:
    from rich.console import Console
    from rich.table import Table

    # Piped output gets a wide table instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"{len(entries)} {kind}s", show_lines=False,
                  caption=f"long parameter lists end in '...': `bnn list-{kind}s NAME` "
                          "shows one in full")
    table.add_column("name", style="bold")
    table.add_column("aliases")
    if kind == "quantizer":
        table.add_column("bits", justify="right")
    table.add_column("parameters")
    table.add_column("summary")
    for e in entries:
        row = [e.name if e.builtin else f"{e.name} (custom)", ", ".join(e.aliases)]
        if kind == "quantizer":
            row.append("varies" if e.precision is None else str(e.precision))
        params = ", ".join(p.name if p.required else f"{p.name}={p.default!r}"
                           for p in e.params if p.name != "metrics")  # every quantizer's
        row += [params if len(params) < 120 else params[:117] + "...", e.summary]
        table.add_row(*row)
    console.print(table)


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="The YAML config file.")],
    overrides: Overrides = None,
    json_: JsonFlag = False,
    plugin: Plugins = None,
    data_dir: DataDir = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="lce: also list which quantized layers the Larq Compute Engine "
                         "converter turns into binary operations, and why not.",
        show_default=False)] = None,
) -> None:
    """Validate a config, build its model and print the summary (no training)."""
    from bnn_cli import api

    report = api.check(config, *(overrides or []), plugins=plugin or [], data_dir=data_dir,
                       target=target)
    _show(report, json_)


@app.command("plot-quantizers")
def plot_quantizers(
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] =
    Path("quantizers.png"),
    plugin: Plugins = None,
) -> None:
    """Draw every quantizer's forward value and pseudo-gradient on [-2, 2] as a PNG."""
    from bnn_cli.plots import plot_quantizers as draw
    from bnn_cli.registry import load_builtins

    _import_plugins(plugin)
    load_builtins()
    names = draw(output)
    typer.echo(f"wrote {output} ({', '.join(names)})", err=True)


@app.command()
def schema(output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file instead of stdout.")] = None) -> None:
    """Print the JSON Schema of config files (for editors' YAML completion)."""
    from bnn_cli.config.schema import json_schema

    text = json.dumps(json_schema(), indent=2)
    if output is None:
        typer.echo(text)
    else:
        from bnn_cli.rundir.run import atomic_write_text

        atomic_write_text(output, text + "\n")
        typer.echo(f"wrote {output}", err=True)


@app.command()
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(
        metavar="CONFIG", show_default=False,
        help="The YAML config file (not needed with --resume, which continues with the "
             "run's stored config).")] = None,
    overrides: Overrides = None,
    output: Annotated[Path, typer.Option(help="Folder that holds the run directories.")] =
    Path("runs"),
    resume: Annotated[Path | None, typer.Option(
        help="Continue this interrupted run directory from its last checkpoint, with the "
             "config it was started with.")] = None,
    data_dir: DataDir = None,
    plugin: Plugins = None,
    trust_plugins: TrustPlugins = False,
) -> None:
    """Train the model a config describes; writes a run directory."""
    from bnn_cli import api

    if resume is not None:
        _refuse_overrides_on_resume(config, overrides or [], resume)
        result = api.resume(resume, data_dir=data_dir, config=config,
                            trust_plugins=trust_plugins)
    elif config is None:
        raise _click_exceptions().UsageError(
            "Missing argument 'CONFIG': give the YAML config to train (e.g. bnn train "
            "configs/quickstart.yaml), or --resume RUN_DIR to continue a run.", ctx)
    else:
        result = api.train(config, *(overrides or []), output=output, data_dir=data_dir,
                           plugins=plugin or [])
    raise typer.Exit(result.exit_code)


def _refuse_overrides_on_resume(config: Path | None, overrides: list[str],
                                resume: Path) -> None:
    """KEY=VALUE overrides cannot change a resumed run (a lone one lands in CONFIG)."""
    if config is not None and "=" in str(config) and not config.exists():
        overrides = [str(config), *overrides]
    if overrides:
        raise UserError(f"overrides ({' '.join(overrides)}) do not apply with --resume: "
                        f"{resume} continues with the config and overrides it was started "
                        "with. Drop them, or start a new run with `bnn train CONFIG "
                        "KEY=VALUE ...`")


@app.command("eval")
def evaluate(
    target: Annotated[Path, typer.Argument(
        help="A run directory, a checkpoint folder (or a file in it) that a run wrote, "
             "or a saved model file (.keras, .h5, .hdf5).")],
    split: Annotated[str | None, typer.Option(help="Split to evaluate (default: the "
                                                   "config's test split).")] = None,
    checkpoint: CheckpointChoice = "best",
    data_dir: DataDir = None,
    json_: JsonFlag = False,
    config: Annotated[Path | None, typer.Option(
        help="Config that builds the model and describes the data; a model file gives only "
             "its weights. Needed for a model file outside a run.")] = None,
    trust_plugins: TrustPlugins = False,
) -> None:
    """Evaluate a trained model on a dataset split and print its metrics."""
    from bnn_cli import api

    report = api.evaluate(target, split=split, checkpoint=checkpoint, data_dir=data_dir,
                          config=config, trust_plugins=trust_plugins)
    _show(report, json_)
    if report.unsaved:  # (after the result, which is what counts)
        typer.echo(f"warning: {report.unsaved}", err=True)


@app.command()
def export(
    target: Annotated[Path, typer.Argument(
        help="A run directory, a checkpoint folder (or a file in it) that a run wrote, "
             "or a saved model file (.keras, .h5, .hdf5) with --config.")],
    format_: Annotated[str, typer.Option(
        "--format", help="keras, saved_model, tflite, or lce (Larq Compute Engine; needs "
                         "the larq-compute-engine package).")],
    output: Annotated[Path | None, typer.Option(help="File (or SavedModel folder) to write "
                                                     "(default: RUN/export/).")] = None,
    checkpoint: CheckpointChoice = "best",
    latent: Annotated[bool, typer.Option(
        "--latent", metavar="", help="Keep the training form (latent weights, kernel "
                                     "quantizers).")] = False,
    int8: Annotated[bool, typer.Option(
        "--int8", metavar="", help="tflite: quantize the real-valued layers to int8 after "
                                   "training, calibrated on the training split.")] = False,
    data_dir: DataDir = None,
    json_: JsonFlag = False,
    config: Annotated[Path | None, typer.Option(
        help="Config that builds the model; needed for a model file outside a run.")] = None,
    trust_plugins: TrustPlugins = False,
) -> None:
    """Export a trained model for inference and check it against the trained model."""
    from bnn_cli import api

    report = api.export(target, format=format_, output=output, checkpoint=checkpoint,
                        latent=latent, data_dir=data_dir, config=config,
                        trust_plugins=trust_plugins, int8=int8)
    _show(report, json_)


@app.command("benchmark-model")
def benchmark_model(
    file: Annotated[Path, typer.Argument(help="A .tflite file that `bnn export --format "
                                              "tflite|lce` wrote.")],
    threads: Annotated[int, typer.Option(help="Interpreter threads.")] = 1,
    runs: Annotated[int, typer.Option(help="Timed runs of each file.")] = 100,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 10,
    baseline: Annotated[Path | None, typer.Option(
        help="The float32 .tflite to compare with (default: model.tflite beside FILE).")] =
    None,
    json_: JsonFlag = False,
) -> None:
    """Time inference of an exported .tflite per example, next to its float32 model."""
    from bnn_cli.deploy.latency import benchmark

    report = benchmark(file, threads=threads, runs=runs, warmup=warmup, baseline=baseline)
    _show(report, json_)


@app.command()
def predict(
    target: Annotated[Path, typer.Argument(
        help="A run directory, a checkpoint folder (or a file in it) that a run wrote, or "
             "a file `bnn export` wrote (.keras, .h5, SavedModel folder, .tflite, LCE "
             ".tflite).")],
    inputs: Annotated[list[Path] | None, typer.Argument(
        metavar="INPUT", show_default=False,
        help="Image files (PNG, JPEG, BMP, GIF), resized and preprocessed as the config "
             "says.")] = None,
    split: Annotated[str | None, typer.Option(
        help="Predict examples of this split of the config's dataset instead, e.g. "
             "'test[:10]'.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Classes shown per input.")] = 3,
    checkpoint: CheckpointChoice = "best",
    data_dir: DataDir = None,
    json_: JsonFlag = False,
    config: Annotated[Path | None, typer.Option(
        help="Config that says how inputs are preprocessed and names the classes; needed "
             "for a file outside a run.")] = None,
    trust_plugins: TrustPlugins = False,
) -> None:
    """Print the most probable classes for image files or a split's examples."""
    from bnn_cli import api

    report = api.predict(target, inputs or [], split=split, top_k=top_k,
                         checkpoint=checkpoint, data_dir=data_dir, config=config,
                         trust_plugins=trust_plugins)
    _show(report, json_)


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="The YAML config file to sweep.")],
    args: Annotated[list[str] | None, typer.Argument(
        metavar="KEY=VALUES...", show_default=False,
        help="What to vary: KEY=V1,V2 (a grid axis, or the choices of a random/TPE "
             "search), KEY=choice(a,b), range(a,b[,step]), int(a,b), uniform(a,b), "
             "loguniform(a,b); KEY=V alone is fixed for every trial.")] = None,
    search: Annotated[str, typer.Option(help="grid (every combination of the listed "
                                             "values), random or tpe (Optuna's samplers).")]
    = "grid",
    trials: Annotated[int | None, typer.Option(help="Trials of a random or TPE search "
                                                    "(default 10).", show_default=False)]
    = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler (the same seed "
                                                  "samples the same trials).",
                                             show_default=False)] = None,
    storage: Annotated[str | None, typer.Option(
        envvar="BNN_SWEEP_STORAGE",
        help="Optuna storage URL (default: sqlite:///DIR/study.db); hosts that run the "
             "same command with one postgresql:// or mysql:// URL share the study. Or set "
             "BNN_SWEEP_STORAGE, which keeps a password off the command line.",
        show_default=False)] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the sweep "
                                                   "folder's name).", show_default=False)]
    = None,
    output: Annotated[Path | None, typer.Option(
        help="The sweep folder (default: runs/sweep-<config name>).", show_default=False)]
    = None,
    prune: Annotated[bool, typer.Option("--prune", metavar="", help="Stop trials whose monitored "
                                                        "metric is worse than the median of "
                                                        "earlier trials at the same epoch.")]
    = False,
    jobs: Annotated[int, typer.Option(help="Trials at once on this machine, each its own "
                                           "process, all in the one study.")] = 1,
    grace: Annotated[int, typer.Option(help="Seconds a trial's worker may go without a "
                                            "heartbeat before another process of the study "
                                            "counts it dead and resumes the trial.")] = 120,
    data_dir: DataDir = None,
    json_: JsonFlag = False,
) -> None:
    """Train a config over a grid or a sampled search; resumable; results.csv/.png."""
    from bnn_cli.experiments.sweep import SweepSettings, run_sweep

    report = run_sweep(SweepSettings(config, list(args or []), search=search, trials=trials,
                                     seed=seed, storage=storage, study=study, output=output,
                                     prune=prune, data_dir=data_dir, jobs=jobs, grace=grace))
    _show(report, json_)
    raise typer.Exit(report.exit_code)


@app.command("runs")
def runs_table(
    folder: Annotated[Path, typer.Argument(
        metavar="DIR", help="Folder searched (recursively) for run directories: runs/, a "
                            "sweep folder, ...")] = Path("runs"),
    json_: JsonFlag = False,
    sort: Annotated[str | None, typer.Option(
        help="name, status, started, epochs, best, test, wall_time or a config key "
             "(training.learning_rate); best and test sort best first; '-KEY' reverses.",
        show_default=False)] = None,
    filter_: Annotated[list[str] | None, typer.Option(
        "--filter", help="KEY=VALUE: status=completed, name=GLOB or a config key's value "
                         "(training.epochs=5). Repeatable (all must hold).",
        show_default=False)] = None,
) -> None:
    """One row per run directory: status, epochs, best and test metrics, what differs."""
    from bnn_cli.experiments.table import list_runs

    _show(list_runs(folder, sort=sort, filters=filter_ or []), json_)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN...",
                                               help="Run directories to compare.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", show_default=False,
        help="PNG file to write (replaced if it exists). Default: compare.png in the "
             "working folder, or compare-2.png, ... if that exists (never replaced).")] =
    None,
    json_: JsonFlag = False,
) -> None:
    """Draw runs' curves on shared axes and print how their resolved configs differ."""
    from bnn_cli.experiments.compare import compare_runs

    _show(compare_runs(runs, output), json_)


def _click_exceptions():
    """The exception classes of the Click that Typer runs on: its own copy in recent
    releases, even where another package installed Click beside it (import-linter does)."""
    try:
        import typer._click.exceptions as errors
    except ImportError:
        import click.exceptions as errors
    return errors


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors -> one paragraph + exit 2, never a traceback."""
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence for users
        click_errors = _click_exceptions()
        if isinstance(exc, click_errors.UsageError):
            exc.show()
            return 2
        if isinstance(exc, click_errors.ClickException):
            exc.show()
            return exc.exit_code
        if os.environ.get("BNN_DEBUG"):
            raise
        typer.echo(f"error: the run failed: {type(exc).__name__}: {exc}\n"
                   "(set BNN_DEBUG=1 to see the traceback)", err=True)
        return 1
    return code if isinstance(code, int) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
