"""The ``emoclip`` command line.

Every command is a thin layer over the Python API (``load_backbone``, ``load_taxonomy``,
``ZeroShotClassifier``, ``Tagger``): the CLI parses options, prints progress on a terminal only,
and turns ``EmoclipError`` into a one-line message with exit status 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import signal
import sys
import time
from collections.abc import Callable

import click

from .errors import EmoclipError, explain, shorten
from .serve.options import serve_options, settings_from  # click only: FastAPI is imported when serving

EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

log = logging.getLogger("emoclip")


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("emoclip: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    # open_clip logs 'INFO:root:' lines on the root logger: never ours to show, even with -v
    logging.getLogger().setLevel(logging.WARNING if verbose else logging.CRITICAL)


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
        click.option("--device", default="auto", show_default=True, envvar="EMOCLIP_DEVICE",
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
    def add(func: Callable) -> Callable:
        if decode is not None:
            func = click.option("--decode", type=click.Choice(["draft", "full"]), default=decode, show_default=True,
                                help="draft: JPEGs at least twice the model input decode at reduced size (fast on "
                                     "photos, pixels differ slightly); full: exact.")(func)
        fallback = "" if precision else " [default: fp32, or the config's backbone.precision]"
        return click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=precision,
                            show_default=precision is not None, envvar="EMOCLIP_PRECISION",
                            help="Image encoder number format; auto: bf16 where this CPU measurably runs it faster, "
                                 "fp16 on CUDA, else fp32." + fallback)(func)
    return add


def taxonomy_options(func: Callable) -> Callable:
    options = [
        click.option("--taxonomy", "-t", default=None,
                     help="Built-in taxonomy name (`emoclip taxonomies`) or a YAML/TOML/JSON taxonomy file "
                          "(default mikels8, or the checkpoint's)."),
        click.option("--checkpoint", type=click.Path(exists=True), default=None,
                     help="A run folder written by `emoclip train`: use its trained model instead of zero-shot."),
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


def _config(checkpoint=None, taxonomy=None, labels=None, templates=None, synonyms=False, model=None,
            pretrained=None, device="auto", precision="auto", decode="draft", cache_dir=None, no_cache=False,
            **rest):
    """The TaggerConfig of a command's options (tagging.py builds every front end's tagger from it)."""
    from .tagging import TaggerConfig

    if labels is not None and taxonomy is not None:
        raise EmoclipError("--labels and --taxonomy were both given; give either --labels or --taxonomy, not both")
    label_list = tuple(labels.split(",")) if labels is not None else None  # "" is an error, not the default
    return TaggerConfig(checkpoint=checkpoint, taxonomy=taxonomy, labels=label_list, templates=templates,
                        synonyms=synonyms, model=model, pretrained=pretrained, device=device, precision=precision,
                        decode=decode, cache_dir=cache_dir, no_cache=no_cache, **rest)


def _handle_errors(func: Callable) -> Callable:
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
            if _DEBUG[0]:
                raise
            click.echo("emoclip: interrupted; files being written were discarded, earlier outputs are unchanged",
                       err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `emoclip predict … | head`: the reader left; say nothing more
            sys.stderr.close()
            sys.exit(EXIT_SOME_FAILED)
        except Exception as exc:
            if _DEBUG[0]:
                raise
            message = explain(exc)
            if message is None:
                click.echo(f"emoclip: error: internal error ({shorten(f'{type(exc).__name__}: {exc}', 300)}); "
                           "rerun with `emoclip --debug …` for the traceback and report it", err=True)
                sys.exit(EXIT_BUG)
            click.echo(f"emoclip: error: {message}", err=True)
            sys.exit(getattr(exc, "exit_status", EXIT_USAGE))
    return wrapper


_DEBUG = [False]  # set by the main group's --debug for this invocation


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _usage_line(exc: click.UsageError) -> str:
    """Click's own refusal (a bad option value, a missing argument) as emoclip's one line, with the fix."""
    where = f"`{exc.ctx.command_path} --help`" if exc.ctx is not None else "`emoclip --help`"
    return f"emoclip: error: {shorten(exc.format_message()).rstrip('.')}; see {where} for the options"


class _Group(click.Group):
    """Every command runs inside ``_handle_errors``, with SIGTERM handled like Ctrl-C; click's own
    usage errors become one ``emoclip: error:`` line too (exit 2), never click's multi-line block."""

    def invoke(self, ctx: click.Context):
        _DEBUG[0] = bool(ctx.params.get("debug"))
        previous = None
        with contextlib.suppress(ValueError):  # not the main thread (e.g. embedded): leave signals alone
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return _handle_errors(super().invoke)(ctx)
        except click.UsageError as exc:
            click.echo(_usage_line(exc), err=True)
            sys.exit(EXIT_USAGE)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--verbose", "-v", is_flag=True, help="Log what happens (weights, cache, timings).")
