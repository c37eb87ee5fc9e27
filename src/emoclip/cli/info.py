"""`emoclip methods`, `taxonomies`, `templates`, `models`: what emoclip knows, listed."""

from __future__ import annotations

import click

from emoclip.cli.common import (
    handle_errors,
)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The method cards as JSON (options, ranges, recipes).")
@click.option("--brief", is_flag=True, help="One line per method, without its options.")
def methods(as_json: bool, brief: bool) -> None:
    """List the methods: zero-shot and the trainable ones, each with its options (type, default, valid
    values, help), capabilities and training recipe. Reads the method cards: no torch is imported."""
    from emoclip.schema.methods import list_method_cards

    cards = list_method_cards()
    if as_json:
        import json

        click.echo(json.dumps([card.to_dict() for card in cards.values()], indent=2, default=str))
        return
    for card in cards.values():
        tags = [t for t, on in (("no training", not card.trainable), ("several taxonomies", card.multi_taxonomy))
                if on] + [f"downloads {w}" for w in card.external_weights]
        click.echo(f"{card.name}: {card.summary}" + (f"  [{', '.join(tags)}]" if tags else ""))
        if brief:
            continue
        for info in card.options():
            allowed = f"; {info.allowed}" if info.allowed else ""
            click.echo(f"    {info.name} = {info.default!r}  ({info.type}{allowed}) {info.help}")
        if card.train_defaults:
            recipe = ", ".join(f"{k}={v}" for k, v in card.train_defaults.items())
            click.echo(f"    recipe: {recipe}" + (f"  (--recipe {card.recipe})" if card.recipe else ""))


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
