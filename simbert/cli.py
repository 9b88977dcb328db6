"""The `simbert` command. Heavy modules (TensorFlow, Keras, the model code) are
imported inside the commands, so `--help` and argument errors answer at once.

    simbert train --config FILE [--steps N] [--output-dir DIR] [--resume] [--seed S]
    simbert generate MODEL_DIR "text" [-n 100] [-k 20]
    simbert encode MODEL_DIR --input texts.txt --output vecs.npy
    simbert index MODEL_DIR --input corpus.txt --output INDEX_DIR
    simbert search INDEX_DIR MODEL_DIR "query" [--topn 10]
    simbert eval MODEL_DIR FILE... [--threshold 0.9] [--output JSON] [--plot DIR]
                 [--whiten CORPUS --dim 256] [--baseline jaccard]
    simbert convert MODEL_DIR --to bert4keras|safetensors

Commands that load a model keep compiled programs in `--compile-cache DIR` (default
~/.cache/simbert/xla; `--no-compile-cache` turns it off), so the next process starts faster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

# TensorFlow's C++ start-up log level, unless the user set one: warnings and errors only.
TF_LOG_LEVEL = "1"


def _cache(args) -> str | None:
    return None if args.no_compile_cache else args.compile_cache


def _convert(args) -> int:
    from simbert.directories import convert_checkpoint, resolve_model_directory

    print(f"wrote {convert_checkpoint(resolve_model_directory(args.model_dir), args.to)}")
    return 0


def _train(args) -> int:
    import dataclasses

    from simbert.config import TrainConfig
    from simbert.trainer import Trainer

    config = TrainConfig.from_yaml(args.config)
    if args.steps is not None:
        config.training.steps = args.steps
    if args.output_dir is not None:
        config.output.dir = args.output_dir
    if args.seed is not None:
        config.training.seed = args.seed
    if args.no_compile_cache:
        config.training.compilation_cache = None
    elif args.compile_cache is not None:
        config.training.compilation_cache = args.compile_cache
    trainer = Trainer(config)
    # Ctrl-C or SIGTERM: save a checkpoint after the current step and stop.
    previous = {sig: signal.signal(sig, lambda signum, frame: trainer.request_stop())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = trainer.fit(resume=args.resume)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(json.dumps(dataclasses.asdict(result), ensure_ascii=False))
    return 1 if result.nan_step else 0


def _generate(args) -> int:
    from simbert.api import SimBERT

    model = SimBERT.from_pretrained(args.model_dir, max_tokens=args.max_tokens, compilation_cache=_cache(args))
    for text, score in model.gen_synonyms(args.text, n=args.n, k=args.k, with_scores=True,
                                          topk=args.topk, seed=args.seed):
        print(f"{score:.4f}\t{text}")
    return 0


def _encode(args) -> int:
    import numpy as np

    from simbert.api import SimBERT
    from simbert.retrieval import read_lines

    model = SimBERT.from_pretrained(args.model_dir, max_tokens=args.max_tokens, compilation_cache=_cache(args))
    vectors = model.encode(list(read_lines(args.input)), batch_size=args.batch_size, progress=True)
    np.save(args.output, vectors)
    print(f"wrote {vectors.shape[0]} vectors of dimension {vectors.shape[1]} to {args.output}")
    return 0


def _index(args) -> int:
    from simbert.api import SimBERT
    from simbert.retrieval import read_lines

    model = SimBERT.from_pretrained(args.model_dir, max_tokens=args.max_tokens, compilation_cache=_cache(args))
    index = model.build_index(list(read_lines(args.input)), batch_size=args.batch_size, progress=True,
                              dtype=args.dtype, backend=args.backend)
    index.save(args.output)
    print(f"indexed {len(index)} texts into {args.output}")
    return 0


def _search(args) -> int:
    from simbert.api import SimBERT

    model = SimBERT.from_pretrained(args.model_dir, max_tokens=args.max_tokens, compilation_cache=_cache(args))
    model.load_index(args.index_dir)
    for text, score in model.most_similar(args.query, topn=args.topn):
        print(f"{score:.4f}\t{text}")
    return 0


def _eval(args) -> int:
    import os

    import numpy as np

    from simbert.api import SimBERT
    from simbert.evaluation import evaluate_files, format_table, jaccard_similarity, plot_histograms
    from simbert.retrieval import read_lines

    model = SimBERT.from_pretrained(args.model_dir, max_tokens=args.max_tokens, compilation_cache=_cache(args))

    def cosine(first, second):
        return np.sum(model.encode(first, args.batch_size) * model.encode(second, args.batch_size), axis=1)

    def jaccard(first, second):
        return np.array([jaccard_similarity(a, b) for a, b in zip(first, second)])

    runs = [("cosine", cosine)]
    if args.whiten:
        runs.append(("whitened", cosine))  # the same scorer once model.whitening is set
    if args.baseline == "jaccard":
        runs.append(("jaccard", jaccard))
    report = {}
    for name, scorer in runs:
        if name == "whitened":
            model.fit_whitening(list(read_lines(args.whiten)), dim=args.dim, batch_size=args.batch_size)
        results = evaluate_files(args.files, scorer, threshold=args.threshold, format=args.format)
        print(f"\n[{name}]\n{format_table(results)}")
        if args.plot:
            os.makedirs(args.plot, exist_ok=True)
            for path, metrics in results.items():
                stem = os.path.splitext(os.path.basename(path))[0]
                plot_histograms(metrics, os.path.join(args.plot, f"{stem}.{name}.png"), f"{stem} ({name})")
        report[name] = {path: {k: v for k, v in m.items() if k not in ("scores", "labels")}
                        for path, m in results.items()}
    if args.output:
        with open(args.output, "w", encoding="utf-8") as writer:
            json.dump(report, writer, ensure_ascii=False, indent=2)
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
    add_cache_arguments(train, default=None)

    def model_command(name, help_text, run):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--maxlen", dest="max_tokens", metavar="TOKENS", type=int, default=64,
                             help="tokens kept per text, and per generated text (default 64)")
        command.set_defaults(run=run)
        add_cache_arguments(command, default="default")
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

    evaluate = model_command("eval", "Spearman/Pearson/accuracy/F1 on labelled pair files", _eval)
    evaluate.add_argument("model_dir")
    evaluate.add_argument("files", nargs="+", help="pair files (TSV, ATEC CSV, STS, CSV with header, JSONL)")
    evaluate.add_argument("--format", choices=["tsv", "atec", "sts", "csv", "jsonl"], help="default: detected")
    evaluate.add_argument("--threshold", type=float, default=0.9, help="fixed cosine threshold (default 0.9)")
    evaluate.add_argument("--output", help="write all metrics as JSON here")
    evaluate.add_argument("--plot", help="directory for score histograms, one PNG per file")
    evaluate.add_argument("--whiten", help="corpus (one text a line) to fit BERT-whitening on; "
                                           "reports with and without")
    evaluate.add_argument("--dim", type=int, help="dimensions kept by whitening (default: all)")
    evaluate.add_argument("--baseline", choices=["jaccard"], help="also report a char-overlap baseline")
    evaluate.add_argument("--batch-size", type=int, default=64)

    convert = commands.add_parser("convert", help="add the other weight format to a model directory")
    convert.add_argument("model_dir", help="model directory (or a training output: its latest checkpoint)")
    convert.add_argument("--to", required=True, choices=["bert4keras", "safetensors"],
                         help="bert4keras: bert_model.ckpt.* (needs TensorFlow); safetensors: bert_model.safetensors")
    convert.set_defaults(run=_convert)
    return parser


def add_cache_arguments(command: argparse.ArgumentParser, default: str | None) -> None:
    command.add_argument("--compile-cache", metavar="DIR", default=default,
                         help="keep compiled programs here for later runs (default ~/.cache/simbert/xla"
                              + (", or the recipe's training.compilation_cache)" if default is None else ")"))
    command.add_argument("--no-compile-cache", action="store_true", help="do not keep compiled programs")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