@click.option("--debug", is_flag=True, help="Show the Python traceback of any failure (for bug reports).")
@click.version_option(package_name="emoclip")
def main(verbose: bool, debug: bool) -> None:
    """emoclip: tag images with the emotions they evoke, using CLIP."""
    _setup_logging(verbose)


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


@main.command()
@click.argument("paths", nargs=-1)
@taxonomy_options
@backbone_options
@cache_options
@speed_options(precision="auto", decode="draft")
@click.option("--top-k", "-k", default=3, show_default=True, type=click.IntRange(min=1),
              help="How many top labels to list per image.")
@click.option("--also", "also", multiple=True,
              help="Coarser level to add (e.g. polarity); default: every level the taxonomy maps into.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json", "csv", "parquet"]), default=None,
              help="Output format; default: from the --output suffix, else jsonl.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write to this file (atomically: it appears only when the run completes); default stdout.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Images per encoder call (default 16 on the CPU, 64 on CUDA).")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Decoding threads (default: CPUs).")
@click.option("--max-pixels", default=89_478_485, show_default=True, type=click.IntRange(min=1),
              help="Refuse larger images as possible decompression bombs.")
@click.option("--multi", type=click.FloatRange(0, 1), default=None, metavar="P",
              help="Also list every label with probability >= P (field 'multi'): the images that evoke several.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal).")
@scale_options
@_handle_errors
def predict(paths, taxonomy, checkpoint, labels, templates, synonyms, model, pretrained, device, cache_dir, no_cache,
            decode, precision, top_k, also, fmt, output, batch_size, workers, max_pixels, multi, progress, files_from,
            path_column, output_dir, **scale) -> None:
    """Tag images (files, folders searched recursively, globs, WebDataset tar shards such as
    'shards/{00000..00099}.tar', or --files-from a list) with emotions.

    One row per image: the top label, its probability, the top-k labels, the full distribution and
    the coarser levels' distributions. Files that cannot be decoded get a row with an error; the
    exit status is then 1, after every other row is written. With --output-dir, rows go to Parquet
    shards committed one by one: rerun the same command after an interruption to resume.
    """
    from .tagging import build_tagger, preflight

    config = _config(checkpoint, taxonomy, labels, templates, synonyms, model, pretrained, device, precision, decode,
                     cache_dir, no_cache, top_k=top_k, also=tuple(also) or None, batch_size=batch_size,
                     workers=workers, max_pixels=max_pixels, multi=multi)
    preflight(config)
    from tqdm import tqdm

    from .output import choose_format, open_writer
    from .sources import collect_inputs, iter_tagged

    started = time.perf_counter()
    if output_dir:
        return _predict_sharded(config, collect_inputs(paths, files_from, path_column), output_dir, output, progress,
                                **scale)
    if scale["engine"] != "local" or scale["save_features"]:
        raise EmoclipError("--engine ray and --save-features write Parquet shards; give --output-dir DIR")
    fmt = choose_format(fmt, output)
    images = collect_inputs(paths, files_from, path_column).items
    tagger = build_tagger(config)
    tax = tagger.taxonomy
    levels = {name: tax.find_ancestor(name).names for name in tagger.coarse_levels}
    failed = 0
    bar = tqdm(total=len(images), unit="img", disable=None if progress is None else not progress,
               file=sys.stderr, dynamic_ncols=True)
    with bar, open_writer(fmt, output, tax.names, levels, tagger.generates_text) as writer:
        for row in iter_tagged(tagger, images, progress=bar.update):
            writer.write(row)
            failed += not row.ok
    seconds = time.perf_counter() - started
    log.info("tagged %d images in %.1f s", len(images), seconds)
    if failed:
        click.echo(f"emoclip: {failed} of {len(images)} files could not be read; their rows carry the "
                   "reason in 'error'", err=True)
        sys.exit(EXIT_SOME_FAILED)


