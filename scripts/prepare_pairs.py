"""Collect the similar pairs of labelled pair files into one JSONL training file.

    python scripts/prepare_pairs.py OUTPUT.jsonl FILE [FILE ...] [--min-score 4]

Each FILE's layout is detected (see `simbert.readers.detect_pair_format`); a pair is kept
when its label is 1 (binary sets) or at least --min-score (graded sets such as STS-B).
OUTPUT is written whole or not at all (its directory created).
"""

import argparse
import json

import numpy as np

from simbert.arguments import existing_path
from simbert.atomic_files import write_atomically
from simbert.evaluation import binary_labels, read_pair_file


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("files", nargs="+", type=existing_path("pair file"))
    parser.add_argument("--min-score", type=float, default=4.0, help="graded sets: the lowest similar score")
    args = parser.parse_args()
    kept = 0

    def write(writer):
        nonlocal kept
        for path in args.files:
            pairs = read_pair_file(path)
            labels = np.asarray(pairs.labels)
            graded = not set(np.unique(labels)) <= {0.0, 1.0}
            similar = binary_labels(labels, args.min_score if graded else None)
            for a, b, keep in zip(pairs.first, pairs.second, similar):
                if keep:
                    writer.write(json.dumps({"text_a": a, "text_b": b}, ensure_ascii=False) + "\n")
            kept += int(similar.sum())
            print(f"{path}: {int(similar.sum())} similar of {len(labels)} pairs, {len(pairs.skipped)} rows skipped")

    write_atomically(args.output, write)
    print(f"wrote {kept} pairs to {args.output}")


if __name__ == "__main__":
    main()
