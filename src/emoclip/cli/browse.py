"""`emoclip browse DIR` (the page) and `emoclip search DIR …` (the same queries, from the command line)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from emoclip.cli.common import handle_errors, log
from emoclip.core.errors import EmoclipError


def query_options(func: Callable) -> Callable:
    """The page's filters and sorts as flags (one set for `search`; `browse` takes them from the page)."""
    options = [
        click.option("--label", "labels", multiple=True, help="Only rows whose top label is this (repeatable)."),
        click.option("--polarity", default=None, help="Only rows of this polarity (positive, negative)."),
        click.option("--min-probability", type=click.FloatRange(0, 1), default=None,
                     help="Only rows whose top probability is at least this."),
        click.option("--max-probability", type=click.FloatRange(0, 1), default=None,
                     help="Only rows whose top probability is at most this."),
        click.option("--uncertain", type=click.FloatRange(0, 1), default=None, metavar="MARGIN",
                     help="Only rows whose top two labels are closer than MARGIN."),
        click.option("--errors-only", is_flag=True, help="Only rows that could not be tagged."),
        click.option("--sort", default=None, metavar="KEY",
                     help="Order by an emotion's probability (e.g. awe: most awe first), 'probability', 'margin' "
                          "or 'id'. Ignored when searching (hits come by similarity)."),
        click.option("--ascending", is_flag=True, help="Smallest first."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _cache_option(func: Callable) -> Callable:
    return click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                        help="Where thumbnails and the search index are kept (default: beside the feature cache).")(
        func)


def _device_option(func: Callable) -> Callable:
    return click.option("--device", default=None,
                        help="Device for the text/image encoder (default: the one the folder was tagged with).")(func)


def _open(folder: str, cache_dir: str | None, device: str | None):
    from emoclip.browse.query import Browser

    return Browser(folder, cache_dir, device=device)


@click.command()
@click.argument("folder", type=click.Path())
@click.argument("text", required=False)
@click.option("--like", default=None, metavar="IMAGE",
              help="More like this: rank by likeness to an image (a path the folder lists, or any image file).")
@query_options
@click.option("--top", default=50, show_default=True, type=click.IntRange(min=1), help="How many rows.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write to this file (csv, json or jsonl by suffix; atomically); default: CSV on stdout.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "jsonl"]), default=None,
              help="Output format; default: from the --output suffix, else csv.")
@click.option("--compute-features", is_flag=True,
              help="For a folder tagged without --save-features: encode its images now (progress bar) so "
                   "text and likeness search work; kept in the cache.")
@_cache_option
@_device_option
@handle_errors
def search(folder, text, like, labels, polarity, min_probability, max_probability, uncertain, errors_only, sort,
           ascending, top, output, fmt, compute_features, cache_dir, device) -> None:
    """Rows of a shard folder (written by `emoclip predict --output-dir`): filtered, sorted, or ranked by
    a TEXT ("a calm evening by the sea") or --like an image — the very query the browse page runs.

    Example: emoclip search DIR "calm sea" --label contentment --top 50 -o hits.csv
    """
    from emoclip.browse.query import Query
    from emoclip.core.atomic import atomic_write

    fmt = fmt or (Path(output).suffix.lstrip(".").lower() if output else "csv")
    if fmt not in ("csv", "json", "jsonl"):
        raise EmoclipError(f"cannot write '{output}': use a .csv, .json or .jsonl name, or --format")
    browser = _open(folder, cache_dir, device)
    if compute_features:
        count = browser.compute_features()
        log.info("browse: encoded %d images", count)
    query = Query(labels=tuple(labels), levels={"polarity": (polarity,)} if polarity else {},
                  min_probability=min_probability, max_probability=max_probability, uncertain=uncertain,
                  errors_only=errors_only, sort=sort, ascending=ascending, text=text, like=like, top=top, limit=top)
    total = browser.run(query.replace(limit=0)).total
    pieces = browser.export(query, fmt, limit=top)
    if output:
        with atomic_write(output, "w", newline="") as handle:
            handle.writelines(pieces)
    else:
        click.echo("".join(pieces), nl=False)
    shown = min(total, top)
    click.echo(f"emoclip: {shown} of {total} matching rows" + (f" written to {output}" if output else ""), err=True)


@click.command()
@click.argument("folder", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --api-key (or --insecure-no-auth).")
@click.option("--port", default=8001, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0: a free one, printed at start).")
@click.option("--api-key", default=None, envvar="EMOCLIP_API_KEY",
              help="Require this key ('Authorization: Bearer KEY' or 'X-API-Key: KEY'); prefer the EMOCLIP_API_KEY "
                   "environment variable.")
@click.option("--insecure-no-auth", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option("--thumb-cache-mb", default=256, show_default=True, type=click.IntRange(min=1),
              help="Bound on the thumbnail cache on disk.")
@_cache_option
@_device_option
@handle_errors
def browse(folder, host, port, api_key, insecure_no_auth, thumb_cache_mb, cache_dir, device) -> None:
    """A web page over a shard folder (written by `emoclip predict --output-dir`, while it runs or after):
    a grid of thumbnails with their emotions, filters and sorts over the whole folder, text search and
    "more like this", charts, and export of the selection. See docs/browse.md.
    """
    import logging

    try:
        from emoclip.browse.server import browse as run_page
    except ImportError as exc:
        raise EmoclipError(f"emoclip browse needs {exc.name}; install it with: pip install 'emoclip[browse]'") from None
    from emoclip.serve.settings import ServeSettings

    settings = ServeSettings(host=host, port=port, api_key=api_key or None, insecure_no_auth=insecure_no_auth)
    from emoclip.serve.settings import check_bind

    check_bind(settings)      # before the folder is read: a refused bind costs nothing
    browser = _open(folder, cache_dir, device)
    run_page(browser, settings, thumb_cache_mb * 1024 * 1024, "info" if log.level <= logging.INFO else "warning")
