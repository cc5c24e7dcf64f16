"""An OpenAI-compatible HTTP server for a saved model (``mmtransfer serve CHECKPOINT``), with dynamic
batching, token streaming and a chat page: ``app`` (routes, limits), ``batcher`` (batching, streaming),
``protocol`` (OpenAI messages -> conversations). Needs the ``serve`` extra (FastAPI, uvicorn)."""

from mmtransfer.serve.app import ServeSettings, background, create_app, run

__all__ = ["ServeSettings", "background", "create_app", "run"]
