"""`emoclip methods`, `taxonomies`, `templates`, `models`: what emoclip knows, listed."""

from __future__ import annotations

import click

from emoclip.cli.common import (
    handle_errors,
)


@click.command()
def methods() -> None:
    """List the methods: zero-shot (no training) and the trainable ones with their options."""
    import dataclasses

    from emoclip.methods import list_methods

    click.echo("zero-shot: CLIP with prompts, no training (`emoclip evaluate`/`predict` without --checkpoint)")
    click.echo("    templates = 'a photo seems to express a feeling of {}'  (--templates, --synonyms)")
    for name, cls in list_methods().items():
        click.echo(f"{name}: {cls.summary}")
        for f in dataclasses.fields(cls.Config):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[operator]
            click.echo(f"    {f.name} = {default!r}")


@click.command()
@click.argument("name", required=False)
@handle_errors
def taxonomies(name: str | None) -> None:
    """List the built-in taxonomies, or show one (classes, parents, synonyms)."""
    from emoclip.labels.taxonomy import builtin_taxonomies, load_taxonomy

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


@click.command()
def templates() -> None:
    """List the built-in prompt template sets."""
    from emoclip.labels.prompts import template_sets

    for name, items in template_sets().items():
        click.echo(f"{name}:")
        for t in items:
            click.echo(f"  {t}")


@click.command()
@click.option("--pretrained-tags", is_flag=True, help="Also list each model's pretrained tags.")
def models(pretrained_tags: bool) -> None:
    """List the CLIP architectures open_clip knows (and emoclip's `tiny`)."""
    import open_clip

    from emoclip.encoder.backbone import available_models

    for name in available_models():
        tags = open_clip.list_pretrained_tags_by_model(name) if pretrained_tags else []
        click.echo(f"{name}  {' '.join(tags)}".rstrip())
