"""Converters from the files a pip package ships to a standard Hugging Face / timm directory.

Each is a ``Converter``: ``convert(files, out)`` with ``files`` in the order the catalogue lists them
and ``out`` an empty directory that becomes the cache entry once the conversion succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Converter = Callable[[list[Path], Path], None]
