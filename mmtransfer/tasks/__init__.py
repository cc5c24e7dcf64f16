"""Tasks: captioning, vqa, asr, classification, chat. ``get_task(name)`` returns one; ``TASKS.names()`` lists them."""

from mmtransfer.tasks import asr, captioning, chat, classification, vqa  # noqa: F401  (registers the tasks)
from mmtransfer.tasks.base import TASKS, Sample, Task, get_task, register_task

__all__ = ["TASKS", "Sample", "Task", "get_task", "register_task"]
