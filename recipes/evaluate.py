"""Evaluate a saved model: ``python recipes/evaluate.py CHECKPOINT --task asr --data test.jsonl``."""

import sys

from mmtransfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
