"""What every command shares: option groups, the one error path, exit codes, logging.

Flags for options the typed schema declares (``emoclip.schema``) are made from it by
``schema_option``: their type, range, choices and help come from the one declaration, so a flag
cannot disagree with the config file, ``--set`` or the Python API.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Callable

import click

from emoclip.core.errors import EmoclipError, explain, shorten
from emoclip.schema.encoder import TAGGING, EncoderOptions

EXIT_SOME_FAILED = 1


EXIT_USAGE = 2


EXIT_BUG = 3


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


log = logging.getLogger("emoclip")


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("emoclip: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    # open_clip logs 'INFO:root:' lines on the root logger: never ours to show, even with -v
    logging.getLogger().setLevel(logging.WARNING if verbose else logging.CRITICAL)


def schema_option(cls: type, name: str, *flags: str, help_suffix: str = "", **overrides) -> Callable:
    """A click option for field ``name`` of schema class ``cls``: type and range (IntRange,
    FloatRange, Choice), help with the valid values and the schema's default. The flag's own
    default is None ("not given"), so a config file or a method's recipe fills it in."""
    import dataclasses
    import typing

    from emoclip.core.options import default_of, spec_of

    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    spec = spec_of(f)
    kinds = [k for k in typing.get_args(typing.get_type_hints(cls)[name]) or (typing.get_type_hints(cls)[name],)
             if k is not type(None)]
    kind = kinds[0] if kinds else str
    low = None if spec.min is None else spec.min
    high = None if spec.max is None else spec.max
    click_type: click.ParamType | type
    if spec.choices is not None:
        click_type = click.Choice(spec.choices)
    elif kind is int:
        click_type = click.IntRange(None if low is None else int(low), None if high is None else int(high),
                                    min_open=spec.min_open, max_open=spec.max_open) if spec.min is not None or \
            spec.max is not None else click.INT
    elif kind is float:
        click_type = click.FloatRange(low, high, min_open=spec.min_open, max_open=spec.max_open) \
            if low is not None or high is not None else click.FLOAT
    else:
        click_type = click.STRING
    text = spec.help.rstrip(".")
    allowed = spec.allowed_text()
    if allowed and spec.choices is None:
        text += f"; {allowed}"
    default = default_of(f)
    text += f" [default: {default if not isinstance(default, str) else default or 'none'}, or the recipe's]" \
        if default is not None else ""
    settings = {"type": click_type, "default": None, "help": text + help_suffix, **overrides}
    return click.option(*(flags or ("--" + name.replace("_", "-"),)), **settings)