def _predict_sharded(config, inputs, output_dir, output, progress, shard_size, overwrite, save_features, engine,
                     ray_address, actors, cpus_per_actor) -> None:
    from .shards import run_sharded

    if output:
        raise EmoclipError("--output and --output-dir exclude each other; `emoclip merge DIR -o FILE` makes one file")
    done = run_sharded(config, inputs, output_dir, shard_size, save_features, overwrite, engine, progress,
                       ray_address=ray_address, actors=actors, cpus_per_actor=cpus_per_actor)
    click.echo(f"emoclip: {done.rows} rows in {done.shards} shards in {done.folder} ({done.computed} computed now, "
               f"{done.shards - done.computed} resumed; {done.seconds:.1f} s)", err=True)
    if done.errors:
        click.echo(f"emoclip: {done.errors} of {done.rows} images could not be read; their rows carry the reason "
                   "in 'error'", err=True)
        sys.exit(EXIT_SOME_FAILED)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True,
              help="The file to write (atomically): .parquet, .csv or .jsonl.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv", "jsonl"]), default=None,
              help="Output format; default: from the --output suffix.")
@_handle_errors
def merge(folder, output, fmt) -> None:
    """Join the shards of a finished `predict --output-dir` folder into one file, in input order."""
    from .shards import merge_shards

    rows = merge_shards(folder, output, fmt)
    click.echo(f"emoclip: {rows} rows → {output}", err=True)


@main.command()
@taxonomy_options
@backbone_options
@cache_options
@speed_options(precision="auto", decode="draft")  # the same defaults as predict
@click.option("--top-k", "-k", default=3, show_default=True, type=click.IntRange(min=1), help="Top labels per image.")
@click.option("--also", multiple=True, help="Coarser level to add (e.g. polarity); default: every level.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Decoding threads (default: CPUs).")
@click.option("--max-pixels", default=89_478_485, show_default=True, type=click.IntRange(min=1),
              help="Refuse larger images (422) as possible decompression bombs.")
@serve_options
@_handle_errors
def serve(top_k, also, workers, max_pixels, **options) -> None:
    """Serve tagging over HTTP: a JSON API (POST /v1/predict) and a web page at /.

    Loads the model once; concurrent requests share encoder batches. Listens on 127.0.0.1:8000
    unless told otherwise; see the README's "Serving over HTTP".
    """
    import inspect

    try:
        from .serve.server import serve as run_service
    except ImportError as exc:
        raise EmoclipError(f"emoclip serve needs {exc.name}; install it with: pip install 'emoclip[serve]'") from None
    settings = settings_from(**{k: options.pop(k) for k in inspect.signature(settings_from).parameters})
    config = _config(**options, top_k=top_k, also=tuple(also) or None, batch_size=settings.max_batch,
                     workers=workers, max_pixels=max_pixels)
    run_service(config, settings, "info" if log.level <= logging.INFO else "warning")


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


def _dataset(root, split_file, manifests, layout, fold, label_file=None, votes=None):
    from .data.dataset import open_dataset

    return open_dataset(root, split_file, manifests, layout, fold, label_file, votes)


@main.command()
@dataset_options
@click.option("--split", default="test", show_default=True, help="Which split to score (`all` for every image).")
@taxonomy_options
@click.option("--label-taxonomy", default=None,
              help="Taxonomy of the dataset's labels when it differs from the model's (cross-dataset).")
@click.option("--via", type=click.Choice(["parent", "prompts"]), default="parent", show_default=True,
              help="Cross-taxonomy: map predictions up through parents, or prompt directly with the label "
                   "taxonomy (zero-shot).")
