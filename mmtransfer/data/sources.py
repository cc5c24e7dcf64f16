"""The data sources a recipe's dataset can name, and the media file extensions every reader and the server accept.

Kept free of heavy imports: a recipe is checked against these before torch loads.
"""

SOURCES = ("jsonl", "webdataset", "hf")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
AUDIO_EXTS = ("flac", "wav", "mp3", "ogg", "opus")  # what libsndfile reads
