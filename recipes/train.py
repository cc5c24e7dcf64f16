"""Train from a recipe: ``python recipes/train.py asr-tiny [key=value ...] [--resume]``.

Multi-GPU: ``torchrun --nproc_per_node 8 recipes/train.py CONFIG`` (or ``accelerate launch``).
"""

import sys

from mmtransfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
