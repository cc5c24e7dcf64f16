"""The data sources a recipe's dataset can name, and the media file extensions every reader and the server accept.

Kept free of heavy imports: a recipe is checked against these before torch loads.
"""

SOURCES = ("jsonl", "webdataset", "hf")  # the built-in ones
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
AUDIO_EXTS = ("flac", "wav", "mp3", "ogg", "opus")  # what libsndfile reads


def source_names() -> tuple[str, ...]:
    """Every source a recipe may name: the built-in ones, then any other ``Source`` registered in
    ``mmtransfer.data.source.SOURCE_TYPES`` (by code imported before the recipe is checked)."""
    # here, not at the top: those modules import this one (for the extensions); importing them registers their
    # sources and stays light (no torch, no datasets)
    from mmtransfer.data import hf_source, webdataset_source  # noqa: F401
    from mmtransfer.data.source import SOURCE_TYPES

    return SOURCES + tuple(name for name in SOURCE_TYPES.names() if name not in SOURCES)