@click.option("--also", multiple=True, help="Also score at this coarser level (e.g. polarity); repeatable.")
@backbone_options
@cache_options
@speed_options(precision="fp32", decode="full")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Run folder to write.")
@click.option("--name", default=None, help="Row label in `emoclip aggregate` (default: the method).")
@click.option("--seed", default=0, show_default=True, help="Recorded with the run (aggregate groups seeds).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Images per encoder call (default 16 on the CPU, 64 on CUDA).")
@click.option("--workers", default=None, type=click.IntRange(min=1))
@click.option("--mistakes", default=12, show_default=True, help="Thumbnails of the most confident mistakes.")
@_handle_errors
def evaluate(root, split_file, manifests, layout, fold, label_file, votes, split, taxonomy, checkpoint, labels,
             templates, synonyms, label_taxonomy, via, also, model, pretrained, device, cache_dir, no_cache,
             decode, precision, out, name, seed, batch_size, workers, mistakes) -> None:
    """Score a model on a dataset split; write metrics.json, plots and report.md to --out."""
    from pathlib import Path

    from .tagging import build_classifier, open_cache, preflight

    preflight(_config(checkpoint, pretrained=pretrained, model=model))

    from .evaluate import evaluate as run_evaluation
    from .report import write_run
    from .taxonomy import load_taxonomy

    data = _dataset(root, split_file, manifests, layout, fold, label_file, votes).split(split)
    if via == "prompts" and label_taxonomy:
        taxonomy = label_taxonomy  # prompt (or view) directly with the labels' taxonomy
    config = _config(checkpoint, taxonomy, labels, templates, synonyms, model, pretrained, device, precision, decode,
                     cache_dir, no_cache)
    backbone, classifier = build_classifier(config)
    model_tax = classifier.taxonomy
    label_tax = load_taxonomy(label_taxonomy) if label_taxonomy else model_tax
    data.label_indices(label_tax)  # unknown labels fail before any encoding
    cache = open_cache(config, backbone)
    result = run_evaluation(backbone, classifier, data, label_tax, also, cache, batch_size, workers)
    described = classifier.describe()
    run = {"name": name or described["method"], "method": described, "seed": seed, "checkpoint": checkpoint,
           "dataset": data.name, "split": split, "dataset_label": data.name.split(":")[0],
           "data_source": data.source, "fold": data.extra.get("fold"),
           "backbone": backbone.identity(), "taxonomy": model_tax.name, "label_taxonomy": label_tax.name,
           "via": via}
    write_run(result, run, Path(out), mistakes)
    m = result.metrics
    coarse = "".join(f"  {lvl}-acc={100 * cm['accuracy']:.2f}" for lvl, cm in m["coarse"].items())
    lost = f", {m['n_failed']} of {m['n'] + m['n_failed']} images unreadable" if m["n_failed"] else ""
    click.echo(f"{data.name}: n={m['n']} acc={100 * m['accuracy']:.2f} bal-acc={100 * m['balanced_accuracy']:.2f} "
               f"macro-F1={100 * m['macro_f1']:.2f}{coarse}  (cache {m['cache']['hits']} hits, "
               f"{m['cache']['misses']} misses; {m['seconds']['total']:.1f} s{lost}) → {out}")
    _exit_if_lost(m["n_failed"], m["n"] + m["n_failed"], f"{out}/predictions.csv")


def _exit_if_lost(lost: int, total: int, where: str) -> None:
    """Exit 1 after the outputs are written when images could not be read: scores cover fewer images."""
    if lost:
        click.echo(f"emoclip: {lost} of {total} images could not be read and were left out of the scores; "
                   f"{where} lists them with the reason", err=True)
        sys.exit(EXIT_SOME_FAILED)


@main.command("train")
@click.option("--config", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="YAML/TOML experiment config(s) (see configs/), merged in order; command-line options override.")
@click.option("--method", default=None, help="Method to train (`emoclip methods`).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A method option, e.g. --set weight=cos01 (repeatable).")
@dataset_options
@click.option("--taxonomy", "-t", default=None, help="Taxonomy the model predicts (default emotionroi6).")
@click.option("--label-taxonomy", default=None,
              help="Taxonomy of the dataset's labels when it differs from --taxonomy (finer labels are mapped "
                   "up through parents, e.g. emotion labels trained as polarity).")
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="Few-shot: K training images per class, drawn with --seed (recorded in model.json).")
@click.option("--target", type=click.Choice(["labels", "votes"]), default=None,
              help="Train on the labels, or on the annotators' vote distributions (needs --votes or "
                   "votes in the data).")
