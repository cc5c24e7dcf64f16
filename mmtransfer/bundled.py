"""Files that ship inside the package: the recipes (``mmtransfer train quickstart``) and the small assets
(a tiny tokenizer, a sample image and clip) that the demo and the tiny recipes use.

A bundled recipe resolves its relative paths (data, outputs, feature caches) against the directory you
run it from, so ``mmtransfer train quickstart`` works the same from a checkout and from a wheel; a recipe
file you write resolves them against its own directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from mmtransfer.errors import MissingFileError

PACKAGE = Path(__file__).resolve().parent
RECIPES = PACKAGE / "recipes"
ASSETS = PACKAGE / "assets"
TINY_TOKENIZER = "mmtransfer/tiny-tokenizer"  # a 434-token byte-level BPE for tiny models (make_tokenizer.py)
BUNDLED: dict[str, Path] = {TINY_TOKENIZER: ASSETS / "tiny-tokenizer"}  # name -> directory, for the weights walk


def recipe_names() -> list[str]:
    """The bundled recipes' names (file names without ``.yaml``)."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """An existing recipe file, else the bundled recipe of that name (``quickstart`` or ``quickstart.yaml``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    bundled = RECIPES / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    raise MissingFileError(f"{name_or_path}: no such recipe file, and no bundled recipe of that name; "
                           f"bundled: {', '.join(recipe_names())}")


def is_bundled(path: Path) -> bool:
    """Whether ``path`` is one of the package's recipes (its relative paths then start at the working dir)."""
    return path.resolve().parent == RECIPES


def recipe_summary(path: Path) -> str:
    """The first sentence of a recipe's opening comment (what it does), or ''."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    end = re.search(r"[.!?](\s|$)", text)
    return text[: end.start() + 1] if end else text
