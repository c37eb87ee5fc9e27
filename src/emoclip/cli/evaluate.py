"""`emoclip evaluate`: scoring a model on a dataset split into a run folder."""

from __future__ import annotations

import click

from emoclip.cli.common import (
    backbone_options,
    cache_options,
    calibration_option,
    dataset_options,
    exit_if_lost,
    handle_errors,
    open_dataset_from_options,
    speed_options,
    tagger_config,
    taxonomy_options,
)


@click.command()
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
@calibration_option
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Run folder to write.")
@click.option("--name", default=None, help="Row label in `emoclip aggregate` (default: the method).")
@click.option("--seed", default=0, show_default=True, help="Recorded with the run (aggregate groups seeds).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Images per encoder call (default 16 on the CPU, 64 on CUDA).")
@click.option("--workers", default=None, type=click.IntRange(min=1))
@click.option("--mistakes", default=12, show_default=True, help="Thumbnails of the most confident mistakes.")
@handle_errors
def evaluate(root, split_file, manifests, layout, fold, label_file, votes, split, taxonomy, checkpoint, labels,
             templates, synonyms, label_taxonomy, via, also, model, pretrained, device, cache_dir, no_cache,
             decode, precision, calibration, out, name, seed, batch_size, workers, mistakes) -> None:
    """Score a model on a dataset split; write metrics.json, plots and report.md to --out."""
    from pathlib import Path

    from emoclip.tagging.config import build_classifier, open_cache, preflight, with_calibration

    preflight(tagger_config(checkpoint, pretrained=pretrained, model=model))

    from emoclip.evaluation.evaluate import evaluate as run_evaluation
    from emoclip.evaluation.report import write_run
    from emoclip.labels.taxonomy import load_taxonomy

    everything = open_dataset_from_options(root, split_file, manifests, layout, fold, label_file, votes)
    data = everything.split(split)
    if via == "prompts" and label_taxonomy:
        taxonomy = label_taxonomy  # prompt (or view) directly with the labels' taxonomy
    config = tagger_config(checkpoint, taxonomy, labels, templates, synonyms, model, pretrained, device, precision,
                           decode, cache_dir, no_cache, calibration=tuple(calibration) or None)
    # int8 calibrates on images outside the scored split where the data has them (no labels are used)
    others = [s.path for s in everything.samples if s.split not in (split, None)] if split != "all" else []
    config = with_calibration(config, others or data.paths)
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
           "backbone": backbone.record(), "taxonomy": model_tax.name, "label_taxonomy": label_tax.name,
           "via": via, **({"int8": backbone.int8_report.to_dict()} if backbone.int8_report else {})}
    write_run(result, run, Path(out), mistakes)
    m = result.metrics
    coarse = "".join(f"  {lvl}-acc={100 * cm['accuracy']:.2f}" for lvl, cm in m["coarse"].items())
    lost = f", {m['n_failed']} of {m['n'] + m['n_failed']} images unreadable" if m["n_failed"] else ""
    click.echo(f"{data.name}: n={m['n']} acc={100 * m['accuracy']:.2f} bal-acc={100 * m['balanced_accuracy']:.2f} "
               f"macro-F1={100 * m['macro_f1']:.2f}{coarse}  (cache {m['cache']['hits']} hits, "
               f"{m['cache']['misses']} misses; {m['seconds']['total']:.1f} s{lost}) → {out}")
    exit_if_lost(m["n_failed"], m["n"] + m["n_failed"], f"{out}/predictions.csv")
