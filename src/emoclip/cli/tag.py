"""`emoclip predict` and `emoclip merge`: tagging images, to a file or a resumable shard folder."""

from __future__ import annotations

import sys
import time

import click

from emoclip.cli.common import (
    EXIT_SOME_FAILED,
    backbone_options,
    cache_options,
    calibration_option,
    handle_errors,
    log,
    scale_options,
    speed_options,
    tagger_config,
    taxonomy_options,
)
from emoclip.core.errors import EmoclipError


@click.command()
@click.argument("paths", nargs=-1)
@taxonomy_options
@backbone_options
@cache_options
@speed_options(precision="auto", decode="draft")
@calibration_option
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
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Decoding threads (default: each encoder lane decodes its own; one lane: one per CPU).")
@click.option("--max-pixels", default=89_478_485, show_default=True, type=click.IntRange(min=1),
              help="Refuse larger images as possible decompression bombs.")
@click.option("--multi", type=click.FloatRange(0, 1), default=None, metavar="P",
              help="Also list every label with probability >= P (field 'multi'): the images that evoke several.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal).")
@scale_options
@handle_errors
def predict(paths, taxonomy, checkpoint, labels, templates, synonyms, model, pretrained, device, cache_dir, no_cache,
            decode, precision, calibration, top_k, also, fmt, output, batch_size, workers, max_pixels, multi,
            progress, files_from, path_column, output_dir, **scale) -> None:
    """Tag images (files, folders searched recursively, globs, WebDataset tar shards such as
    'shards/{00000..00099}.tar', or --files-from a list) with emotions.

    One row per image: the top label, its probability, the top-k labels, the full distribution and
    the coarser levels' distributions. Files that cannot be decoded get a row with an error; the
    exit status is then 1, after every other row is written. With --output-dir, rows go to Parquet
    shards committed one by one: rerun the same command after an interruption to resume.
    """
    from emoclip.tagging.config import build_tagger, preflight, with_calibration

    config = tagger_config(checkpoint, taxonomy, labels, templates, synonyms, model, pretrained, device, precision,
                           decode, cache_dir, no_cache, top_k=top_k, also=tuple(also) or None, batch_size=batch_size,
                           workers=workers, max_pixels=max_pixels, multi=multi,
                           calibration=tuple(calibration) or None)
    preflight(config)
    from tqdm import tqdm

    from emoclip.tagging.inputs import collect_inputs, iter_tagged, refuse_output_among_inputs

    started = time.perf_counter()
    inputs = collect_inputs(paths, files_from, path_column)
    config = with_calibration(config, inputs.items)  # int8: the job's own images calibrate
    if output_dir:  # shards.run_sharded refuses a folder of another job before torch is imported
        return _predict_sharded(config, inputs, output_dir, output, progress, **scale)
    from emoclip.tagging.writers import choose_format, open_writer  # imports torch (through the Tagger)

    if scale["engine"] != "local" or scale["save_features"]:
        raise EmoclipError("--engine ray and --save-features write Parquet shards; give --output-dir DIR")
    fmt = choose_format(fmt, output)
    refuse_output_among_inputs(inputs, output)
    images = inputs.items
    tagger = build_tagger(config)
    tax = tagger.taxonomy
    levels = {name: tax.find_ancestor(name).names for name in tagger.coarse_levels}
    failed = 0
    bar = tqdm(total=len(images), unit="img", disable=None if progress is None else not progress,
               file=sys.stderr, dynamic_ncols=True)
    with bar, open_writer(fmt, output, tax.names, levels, tagger.generates_text, inputs.extra_columns) as writer:
        for item, row in zip(images, iter_tagged(tagger, images, progress=bar.update), strict=True):
            writer.write(row, {name: getattr(item, name) for name in inputs.extra_columns})
            failed += not row.ok
    seconds = time.perf_counter() - started
    log.info("tagged %d images in %.1f s", len(images), seconds)
    if failed:
        click.echo(f"emoclip: {failed} of {len(images)} files could not be read; their rows carry the "
                   "reason in 'error'", err=True)
        sys.exit(EXIT_SOME_FAILED)


def _predict_sharded(config, inputs, output_dir, output, progress, shard_size, overwrite, save_features, engine,
                     ray_address, actors, cpus_per_actor) -> None:
    from emoclip.tagging.shards import run_sharded

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


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True,
              help="The file to write (atomically): .parquet, .csv or .jsonl.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv", "jsonl"]), default=None,
              help="Output format; default: from the --output suffix.")
@handle_errors
def merge(folder, output, fmt) -> None:
    """Join the shards of a finished `predict --output-dir` folder into one file, in input order."""
    from emoclip.tagging.shards import merge_shards

    rows = merge_shards(folder, output, fmt)
    click.echo(f"emoclip: {rows} rows → {output}", err=True)
