"""`emoclip split`: writing fixed split files for a dataset."""

from __future__ import annotations

import click

from emoclip.cli.common import (
    handle_errors,
)
from emoclip.core.errors import EmoclipError


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
    """Make a deterministic stratified split (or k folds) of a dataset and write it as a split file."""
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
