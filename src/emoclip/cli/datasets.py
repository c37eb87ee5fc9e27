"""`emoclip split`: writing fixed split files for a dataset."""

from __future__ import annotations

import logging

import click

from emoclip.cli.common import (
    handle_errors,
)
from emoclip.core.errors import EmoclipError

log = logging.getLogger("emoclip")


def _official_partitions(data) -> str | None:
    """What partitions the data already ships (folds or named splits), in words; None when it has none."""
    if data.extra.get("folds"):
        return f"{data.extra['folds']} official folds"
    if data.splits:
        return "official splits " + ", ".join(data.splits)
    return None


class _DropDefaultFold(logging.Filter):
    """`split` reassigns every image, so the shipped folds' default test fold means nothing here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("no --fold given")


@click.command("split")
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
@handle_errors
def split_command(root, ratios, names, folds, seed, taxonomy, layout, label_file, output) -> None:
    """Make a deterministic stratified split (or k folds) of a dataset and write it as a split file.

    A dataset that ships official partitions (fold folders, train/test lists) is re-split only with a
    warning: results on new partitions are not comparable with published ones.
    """
    from collections import Counter
    from pathlib import Path

    from emoclip.datasets.dataset import (
        check_folder_labels,
        open_dataset,
        stratified_folds,
        stratified_split,
        write_split_file,
    )
    from emoclip.labels.taxonomy import load_taxonomy

    quiet = _DropDefaultFold()
    log.addFilter(quiet)
    try:
        data = open_dataset(root, layout=layout, label_file=label_file)
    finally:
        log.removeFilter(quiet)
    check_folder_labels(data, load_taxonomy(taxonomy) if taxonomy else None)
    official = _official_partitions(data)
    if official:
        use = ("train with --fold K on the root itself" if data.extra.get("folds")
               else "train on its own splits (no --split-file)")
        log.warning("%s already has %s; new %s are not the published protocol and their results are not comparable "
                    "with published ones: to use the official ones, %s", root, official,
                    "folds" if folds is not None else "splits", use)
    if folds is not None:
        data = stratified_folds(data, folds, seed)
    else:
        try:
            ratio_values = [float(r) for r in ratios.split(",")]
        except ValueError:
            raise EmoclipError(f"--ratios must be numbers separated by commas, got '{ratios}'") from None
        data = stratified_split(data, ratio_values, [n.strip() for n in names.split(",")], seed)
    write_split_file(data, Path(output), Path(root))
    counts = Counter(s.split for s in data.samples)
    click.echo(f"{len(data)} images → " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" → {output}")
