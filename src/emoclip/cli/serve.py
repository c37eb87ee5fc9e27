"""`emoclip serve`: the tagger over HTTP."""

from __future__ import annotations

import logging

import click

from emoclip.cli.common import (
    backbone_options,
    calibration_option,
    handle_errors,
    log,
    speed_options,
    tagger_config,
    taxonomy_options,
)
from emoclip.core.errors import EmoclipError
from emoclip.serve.options import serve_options, settings_from  # click only: FastAPI is imported when serving
from emoclip.serve.settings import check_bind


def serve_cache_options(func):
    """The feature cache is off for a service unless a folder is named: every distinct upload would
    otherwise add a file to it, without bound (uploads are rarely seen twice)."""
    func = click.option("--no-cache", is_flag=True, hidden=True,
                        help="Kept for scripts: the cache is off anyway.")(func)
    return click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                        help="Keep image features in this folder (off by default for a service: each distinct "
                             "upload adds a file).")(func)


@click.command()
@taxonomy_options
@backbone_options
@serve_cache_options
@speed_options(precision="auto", decode="draft")  # the same defaults as predict
@calibration_option
@click.option("--top-k", "-k", default=3, show_default=True, type=click.IntRange(min=1), help="Top labels per image.")
@click.option("--also", multiple=True, help="Coarser level to add (e.g. polarity); default: every level.")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Decoding threads (default: each encoder lane decodes its own; one lane: one per CPU).")
@click.option("--max-pixels", default=89_478_485, show_default=True, type=click.IntRange(min=1),
              help="Refuse larger images (422) as possible decompression bombs.")
@serve_options
@handle_errors
def serve(top_k, also, workers, max_pixels, calibration, **options) -> None:
    """Serve tagging over HTTP: a JSON API (POST /v1/predict) and a web page at /.

    Loads the model once; concurrent requests share encoder batches. Listens on 127.0.0.1:8000
    unless told otherwise; see the README's "Serving over HTTP".
    """
    import inspect

    settings = settings_from(**{k: options.pop(k) for k in inspect.signature(settings_from).parameters})
    check_bind(settings)  # before the heavy imports: a refused --host/--api-key answers at once
    options["no_cache"] = options.get("cache_dir") is None
    try:
        from emoclip.serve.server import serve as run_service
    except ImportError as exc:
        raise EmoclipError(f"emoclip serve needs {exc.name}; install it with: pip install 'emoclip[serve]'") from None
    config = tagger_config(**options, top_k=top_k, also=tuple(also) or None, batch_size=settings.max_batch,
                           calibration=tuple(calibration) or None,
                           workers=workers, max_pixels=max_pixels)
    run_service(config, settings, "info" if log.level <= logging.INFO else "warning")
