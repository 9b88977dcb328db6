"""Train a SimBERT model from a YAML recipe: python scripts/train.py --config configs/tiny.yaml"""

import sys

from simbert.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
