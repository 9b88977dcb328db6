"""The `simbert` command.

    simbert train --config FILE [--steps N] [--output-dir DIR] [--resume] [--seed S]
    simbert generate MODEL_DIR "text" [-n 100] [-k 20]
    simbert encode MODEL_DIR --input texts.txt --output vecs.npy
    simbert index MODEL_DIR --input corpus.txt --output INDEX_DIR
    simbert search INDEX_DIR MODEL_DIR "query" [--topn 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _train(args) -> int:
    from simbert.config import TrainConfig
    from simbert.trainer import Trainer

    config = TrainConfig.from_yaml(args.config)
    if args.steps is not None:
        config.training.steps = args.steps
    if args.output_dir is not None:
        config.output.dir = args.output_dir
    if args.seed is not None:
        config.training.seed = args.seed
    result = Trainer(config).fit(resume=args.resume)
    print(json.dumps(result, ensure_ascii=False))
    return 1 if result.get("nan_step") else 0


def _generate(args) -> int:
    from simbert.api import SimBERT

    model = SimBERT.from_pretrained(args.model_dir, maxlen=args.maxlen)
    for text, score in model.gen_synonyms(args.text, n=args.n, k=args.k, with_scores=True,
                                          topk=args.topk, seed=args.seed):
        print(f"{score:.4f}\t{text}")
    return 0


def _encode(args) -> int:
    import numpy as np

    from simbert.api import SimBERT
    from simbert.retrieval import read_lines

    model = SimBERT.from_pretrained(args.model_dir, maxlen=args.maxlen)
    vectors = model.encode(list(read_lines(args.input)), batch_size=args.batch_size, progress=True)
    np.save(args.output, vectors)
    print(f"wrote {vectors.shape[0]} vectors of dimension {vectors.shape[1]} to {args.output}")
    return 0


def _index(args) -> int:
    from simbert.api import SimBERT
    from simbert.retrieval import read_lines

    model = SimBERT.from_pretrained(args.model_dir, maxlen=args.maxlen)
    index = model.build_index(list(read_lines(args.input)), batch_size=args.batch_size, progress=True,
                              dtype=args.dtype, backend=args.backend)
    index.save(args.output)
    print(f"indexed {len(index)} texts into {args.output}")
    return 0


def _search(args) -> int:
    from simbert.api import SimBERT

    model = SimBERT.from_pretrained(args.model_dir, maxlen=args.maxlen)
    model.load_index(args.index_dir)
    for text, score in model.most_similar(args.query, topn=args.topn):
        print(f"{score:.4f}\t{text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simbert", description="Train and use SimBERT models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a YAML recipe (see configs/)")
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/tiny.yaml")
    train.add_argument("--steps", type=int, help="override training.steps")
    train.add_argument("--output-dir", help="override output.dir")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output.dir")
    train.add_argument("--seed", type=int, help="override training.seed")
    train.set_defaults(run=_train)

    def model_command(name, help_text, run):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--maxlen", type=int, default=64, help="tokens kept per text (default 64)")
        command.set_defaults(run=run)
        return command

    generate = model_command("generate", "paraphrases of a text, ranked by similarity", _generate)
    generate.add_argument("model_dir", help="model directory (released layout, trainer output or HF)")
    generate.add_argument("text")
    generate.add_argument("-n", type=int, default=100, help="samples to draw (default 100)")
    generate.add_argument("-k", type=int, default=20, help="paraphrases to print (default 20)")
    generate.add_argument("--topk", type=int, default=5, help="sample from the top-k tokens (default 5)")
    generate.add_argument("--seed", type=int, help="random seed")

    encode = model_command("encode", "sentence vectors of a text file (one text a line) to .npy", _encode)
    encode.add_argument("model_dir")
    encode.add_argument("--input", required=True, help="UTF-8 text file, one text a line")
    encode.add_argument("--output", required=True, help=".npy file to write")
    encode.add_argument("--batch-size", type=int, default=64)

    index = model_command("index", "build a similarity index over a corpus (one text a line)", _index)
    index.add_argument("model_dir")
    index.add_argument("--input", required=True, help="UTF-8 text file, one text a line")
    index.add_argument("--output", required=True, help="directory to write the index to")
    index.add_argument("--batch-size", type=int, default=64)
    index.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    index.add_argument("--backend", choices=["exact", "faiss"], default="exact")

    search = model_command("search", "the indexed texts most similar to a query", _search)
    search.add_argument("index_dir")
    search.add_argument("model_dir")
    search.add_argument("query")
    search.add_argument("--topn", type=int, default=10)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
