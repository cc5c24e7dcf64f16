"""Data: JSONL manifests -> task datasets -> batches the model takes, with a feature cache and task mixing.

Typical use::

    manifest = read_manifest("train.jsonl", "asr", max_audio_seconds=30)
    dataset = TaskDataset(manifest, "asr", sample_rate=model.encoders["audio"].sample_rate)
    loader = make_loader(dataset, Collator(model, "asr"), batch_size=8, seed=0, bucket=True)
    for task, batch in Mixture({"asr": loader}, {"asr": 1.0}, seed=0):
        loss = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).loss
"""

from mmtransfer.data.cache import FeatureCache
from mmtransfer.data.collate import MODEL_INPUTS, Collator
from mmtransfer.data.conversations import read_conversations
from mmtransfer.data.datasets import TaskDataset
from mmtransfer.data.loader import Mixture, make_loader
from mmtransfer.data.manifest import DataError, Manifest, Skip, read_manifest
from mmtransfer.data.sampler import BucketBatchSampler

__all__ = [
    "MODEL_INPUTS",
    "BucketBatchSampler",
    "Collator",
    "DataError",
    "FeatureCache",
    "Manifest",
    "Mixture",
    "Skip",
    "TaskDataset",
    "make_loader",
    "read_conversations",
    "read_manifest",
]
