"""A sharded stream of raw records (``Source``: WebDataset shards, Hugging Face datasets) and reading one: records
to checked samples or ``Skip``\\ s, shard damage included. ``mmtransfer.data.streaming`` makes resumable DataLoaders
of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from mmtransfer.data.records import Skip, report
from mmtransfer.errors import DataError
from mmtransfer.registry import Registry


class Source:
    """A sharded stream of raw records. Subclasses set ``where`` (for messages) and implement the three
    methods; ``parse`` raises ValueError for an unusable record (it becomes a ``Skip``)."""

    where: str = "<source>"

    def shards(self) -> list[str]:
        raise NotImplementedError

    def records(self, shard: int) -> Iterator[tuple[str, Any]]:
        """(key, raw record) for each record of shard ``shard``; an unreadable shard raises (OSError,
        ValueError, tarfile.ReadError...) after the records before the damage."""
        raise NotImplementedError

    def parse(self, raw: Any, shard: str, key: str) -> dict[str, Any]:
        raise NotImplementedError


SOURCE_TYPES: Registry[Source] = Registry("source")
"""The streaming readers by recipe name (``source:``), each ``open(spec, task, columns, split, where) -> Source``;
``mmtransfer.data.streaming.open_source`` builds them. (``jsonl`` files are read whole: ``read_manifest``.)"""


def shard_records(source: Source, shard: int, name: str) -> Iterator[tuple[str, Any] | Skip]:
    """``source.records(shard)``; damage to the shard (a truncated tar, a corrupt file) ends it with a ``Skip``
    named ``name:<rest of shard>``. A ``DataError`` (a configuration problem) is raised."""
    try:
        yield from source.records(shard)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 (any damage to a shard: name it, skip the rest of it)
        yield Skip(name, "<rest of shard>", f"cannot read the shard past here: {type(err).__name__}: {err}")


def parse_record(source: Source, to_sample: Callable[[dict[str, Any]], dict[str, Any]], shard: str, key: str,
                 raw: Any) -> dict[str, Any] | Skip:
    """A raw record -> its checked sample with ``source`` = (shard, key), or the ``Skip`` saying why not."""
    try:
        sample = to_sample(source.parse(raw, shard, key))
    except ValueError as err:
        return Skip(shard, key, str(err))
    sample["source"] = (shard, key)
    return sample


def read_samples(source: Source, to_sample: Callable[[dict[str, Any]], dict[str, Any]], limit: int | None,
                 on_error: str = "skip") -> tuple[list[dict[str, Any]], list[Skip]]:
    """The first ``limit`` good samples of every shard in order (for evaluation splits), and the skips."""
    samples: list[dict[str, Any]] = []
    skipped: list[Skip] = []
    for i, shard in enumerate(source.shards()):
        for record in shard_records(source, i, shard):
            sample = record if isinstance(record, Skip) else parse_record(source, to_sample, shard, *record)
            if isinstance(sample, Skip):
                report(sample, on_error, skipped)
                continue
            samples.append(sample)
            if limit and len(samples) >= limit:
                return samples, skipped
    return samples, skipped


def map_media_parts(messages: Any, convert: Callable[[str, Any], Any]) -> Any:
    """A conversation from a source whose media parts (``{"type": "image", "image": ref}``) hold a reference
    into the record -> the same with ``part[kind] = convert(kind, ref)``. Null-valued keys are dropped (Arrow
    structs fill absent keys with null). Anything malformed passes through: ``_messages`` says what is wrong."""
    if not isinstance(messages, list):
        return messages
    out = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            out.append(message)
            continue
        content = []
        for part in message["content"]:
            if isinstance(part, dict):
                part = {k: v for k, v in part.items() if v is not None}
                kind = part.get("type")
                if kind not in (None, "text") and part.get(kind) is not None:
                    part[kind] = convert(kind, part[kind])
            content.append(part)
        out.append({**message, "content": content})
    return out
