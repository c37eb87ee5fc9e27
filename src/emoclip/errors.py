"""User-facing errors.

Every problem a user can fix (a bad flag, a missing weights file, an unknown label) is raised as an
``EmoclipError`` whose message is one line that names the problem and the fix. The CLI prints it
without a traceback; Python callers can catch it like any exception.
"""

from __future__ import annotations


class EmoclipError(Exception):
    """A problem the user can fix; the message says how."""


class WeightsUnavailableError(EmoclipError):
    """Pretrained weights could neither be found locally nor downloaded."""


class TaxonomyError(EmoclipError):
    """A taxonomy is malformed, or a label does not belong to it."""


class ImageDecodeError(EmoclipError):
    """One image could not be decoded; batches record it and go on."""
