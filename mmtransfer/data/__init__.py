"""Data: JSONL manifests -> task datasets -> batches the model takes, with a feature cache and task mixing.

Typical use::

    manifest = read_manifest("train.jsonl", "asr", max_audio_seconds=30)
    dataset = TaskDataset(manifest, "asr", sample_rate=model.encoders["audio"].sample_rate)
    loader = make_loader(dataset, Collator(model, "asr"), batch_size=8, seed=0, bucket=True)
    for task, batch in Mixture({"asr": loader}, {"asr": 1.0}, seed=0):
        loss = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).loss
"""

from __future__ import annotations

from mmtransfer.lazy import lazy_exports

_WHERE = {  # name -> the submodule that defines it, imported on first use (torch loads only when needed)
    "FeatureCache": "cache", "MODEL_INPUTS": "collate", "Collator": "collate", "read_conversations": "conversations",
    "TaskDataset": "datasets", "Mixture": "loader", "make_loader": "loader", "DataError": "records",
    "Manifest": "records", "Skip": "records", "read_manifest": "manifest", "BucketBatchSampler": "sampler",
}
__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