@backbone_options
@cache_options
@speed_options(precision=None, decode=None)
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default=None)
@click.option("--scheduler", type=click.Choice(["none", "step", "plateau"]), default=None)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Part of train held out for model selection.")
@click.option("--also", multiple=True, help="Coarser levels to score on the test split (e.g. polarity).")
@click.option("--name", default=None, help="Row label in `emoclip aggregate`.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last epoch.")
@click.option("--progress/--no-progress", default=None)
@_handle_errors
def train_command(config_files, method, sets, root, split_file, manifests, layout, fold, label_file, votes, taxonomy,
                  label_taxonomy, shots, target, model, pretrained, device, cache_dir, no_cache, precision, epochs,
                  batch_size, lr, optimizer, scheduler, weight_decay, seed, val_fraction, also, name, out, resume,
                  progress) -> None:
    """Train a method on cached features, keep the best-on-validation checkpoint, score it on test."""
    from pathlib import Path

    import yaml

    from .bart_weights import preflight_experiment

    options = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise EmoclipError(f"--set needs KEY=VALUE, got '{shorten(item, 80)}'; write e.g. --set lr=0.01")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise EmoclipError(f"--set {shorten(item, 80)}: the value is not valid YAML; quote it") from None
    preflight_experiment(list(config_files), method, options)  # BART offline: answer before torch loads

    from .experiment import merge, read_configs, run_experiment
    overrides = {
        "method": method, "options": options, "taxonomy": taxonomy, "label_taxonomy": label_taxonomy, "name": name,
        "also": list(also) or None,
        "data": {"root": root, "split_file": split_file, "manifests": list(manifests) or None, "layout": layout,
                 "fold": fold, "label_file": label_file, "votes": votes},
        "backbone": {"model": model, "pretrained": pretrained, "precision": precision},  # default fp32
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "lr_grid": [] if lr is not None else None,
                  "optimizer": optimizer,
                  "scheduler": scheduler, "weight_decay": weight_decay, "seed": seed, "val_fraction": val_fraction,
                  "shots": shots, "target": target},
    }
    config = merge(read_configs(list(config_files)), overrides)
    summary = run_experiment(config, out, device, cache_dir, no_cache, resume, progress)
    t = summary["training"]
    test = summary.get("test", {})
    per_epoch = ""
    log_file = Path(out) / "log.jsonl"
    history = [json.loads(line) for line in log_file.read_text().splitlines()] if t.get("epochs") else []
    if history:
        per_epoch = f", {sum(h['seconds'] for h in history) / len(history):.2f} s/epoch"
    scores = " ".join(f"{k}={100 * v:.2f}" if k.endswith(("accuracy", "f1")) else f"{k}={v:.4f}"
                      for k, v in test.items())
    fitted = (f"{t['epochs']} epochs{per_epoch}, best epoch {t.get('best_epoch')}" if t.get("epochs")
              else "fitted directly" + "".join(f", {k} {v:g}" for k, v in t.get("fit", {}).items()
                                               if isinstance(v, int | float)))
    if t.get("lr_selection"):
        fitted += f", lr {t['lr_selection']['chosen']:g} chosen on validation"
    click.echo(f"{summary['method']}: {fitted} (val acc {100 * t.get('val_accuracy', 0):.2f}); "
               f"test {scores or 'not scored'} → {out}")
    lost = summary.get("lost", {})
    _exit_if_lost(sum(lost.values()), sum(summary.get("listed", {}).values()), f"{out}/summary.json")