def backbone_options(func: Callable) -> Callable:
    """--model / --pretrained / --device, shared by every command that loads CLIP."""
    options = [
        click.option("--model", default=None, envvar="EMOCLIP_MODEL",
                     help="open_clip architecture name (`emoclip models` lists them; `tiny` is for tests). "
                          "Default ViT-B-32, or the checkpoint's."),
        click.option("--pretrained", default=None, envvar="EMOCLIP_PRETRAINED",
                     help="open_clip pretrained tag (downloaded on first use), a local weights file "
                          "(.pt/.pth/.bin/.safetensors), or `random` (benchmarks only). Default openai, or the "
                          "checkpoint's. Env: EMOCLIP_PRETRAINED."),
        click.option("--device", default=TAGGING.device, show_default=True, envvar="EMOCLIP_DEVICE",
                     help="auto, cpu, cuda or cuda:N."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def cache_options(func: Callable) -> Callable:
    """--cache-dir / --no-cache, shared by every command that encodes images."""
    func = click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")(func)
    return click.option("--cache-dir", type=click.Path(file_okay=False), default=None, envvar="EMOCLIP_CACHE_DIR",
                        help="Feature cache folder (default ~/.cache/emoclip/features; env EMOCLIP_CACHE_DIR)."
                        )(func)


def speed_options(precision: str | None, decode: str | None) -> Callable[[Callable], Callable]:
    """--precision (and --decode): the encoder options that trade exactness for speed, with each
    command's default (predict: auto/draft; evaluate and train: exact fp32/full, opt in with the flag)."""
    import dataclasses

    from emoclip.core.options import spec_of

    specs = {f.name: spec_of(f) for f in dataclasses.fields(EncoderOptions)}

    def add(func: Callable) -> Callable:
        if decode is not None:
            func = click.option("--decode", type=click.Choice(specs["decode"].choices or ()), default=decode,
                                show_default=True, help=specs["decode"].help[0].upper() + specs["decode"].help[1:]
                                + ".")(func)
        fallback = "" if precision else " [default: fp32, or the config's backbone.precision]"
        return click.option("--precision", type=click.Choice(specs["precision"].choices or ()), default=precision,
                            show_default=precision is not None, envvar="EMOCLIP_PRECISION",
                            help=specs["precision"].help[0].upper() + specs["precision"].help[1:] + "."
                            + fallback)(func)
    return add


def tagging_speed_options(func: Callable) -> Callable:
    """--precision/--decode with the tagging defaults of the schema (the Python API's and the service's)."""
    return speed_options(TAGGING.precision, TAGGING.decode)(func)


def _remember_bart(ctx: click.Context, _param, value):
    """``--bart`` reaches every command's TaggerConfig through ``tagger_config`` (no command signature changes)."""
    if value:
        ctx.meta["emoclip.bart"] = value
    return value


def calibration_option(func: Callable) -> Callable:
    """--calibration: the images that calibrate --precision int8 (predict, evaluate, serve)."""
    return click.option("--calibration", multiple=True, type=click.Path(exists=True), metavar="PATH",
                        help="--precision int8: images (files or folders, repeatable) whose activations calibrate "
                             "the quantized encoder; default: images spread over the job.")(func)


def taxonomy_options(func: Callable) -> Callable:
    options = [
        click.option("--taxonomy", "-t", default=None,
                     help="Built-in taxonomy name (`emoclip taxonomies`) or a YAML/TOML/JSON taxonomy file "
                          "(default mikels8, or the checkpoint's)."),
        click.option("--checkpoint", type=click.Path(exists=True), default=None,
                     help="A run folder written by `emoclip train`: use its trained model instead of zero-shot."),
        click.option("--bart", default=None, expose_value=False, callback=_remember_bart,
                     help="Where a UGRIE checkpoint's BART is, if not where it was trained: a save_pretrained "
                          "folder or a hub name (its weights are still checked against the checkpoint's)."),
        click.option("--labels", default=None,
                     help="Your own comma-separated labels instead of a taxonomy, e.g. calm,tense,joyful."),
        click.option("--templates", default=None,
                     help="Prompt template set (`emoclip templates`), a file of templates, or one template "
                          "with {}; default: 'a photo seems to express a feeling of {}'."),
        click.option("--synonyms/--no-synonyms", default=False, show_default=True,
                     help="Average prompts over each class's synonyms too."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def tagger_config(checkpoint=None, taxonomy=None, labels=None, templates=None, synonyms=False, model=None,
                  pretrained=None, device=TAGGING.device, precision=TAGGING.precision, decode=TAGGING.decode,
                  cache_dir=None, no_cache=False, **rest):
    """The TaggerConfig of a command's options (tagging.py builds every front end's tagger from it)."""
    from emoclip.tagging.config import TaggerConfig

    if labels is not None and taxonomy is not None:
        raise EmoclipError("--labels and --taxonomy were both given; give either --labels or --taxonomy, not both")
    label_list = tuple(labels.split(",")) if labels is not None else None  # "" is an error, not the default
    context = click.get_current_context(silent=True)
    if context is not None and "bart" not in rest and context.meta.get("emoclip.bart"):
        rest["bart"] = context.meta["emoclip.bart"]
    return TaggerConfig(checkpoint=checkpoint, taxonomy=taxonomy, labels=label_list, templates=templates,
                        synonyms=synonyms, model=model, pretrained=pretrained, device=device, precision=precision,
                        decode=decode, cache_dir=cache_dir, no_cache=no_cache, **rest)


def handle_errors(func: Callable) -> Callable:
    """The one place that turns every expected failure into ``emoclip: error: <what>; <fix>``, exit 2.

    An interruption (Ctrl-C, SIGTERM) exits 130; a bug shows one line too and exits 3, and
    ``emoclip --debug`` shows the traceback of anything. Atomic writes have already removed their
    temporary files by the time an exception arrives here.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (SystemExit, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            if DEBUG[0]:
                raise
            click.echo("emoclip: interrupted; files being written were discarded, earlier outputs are unchanged",
                       err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `emoclip predict … | head`: the reader left; say nothing more
            sys.stderr.close()
            sys.exit(EXIT_SOME_FAILED)
        except Exception as exc:
            if DEBUG[0]:
                raise
            message = explain(exc)
            if message is None:
                click.echo(f"emoclip: error: internal error ({shorten(f'{type(exc).__name__}: {exc}', 300)}); "
                           "rerun with `emoclip --debug …` for the traceback and report it", err=True)
                sys.exit(EXIT_BUG)
            click.echo(f"emoclip: error: {message}", err=True)
            sys.exit(getattr(exc, "exit_status", EXIT_USAGE))
    return wrapper


DEBUG = [False]  # set by the main group's --debug for this invocation


def raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def usage_line(exc: click.UsageError) -> str:
    """Click's own refusal (a bad option value, a missing argument) as emoclip's one line, with the fix."""
    where = f"`{exc.ctx.command_path} --help`" if exc.ctx is not None else "`emoclip --help`"
    return f"emoclip: error: {shorten(exc.format_message()).rstrip('.')}; see {where} for the options"


class EmoclipGroup(click.Group):
    """Every command runs inside ``handle_errors``, with SIGTERM handled like Ctrl-C; click's own
    usage errors become one ``emoclip: error:`` line too (exit 2), never click's multi-line block."""

    def invoke(self, ctx: click.Context):
        DEBUG[0] = bool(ctx.params.get("debug"))
        previous = None
        with contextlib.suppress(ValueError):  # not the main thread (e.g. embedded): leave signals alone
            previous = signal.signal(signal.SIGTERM, raise_interrupt)
        try:
            return handle_errors(super().invoke)(ctx)
        except click.UsageError as exc:
            click.echo(usage_line(exc), err=True)
            sys.exit(EXIT_USAGE)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def scale_options(func: Callable) -> Callable:
    """Inputs at scale (file lists, tar shards) and resumable sharded output (shards.py, ray_engine.py)."""
    options = [
        click.option("--files-from", type=click.Path(dir_okay=False), default=None,
                     help="Also tag the paths listed in this file: one per line, or a Parquet file's --path-column."),
        click.option("--path-column", default="path", show_default=True, help="Column of paths in a Parquet list."),
        click.option("--output-dir", type=click.Path(file_okay=False), default=None,
                     help="Write Parquet shards + a manifest here; rerunning the same command resumes."),
        click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1),
                     help="Rows per shard (--output-dir)."),
        click.option("--overwrite", is_flag=True, help="Start --output-dir over instead of resuming it."),
        click.option("--save-features", is_flag=True, help="Store each image's CLIP feature (--output-dir)."),
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="ray: run on Ray Data (--output-dir; pip install 'emoclip[ray]')."),
        click.option("--ray-address", default=None, help="Ray cluster to join (default RAY_ADDRESS, else local)."),
        click.option("--ray-actors", "actors", default=None, type=click.IntRange(min=1),
                     help="Model actors (default: one per GPU, else one per --ray-cpus-per-actor CPUs)."),
        click.option("--ray-cpus-per-actor", "cpus_per_actor", default=1.0, show_default=True,
                     type=click.FloatRange(min=0.01), help="CPUs reserved per actor."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def dataset_options(func: Callable) -> Callable:
    """Where the labelled data is: shared by evaluate, train and split."""
    options = [
        click.option("--root", type=click.Path(file_okay=False), default=None,
                     help="Image folder (paths in split files and manifests are relative to it)."),
        click.option("--split-file", type=click.Path(dir_okay=False), default=None,
                     help="CSV/TSV with image, label, split columns (e.g. emotion6/split_70_30.tsv)."),
        click.option("--manifest", "manifests", multiple=True, type=click.Path(dir_okay=False),
                     help="JSON manifest(s) (repeatable)."),
        click.option("--layout", default=None,
                     help="Data layout: folders, labelled, split-file, split-folders, kfold, manifest, emotionroi, "
                          "emoset, fi, artphoto, abstract; default: inferred."),
        click.option("--fold", type=int, default=None, help="k-fold data: the test fold (the others train)."),
        click.option("--label-file", type=click.Path(dir_okay=False), default=None,
                     help="Labels in one table (image<TAB>label; bare file names or paths relative to --root; "
                          "header optional) for images without class folders."),
        click.option("--votes", type=click.Path(dir_okay=False), default=None,
                     help="Vote distributions: a table of image and one column per emotion (Emotion6's "
                          "ground_truth.txt, Abstract's CSV); adds label-distribution metrics, --target votes."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def open_dataset_from_options(root, split_file, manifests, layout, fold, label_file=None, votes=None):
    from emoclip.datasets.dataset import open_dataset

    return open_dataset(root, split_file, manifests, layout, fold, label_file, votes)


def exit_if_lost(lost: int, total: int, where: str) -> None:
    """Exit 1 after the outputs are written when images could not be read: scores cover fewer images."""
    if lost:
        click.echo(f"emoclip: {lost} of {total} images could not be read and were left out of the scores; "
                   f"{where} lists them with the reason", err=True)
        sys.exit(EXIT_SOME_FAILED)
