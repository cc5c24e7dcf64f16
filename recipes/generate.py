"""Run a saved model on inputs: ``python recipes/generate.py chat|caption|transcribe|answer|classify CHECKPOINT ...``."""

import sys

from mmtransfer.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
