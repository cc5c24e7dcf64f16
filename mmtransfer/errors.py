"""The errors a user can cause and fix: a wrong config value, bad data, missing weights or packages, bad input.

Each message starts with where the problem is (``file: field:`` or ``file:line:``) and says what is wrong;
the CLI prints it as one line (``mmtransfer: error: ...``, exit status 2) instead of a traceback.
Every class also derives from the built-in exception a caller would expect (``ValueError``, ...).
"""

from __future__ import annotations


class MMTransferError(Exception):
    """A mistake in what the user gave, as opposed to a bug: the message alone tells how to fix it."""


class ConfigError(MMTransferError, ValueError):
    """A config value or key is wrong; the message names the field (and file, when known)."""


class DataError(MMTransferError, ValueError):
    """A manifest or sample is unusable; the message starts with ``manifest:line:`` or the file."""


class NoSamplesError(DataError):
    """Every sample of a data file was skipped (or it held none): nothing to train on or to evaluate."""


class InputError(MMTransferError, ValueError):
    """An input given to the API or CLI (a conversation, a media file) cannot be used."""


class WeightsNotFoundError(MMTransferError, FileNotFoundError):
    """No source could provide the weights; the message lists every place tried and how to get them."""


class MissingDependencyError(MMTransferError, ImportError):
    """An optional package the run needs is not installed; the message gives the pip command."""


class MissingFileError(MMTransferError, FileNotFoundError):
    """A file the user named (a manifest, an image, a clip, a recipe) does not exist or cannot be opened."""


class UnknownNameError(ConfigError, KeyError):
    """A name (encoder, projector, task) that is not registered; the message lists the valid ones."""

    __str__ = Exception.__str__  # KeyError's would quote the message