@main.command()
def methods() -> None:
    """List the methods: zero-shot (no training) and the trainable ones with their options."""
    import dataclasses

    from .methods import list_methods

    click.echo("zero-shot: CLIP with prompts, no training (`emoclip evaluate`/`predict` without --checkpoint)")
    click.echo("    templates = 'a photo seems to express a feeling of {}'  (--templates, --synonyms)")
    for name, cls in list_methods().items():
        click.echo(f"{name}: {cls.summary}")
        for f in dataclasses.fields(cls.Config):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            click.echo(f"    {f.name} = {default!r}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--metric", type=click.Choice(["accuracy", "balanced_accuracy", "macro_f1"]), default="accuracy",
              show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Also write the table here (.md) and its figures beside it (.json).")
@_handle_errors
def aggregate(runs, metric, out) -> None:
    """Mean ± std over seeds and folds in the layout of the papers' tables (RUNS: run folders or folders of them).

    Runs differing only in seed and fold form one cell; other backbones, weights, precision, few-shot K
    or data are separate, labelled rows or columns.
    """
    import json
    from pathlib import Path

    from .aggregate import aggregate as build
    from .aggregate import load_runs, markdown_table
    from .atomic import atomic_write_text

    table = build(load_runs(runs), metric)
    text = markdown_table(table, metric)
    click.echo(text, nl=False)
    if out:
        atomic_write_text(out, text)
        atomic_write_text(Path(out).with_suffix(".json"), json.dumps(table, indent=2) + "\n")


@main.command()
@click.argument("grid", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", default="auto", show_default=True, envvar="EMOCLIP_DEVICE", help="auto, cpu, cuda or cuda:N.")
@cache_options
@click.option("--dry-run", is_flag=True, help="List the runs that would run, run nothing.")
@click.option("--progress/--no-progress", default=None)
@_handle_errors
def sweep(grid, device, cache_dir, no_cache, dry_run, progress) -> None:
    """Run a grid of methods × seeds × shots × folds from a YAML file (skipping finished runs), then aggregate."""
    from .sweep import run_sweep

    run_sweep(grid, device, cache_dir, no_cache, progress, dry_run, echo=click.echo)


@main.command("split")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--ratios", default="0.7,0.3", show_default=True, help="Comma-separated split sizes.")
@click.option("--names", default="train,test", show_default=True, help="Comma-separated split names.")
@click.option("--folds", type=int, default=None,
              help="Make K stratified folds (fold1…foldK) instead; train with --split-file FILE --fold K.")
@click.option("--seed", default=0, show_default=True)
@click.option("--taxonomy", "-t", default=None,
              help="Check every label against this taxonomy (without it, fold/split folder names are refused).")
@click.option("--layout", default=None, help="Data layout (default: inferred; see `emoclip evaluate --help`).")
@click.option("--label-file", type=click.Path(dir_okay=False), default=None,
              help="Labels in one table for images without class folders.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="Split file to write (TSV).")
@_handle_errors
def split_command(root, ratios, names, folds, seed, taxonomy, layout, label_file, output) -> None:
    """Make a deterministic stratified split (or k folds) of a dataset and write it as a split file."""
    from collections import Counter
    from pathlib import Path

    from .data.dataset import check_folder_labels, open_dataset, stratified_folds, stratified_split, write_split_file
    from .taxonomy import load_taxonomy

    data = open_dataset(root, layout=layout, label_file=label_file)
    check_folder_labels(data, load_taxonomy(taxonomy) if taxonomy else None)
    if folds is not None:
        data = stratified_folds(data, folds, seed)
    else:
        try:
            ratio_values = [float(r) for r in ratios.split(",")]
        except ValueError:
            raise EmoclipError(f"--ratios must be numbers separated by commas, got '{ratios}'") from None
        data = stratified_split(data, ratio_values, names.split(","), seed)
    write_split_file(data, Path(output), Path(root))
    counts = Counter(s.split for s in data.samples)
    click.echo(f"{len(data)} images → " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" → {output}")


@main.command()
@click.argument("name", required=False)
@_handle_errors
def taxonomies(name: str | None) -> None:
    """List the built-in taxonomies, or show one (classes, parents, synonyms)."""
    from .taxonomy import builtin_taxonomies, load_taxonomy

    if name is None:
        for tax_name in builtin_taxonomies():
            tax = load_taxonomy(tax_name)
            parent = f" → {tax.parent.name}" if tax.parent else ""
            click.echo(f"{tax_name:<12} {len(tax):>3} classes{parent:<14} {tax.description}")
        return
    tax = load_taxonomy(name)
    click.echo(f"{tax.name}: {tax.description}")
    for cls in tax.classes:
        parent = f" → {cls.parent}" if cls.parent else ""
        syn = f"  ({', '.join(cls.synonyms)})" if cls.synonyms else ""
        click.echo(f"  {cls.name}{parent}{syn}")


@main.command()
def templates() -> None:
    """List the built-in prompt template sets."""
    from .prompts import template_sets

    for name, items in template_sets().items():
        click.echo(f"{name}:")
        for t in items:
            click.echo(f"  {t}")


@main.command()
@click.option("--pretrained-tags", is_flag=True, help="Also list each model's pretrained tags.")
def models(pretrained_tags: bool) -> None:
    """List the CLIP architectures open_clip knows (and emoclip's `tiny`)."""
    import open_clip

    from .backbone import available_models

    for name in available_models():
        tags = open_clip.list_pretrained_tags_by_model(name) if pretrained_tags else []
        click.echo(f"{name}  {' '.join(tags)}".rstrip())


if __name__ == "__main__":
    main()
