"""The `simbert` command. Heavy modules (TensorFlow, Keras, the model code) are
imported inside the commands, so `--help` and argument errors answer at once.

    simbert train --config FILE [--steps N] [--output-dir DIR] [--resume [--resume-anyway] | --overwrite] [--seed S]
                  [--coordinator HOST:PORT --num-processes N --process-id I]
    simbert generate MODEL_DIR "text" [-n 100] [-k 20] [--topk 5] [--topp P] [--temperature T]
    simbert gibbs MODEL_DIR ["text" | --length L] [-n 1] [--steps 200] [--burn-in 50] [--topk K] [--temperature T]
                  [--positions 0,2,5] [--seed S]
    simbert encode MODEL_DIR --input texts.txt --output vecs.npy [--skip-blank] [--distribution auto]
    simbert index MODEL_DIR --input corpus.txt --output INDEX_DIR [--append | --shard I/N] [--distribution auto]
    simbert index --output INDEX_DIR --merge PART_DIR...
    simbert search INDEX_DIR MODEL_DIR "query" [--topn 10] [--strict] [--rerank CLASSIFIER_DIR [--rerank-top 50]]
    simbert mine MODEL_DIR --input FILE --corpus CORPUS --output mined.jsonl [--per-example 1] [--skip-top 3]
                 [--max-score 0.95]
    simbert eval MODEL_DIR FILE... [--threshold 0.9] [--output JSON] [--plot DIR]
                 [--whiten CORPUS --dim 256] [--baseline jaccard]
    simbert convert MODEL_DIR --to bert4keras|safetensors
    simbert serve MODEL_DIR [--index INDEX_DIR] [--host 127.0.0.1] [--port 8000]
    simbert export MODEL_DIR OUT --format saved_model|onnx|hf|bert4keras|sentence_transformers [--maxlen TOKENS]
    simbert --version

Commands that load a model keep compiled programs in `--compile-cache DIR` (default
~/.cache/simbert/xla; `--no-compile-cache` turns it off), so the next process starts faster.

Errors print one line, `simbert: error: ...`, and exit 2 for a bad argument, 1 for a
failure (`--debug` shows the traceback); an interrupted `train` saves and exits 130
(SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import sys
import tempfile
import threading

from simbert import __version__
from simbert.arguments import (
    PRECISIONS,
    argument_type,
    check_integer,
    check_positive,
    check_probability,
    existing_path,
    output_path,
)

# TensorFlow's C++ log level, unless the user set one: fatal errors only. Its errors on
# these paths (no CUDA driver on a CPU machine, oneDNN fallbacks, XLA cache and AOT notes)
# are harmless, and a real failure reaches the user as a Python exception.
TF_LOG_LEVEL = "3"
# What TensorFlow's libraries print as they load, before they read that level: left out.
BACKEND_START_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] "
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$")


@contextlib.contextmanager
def stderr_without(noise: re.Pattern):
    """Run the block with file descriptor 2 (C libraries' stderr too) captured, then
    write what it printed back to stderr less the lines `noise` matches."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not noise.match(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def start_backend() -> None:
    """Import Keras, which loads its backend, without TensorFlow's start-up lines. Every
    command that needs Keras calls it first."""
    if "keras" not in sys.modules:
        with stderr_without(BACKEND_START_NOISE):
            import keras  # noqa: F401


def _cache(args) -> str | None:
    return None if args.no_compile_cache else args.compile_cache


def _load_model(args):
    """The `SimBERT` of a model command's arguments (on one device unless the command
    has `--distribution`)."""
    start_backend()
    from simbert.api import SimBERT

    return SimBERT.from_pretrained(args.model_dir, max_tokens=args.max_tokens, compilation_cache=_cache(args),
                                   precision=args.precision, distribution=getattr(args, "distribution", "none"))


def _convert(args) -> int:
    start_backend()
    from simbert.checkpoints import keep_tensorflow_off_the_gpus
    from simbert.directories import convert_checkpoint, resolve_model_directory

    if args.to == "bert4keras":
        keep_tensorflow_off_the_gpus()
    print(f"wrote {convert_checkpoint(resolve_model_directory(args.model_dir), args.to)}")
    return 0


def _train(args) -> int:
    # Handlers first, before TensorFlow or JAX start: Ctrl-C or SIGTERM asks the trainer to
    # finish the steps started, save and stop (a second signal acts at once).
    stop, received = threading.Event(), []

    def on_signal(signum, frame):
        received.append(signum)
        stop.set()
        signal.signal(signum, previous[signum])

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    group = None
    try:
        import dataclasses

        from simbert.config import TrainConfig

        config = TrainConfig.from_yaml(args.config)  # checked before Keras (and its backend) loads
        start_backend()
        from simbert.distribution import ProcessGroup

        group = ProcessGroup.from_arguments(args.coordinator, args.num_processes, args.process_id)
        if group is not None:  # before the backend starts
            group.join(heartbeat_timeout_s=args.heartbeat_timeout)

        from simbert.trainer import Trainer

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
        trainer = Trainer(config, resume=args.resume, overwrite=args.overwrite, resume_anyway=args.resume_anyway,
                          stop_event=stop)
        result = trainer.fit()
    except Exception as error:
        if group is None or args.debug:
            raise
        # One line (below the progress bar), then out at once: JAX's exit handler would wait
        # for the lost process and abort.
        print(f"\nsimbert: error: process {group.process_id} of {group.num_processes}: {one_line(error)}. A process "
              f"of this run failed or lost contact, so every process stops; start them all again with --resume",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(json.dumps(dataclasses.asdict(result), ensure_ascii=False))
    if result.stopped == "requested" and result.checkpoint is not None:
        again = ["simbert", "train", "--config", args.config]
        for flag, value in (("--output-dir", args.output_dir), ("--steps", args.steps), ("--seed", args.seed),
                            ("--compile-cache", args.compile_cache)):
            if value is not None:
                again += [flag, str(value)]
        if args.no_compile_cache:
            again.append("--no-compile-cache")
        print(f"simbert: stopped at step {result.step} of {config.training.steps}; saved {result.checkpoint}; "
              f"continue with: {shlex.join([*again, '--resume'])}", file=sys.stderr, flush=True)
    if received:
        return 128 + received[0]  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    return 1 if result.nan_step else 0


def _generate(args) -> int:
    model = _load_model(args)
    vocab_size = model.backbone.config.vocab_size
    if args.topk > vocab_size:  # known once the model is read; still a usage error (exit 2)
        args.parser.error(f"argument --topk: --topk should be an integer of at least 1 and at most {vocab_size} "
                          f"(the model's vocabulary), got {args.topk}")
    for text, score in model.gen_synonyms(args.text, n=args.n, k=args.k, with_scores=True, topk=args.topk,
                                          topp=args.topp, temperature=args.temperature, seed=args.seed,
                                          progress=True):
        print(f"{score:.4f}\t{text}")
    return 0


def _gibbs(args) -> int:
    if (args.text is None) == (args.length is None):
        args.parser.error("simbert gibbs takes a text to edit or --length L to sample from [MASK]s, one of the two")
    if args.burn_in >= args.steps:
        args.parser.error(f"argument --burn-in: --burn-in should be below --steps ({args.steps}), got {args.burn_in}")
    model = _load_model(args)
    allowed = model.gibbs_sampler.allowed
    if args.topk is not None and args.topk > allowed:  # known once the model is read; still a usage error
        args.parser.error(f"argument --topk: --topk should be an integer of at least 1 and at most {allowed} (the "
                          f"model's tokens but the special ones), got {args.topk}")
    chains = model.gibbs_sample(args.text, length=args.length, n=args.n, steps=args.steps, burn_in=args.burn_in,
                                topk=args.topk, temperature=args.temperature, positions=args.positions,
                                seed=args.seed)
    for chain, texts in enumerate(chains):
        for step, text in enumerate(texts, args.burn_in + 1):
            print(f"{chain}\t{step}\t{text}")
    return 0


def positions_argument(text: str) -> list[int]:
    """`--positions 0,2,5`: the tokens that may change, counted from 0 after [CLS]."""
    try:
        positions = [int(part) for part in text.split(",")]
    except ValueError:
        positions = []
    if not positions or min(positions) < 0:
        raise argparse.ArgumentTypeError(f"--positions should be token positions from 0, separated by commas "
                                         f"(e.g. 0,2,5), got {text!r}")
    return positions


def _encode(args) -> int:
    import numpy as np

    from simbert.atomic_files import write_atomically
    from simbert.text_files import numbered_lines

    lines = [(number, line.strip()) for number, line in numbered_lines(args.input)]
    while lines and not lines[-1][1]:  # blank lines at the end shift no row
        lines.pop()
    blank = [number for number, text in lines if not text]
    if blank and not args.skip_blank:
        shown = ", ".join(map(str, blank[:10])) + (" ..." if len(blank) > 10 else "")
        raise ValueError(f"{args.input}: {len(blank)} blank line(s) (line {shown}); vector row i is input line i, "
                         f"so remove them, or pass --skip-blank to leave them out and write the line number of "
                         f"each row beside the vectors")
    kept = [(number, text) for number, text in lines if text]
    model = _load_model(args)
    vectors = model.encode([text for _, text in kept], batch_size=args.batch_size, progress=True)
    write_atomically(args.output, lambda writer: np.save(writer, vectors), binary=True)
    print(f"wrote {vectors.shape[0]} vectors of dimension {vectors.shape[1]} to {args.output}")
    if blank:
        numbers_path = line_numbers_path(args.output)
        write_atomically(numbers_path, lambda writer: writer.writelines(f"{number}\n" for number, _ in kept))
        print(f"skipped {len(blank)} blank line(s); the input line number of each row is in {numbers_path}")
    return 0


def line_numbers_path(vectors_path: str) -> str:
    """Where `encode --skip-blank` writes the input line number of each vector row."""
    stem = vectors_path[:-4] if vectors_path.endswith(".npy") else vectors_path
    return stem + ".lines.txt"


def _index(args) -> int:
    from simbert.index_parts import CorpusPart, merge_indexes
    from simbert.retrieval import IndexLock
    from simbert.text_files import read_texts

    check_index_arguments(args)
    if args.merge:
        index = merge_indexes(args.merge, args.output)
        print(f"merged {len(args.merge)} parts; {args.output} holds {len(index)} texts")
        return 0
    part = CorpusPart.of_file(args.input, *args.shard) if args.shard else None

    def texts():
        return part.texts(args.input) if part is not None else read_texts(args.input)

    IndexLock(args.output).check_free()  # another writer: refused now, not after a pass and a model load
    count = sum(1 for _ in texts())  # a first pass: the writer preallocates the vectors
    model = _load_model(args)
    # Only the settings given: a new index takes SimilarityIndex's defaults, an append the index's own.
    given = {"dtype": args.dtype, "backend": args.backend, "faiss_index": args.faiss_index}
    options = {key: value for key, value in given.items() if value is not None}
    index = model.write_index(texts(), count, args.output, batch_size=args.batch_size, append=args.append,
                              progress=True, part=part, **options)
    done = "appended" if args.append else "indexed"
    what = f" of {part.describe()} (part {part.part}/{part.parts})" if part is not None else ""
    print(f"{done} {count} texts{what}; {args.output} holds {len(index)}")
    return 0


def check_index_arguments(args) -> None:
    """`simbert index` builds (MODEL_DIR and --input, maybe --append or --shard) or merges
    (--merge, nothing of a build): a usage error (exit 2) otherwise."""
    if args.merge:
        given = [name for name, value in (("MODEL_DIR", args.model_dir), ("--input", args.input),
                                          ("--shard", args.shard), ("--append", args.append),
                                          ("--dtype", args.dtype), ("--backend", args.backend),
                                          ("--faiss-index", args.faiss_index)) if value]
        if given:
            args.parser.error(f"--merge joins index parts and takes no {', '.join(given)}")
    elif args.model_dir is None or args.input is None:
        args.parser.error("simbert index needs MODEL_DIR and --input (or --merge PART_DIR... to join parts)")
    elif args.shard and args.append:
        args.parser.error("--shard writes an index part whole; it cannot --append")


def shard_argument(text: str) -> tuple[int, int]:
    """`--shard I/N`: part I (from 0) of N."""
    import argparse

    try:
        part, parts = (int(number) for number in text.split("/"))
    except ValueError:
        part, parts = -1, 0
    if not 0 <= part < parts:
        raise argparse.ArgumentTypeError(f"--shard should be I/N with 0 <= I < N (part I of N, from 0), "
                                         f"got {text!r}")
    return part, parts


def _search(args) -> int:
    if args.rerank_top is not None and args.rerank is None:
        args.parser.error("--rerank-top goes with --rerank CLASSIFIER_DIR")
    classifier = None
    if args.rerank is not None:  # read before the index and the model: a wrong directory fails at once
        start_backend()
        from simbert.pair_classifier import PairClassifier

        classifier = PairClassifier.from_pretrained(args.rerank, max_tokens=args.max_tokens,
                                                    compilation_cache=_cache(args), precision=args.precision)
    model = _load_model(args)
    model.load_index(args.index_dir)
    model.index.check_model(model.fingerprint, model.name, strict=args.strict)
    if classifier is None:
        for text, score in model.most_similar(args.query, topn=args.topn):
            print(f"{score:.4f}\t{text}")
        return 0
    for text, score, cosine in model.most_similar(args.query, topn=args.topn, rerank=classifier,
                                                  rerank_top=args.rerank_top):
        print(f"{score:.4f}\t{cosine:.4f}\t{text}")
    return 0


def _mine(args) -> int:
    start_backend()
    from simbert.atomic_files import write_atomically
    from simbert.mining import MiningReport, corpus_index, detect_input_format, mine_negatives, read_records

    input_format = args.format or detect_input_format(args.input)
    if input_format == "groups" and args.pair_threshold is not None:
        raise ValueError(f"--pair-threshold reads a pair file's labels; {args.input} is a groups file")
    threshold = 1.0 if args.pair_threshold is None else args.pair_threshold

    def records():
        return read_records(args.input, input_format, threshold)

    count = sum(1 for _ in records())  # a first pass: a bad record fails now
    if not count:
        similar = f" (pairs labelled at least {threshold:g})" if input_format == "pairs" else ""
        raise ValueError(f"{args.input} holds no record of two or more distinct texts{similar}")
    model = _load_model(args)
    index = corpus_index(model, args.corpus, args.batch_size, progress=True)
    report = MiningReport()
    mined = mine_negatives(model, records(), index, per_example=args.per_example,
                           skip_top=args.skip_top, max_score=args.max_score, batch_size=args.batch_size,
                           report=report, progress=True, total=count)
    write_atomically(args.output, lambda writer: writer.writelines(
        json.dumps(record, ensure_ascii=False) + "\n" for record in mined))
    short = f"; {report.short} got fewer than {args.per_example}" if report.short else ""
    print(f"wrote {report.records} records with {report.negatives} mined negatives to {args.output}{short}")
    return 0


def _eval(args) -> int:
    import os

    import numpy as np

    start_backend()
    from simbert.atomic_files import write_atomically
    from simbert.evaluation import (
        classification_metrics,
        evaluate_files,
        format_table,
        jaccard_similarity,
        plot_histograms,
    )
    from simbert.pair_classifier import PairClassifier, is_pair_classifier
    from simbert.text_files import read_texts

    classifier = is_pair_classifier(args.model_dir)  # a cross-encoder: its head file beside the backbone
    if classifier and args.whiten:
        args.parser.error("--whiten whitens a SimBERT model's vectors; MODEL_DIR is a pair classifier")
    if classifier:
        model = PairClassifier.from_pretrained(args.model_dir, max_tokens=args.max_tokens,
                                               compilation_cache=_cache(args), precision=args.precision)
    else:
        model = _load_model(args)

    def cosine(first, second):
        return np.sum(model.encode(first, args.batch_size) * model.encode(second, args.batch_size), axis=1)

    def probabilities(first, second):
        return model.predict(list(zip(first, second)), args.batch_size)

    def jaccard(first, second):
        return np.array([jaccard_similarity(a, b) for a, b in zip(first, second)])

    runs = [("classifier", probabilities) if classifier else ("cosine", cosine)]
    if args.whiten:
        runs.append(("whitened", cosine))  # the same scorer once model.whitening is set
    if args.baseline == "jaccard":
        runs.append(("jaccard", jaccard))
    report = {}
    for name, scorer in runs:
        if name == "whitened":
            model.fit_whitening(list(read_texts(args.whiten)), dim=args.dim, batch_size=args.batch_size)
        # A classifier's accuracy and F1: of its predicted class, unless --threshold is given.
        measured = ({"measure": classification_metrics, "threshold": args.threshold} if name == "classifier"
                    else {"threshold": 0.9 if args.threshold is None else args.threshold})
        results = evaluate_files(args.files, scorer, format=args.format, **measured)
        print(f"\n[{name}]\n{format_table(results)}")
        if args.plot:
            os.makedirs(args.plot, exist_ok=True)
            for path, metrics in results.items():
                stem = os.path.splitext(os.path.basename(path))[0]
                plot_histograms(metrics, os.path.join(args.plot, f"{stem}.{name}.png"), f"{stem} ({name})")
        report[name] = {path: {k: v for k, v in m.items() if k not in ("scores", "labels")}
                        for path, m in results.items()}
    if args.output:
        write_atomically(args.output, lambda writer: json.dump(report, writer, ensure_ascii=False, indent=2,
                                                               allow_nan=False))
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: `simbert: error: ...`, exit code 2."""

    def error(self, message):
        self.exit(2, f"simbert: error: {message} (see {self.prog} --help)\n")


def _export(args) -> int:
    start_backend()
    from simbert.checkpoints import keep_tensorflow_off_the_gpus
    from simbert.export import export_model

    if args.format == "bert4keras":
        keep_tensorflow_off_the_gpus()
    print(f"wrote {export_model(args.model_dir, args.out, args.format, args.max_positions, args.max_tokens)}")
    return 0


def _serve(args) -> int:
    start_backend()
    from simbert.server import ServerLimits, create_app, serve

    limits = ServerLimits(max_texts=args.max_texts, max_chars=args.max_chars, max_n=args.max_n, max_k=args.max_k,
                          request_timeout_s=args.timeout)
    app = create_app(_load_model(args), args.index, limits, batch_wait_ms=args.batch_wait_ms, max_batch=args.max_batch)
    serve(app, args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = Parser(prog="simbert", description="Train and use SimBERT models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = commands.add_parser("train", help="train from a YAML recipe (see configs/)", parents=[common])
    train.add_argument("--config", required=True, type=existing_path("recipe"),
                       help="YAML recipe, e.g. configs/tiny.yaml")
    add_count(train, "--steps", help="override training.steps")
    train.add_argument("--output-dir", type=output_path("output directory", directory=True),
                       help="override output.dir")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the newest readable checkpoint in output.dir")
    start.add_argument("--overwrite", action="store_true",
                       help="delete the checkpoints and metrics already in output.dir and train afresh")
    train.add_argument("--resume-anyway", action="store_true",
                       help="with --resume: continue although the recipe changed batch size, maxlen, seed or "
                            "the model (warns)")
    train.add_argument("--seed", type=int, help="override training.seed")
    hosts = train.add_argument_group("several processes (hosts), JAX only; or the KERAS_DISTRIBUTION_* variables")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="where process 0 listens for the others")
    add_count(hosts, "--num-processes", help="processes in the run, one per host")
    add_count(hosts, "--process-id", minimum=0,
              help="this process's index, 0 to N-1 (process 0 writes checkpoints and metrics)")
    add_count(hosts, "--heartbeat-timeout", default=60,
              help="seconds after which a silent process ends the run with an error (default 60)")
    train.set_defaults(run=_train)
    add_cache_arguments(train, default=None)

    def model_command(name, help_text, run):
        command = commands.add_parser(name, help=help_text, parents=[common])
        command.add_argument("--maxlen", dest="max_tokens", metavar="TOKENS", default=64,
                             type=argument_type(check_integer, "--maxlen", minimum=3),
                             help="tokens kept per text, and per generated text (default 64)")
        command.add_argument("--precision", choices=PRECISIONS,
                             help="compute dtype policy; mixed_bfloat16 computes in bfloat16 on a GPU "
                                  "(default: float32)")
        command.set_defaults(run=run, parser=command)
        add_cache_arguments(command, default="default")
        return command

    generate = model_command("generate", "paraphrases of a text, ranked by similarity", _generate)
    add_model_directory(generate, help="model directory (released layout, trainer output or HF)")
    generate.add_argument("text")
    add_count(generate, "-n", default=100, help="samples to draw (default 100)")
    add_count(generate, "-k", default=20, help="paraphrases to print (default 20)")
    add_count(generate, "--topk", default=5,
              help="sample from the top-k tokens (default 5; at most the vocabulary size)")
    generate.add_argument("--topp", type=argument_type(check_probability, "--topp", float),
                          help="then from the smallest set of tokens whose probability reaches P, in (0, 1]")
    generate.add_argument("--temperature", type=argument_type(check_positive, "--temperature", float), default=1.0,
                          help="divide the logits by T > 0 (default 1)")
    generate.add_argument("--seed", type=int, help="random seed")

    gibbs = model_command("gibbs", "sentences drawn by Gibbs sampling with the MLM head, from a text or [MASK]s",
                          _gibbs)
    add_model_directory(gibbs)
    gibbs.add_argument("text", nargs="?", help="the text to edit (or --length)")
    add_count(gibbs, "--length", help="sample a sentence of L tokens from [MASK]s instead of editing a text")
    add_count(gibbs, "-n", default=1, help="chains, run side by side (default 1)")
    add_count(gibbs, "--steps", default=200, help="steps per chain, one token resampled at each (default 200)")
    add_count(gibbs, "--burn-in", default=50, minimum=0,
              help="first steps whose samples are not printed (default 50)")
    add_count(gibbs, "--topk", help="sample from the top-k tokens (default: all but the special ones)")
    gibbs.add_argument("--temperature", type=argument_type(check_positive, "--temperature", float), default=1.0,
                       help="divide the logits by T > 0 (default 1)")
    gibbs.add_argument("--positions", type=positions_argument,
                       help="the tokens that may change, counted from 0, separated by commas (default all)")
    add_count(gibbs, "--seed", minimum=0, help="random seed")

    encode = model_command("encode", "sentence vectors of a text file (one text a line) to .npy", _encode)
    add_model_directory(encode)
    encode.add_argument("--input", required=True, type=existing_path("input file"),
                        help="UTF-8 text file, one text a line")
    encode.add_argument("--output", required=True, type=output_path("output file"),
                        help=".npy file to write, row i for input line i")
    add_count(encode, "--batch-size", default=64)
    encode.add_argument("--skip-blank", action="store_true",
                        help="leave blank lines out (instead of failing) and write each row's input line number "
                             "to OUTPUT.lines.txt")
    add_distribution(encode)

    index = model_command("index", "build a similarity index over a corpus (one text a line), a part of one, "
                                   "or join parts", _index)
    index.add_argument("model_dir", nargs="?", type=existing_path("model directory", directory=True),
                       help="model directory (not with --merge)")
    index.add_argument("--input", type=existing_path("input file"), help="UTF-8 text file, one text a line")
    index.add_argument("--output", required=True, type=output_path("index directory", directory=True),
                       help="directory to write the index to (replaced atomically)")
    index.add_argument("--append", action="store_true", help="add the texts to the index already in --output")
    index.add_argument("--shard", metavar="I/N", type=shard_argument,
                       help="index part I of N (from 0) of the corpus: lines [floor(I*L/N), floor((I+1)*L/N)) of "
                            "its L lines, to join with --merge")
    index.add_argument("--merge", nargs="+", metavar="PART_DIR",
                       type=existing_path("index part", directory=True),
                       help="join index parts (built with --shard, by one model) into --output; no MODEL_DIR")
    index.set_defaults(parser=index)
    add_distribution(index)
    add_count(index, "--batch-size", default=64)
    index.add_argument("--dtype", choices=["float32", "float16"], help="default float32")
    index.add_argument("--backend", choices=["exact", "faiss"], help="default exact")
    index.add_argument("--faiss-index", choices=["hnsw", "ivf", "ivfpq"],
                       help="with --backend faiss: hnsw (default), ivf, or ivfpq (compressed, tens of millions)")

    search = model_command("search", "the indexed texts most similar to a query", _search)
    search.add_argument("index_dir", type=existing_path("index directory", directory=True))
    add_model_directory(search)
    search.add_argument("query")
    add_count(search, "--topn", default=10)
    search.add_argument("--strict", action="store_true", help="refuse an index built by another model (default: warn)")
    search.add_argument("--rerank", metavar="CLASSIFIER_DIR",
                        type=existing_path("pair classifier directory", directory=True),
                        help="re-score the top candidates with this pair classifier (training.objective "
                             "cross_encoder) and order them by its score; prints score<TAB>cosine<TAB>text")
    add_count(search, "--rerank-top", help="candidates re-scored by --rerank (default 50; at least --topn)")

    mine = model_command("mine", "hard negatives for training data: corpus texts close to each record's first "
                                 "text but not its texts, written as groups JSONL with \"negatives\"", _mine)
    add_model_directory(mine)
    mine.add_argument("--input", required=True, type=existing_path("input file"),
                      help="training data: SimBERT groups JSONL, or a pair file (its similar pairs)")
    mine.add_argument("--format", choices=["groups", "pairs"], help="of --input (default: detected)")
    mine.add_argument("--pair-threshold", type=float,
                      help="a pair file's label below this is not a similar pair (default 1; e.g. 4 for STS scores)")
    mine.add_argument("--corpus", required=True, type=existing_path("corpus", directory=None),
                      help="texts to mine, one a line (searched exactly), or an index directory of this model "
                           "(simbert index)")
    mine.add_argument("--output", required=True, type=output_path("output file"),
                      help="groups JSONL to write: {\"text\", \"synonyms\", \"negatives\"} a record")
    add_count(mine, "--per-example", default=1, help="negatives to mine a record (default 1)")
    add_count(mine, "--skip-top", default=3, minimum=0,
              help="results passed over at the top of each ranking, likely unlisted paraphrases (default 3)")
    mine.add_argument("--max-score", type=argument_type(check_probability, "--max-score", float), default=0.95,
                      help="leave out candidates of this cosine or more, likely paraphrases (default 0.95)")
    add_count(mine, "--batch-size", default=64)

    evaluate = model_command("eval", "Spearman/Pearson/accuracy/F1 on labelled pair files", _eval)
    add_model_directory(evaluate)
    evaluate.add_argument("files", nargs="+", type=existing_path("pair file"),
                          help="pair files (TSV, ATEC CSV, STS, CSV with header, JSONL)")
    evaluate.add_argument("--format", choices=["tsv", "atec", "sts", "csv", "jsonl"], help="default: detected")
    evaluate.add_argument("--threshold", type=float,
                          help="fixed threshold on the score (default 0.9 on a cosine; a pair classifier's "
                               "accuracy and F1 are those of its predicted class unless given)")
    evaluate.add_argument("--output", type=output_path("output file"), help="write all metrics as JSON here")
    evaluate.add_argument("--plot", type=output_path("plot directory", directory=True),
                          help="directory for score histograms, one PNG per file")
    evaluate.add_argument("--whiten", type=existing_path("whitening corpus"),
                          help="corpus (one text a line) to fit BERT-whitening on; reports with and without")
    add_count(evaluate, "--dim", help="dimensions kept by whitening (default: all)")
    evaluate.add_argument("--baseline", choices=["jaccard"], help="also report a char-overlap baseline")
    add_count(evaluate, "--batch-size", default=64)

    served = model_command("serve", "an HTTP server: /encode, /similar, /synonyms, /health, /metrics", _serve)
    add_model_directory(served)
    served.add_argument("--index", type=existing_path("index directory", directory=True),
                        help="index directory for /similar (built by `simbert index` with this model)")
    served.add_argument("--host", default="127.0.0.1")
    add_count(served, "--port", default=8000, maximum=65535)
    served.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="gather concurrent /encode and /similar requests this long (0: off; default 5)")
    add_count(served, "--max-batch", default=64, help="texts per encode call (default 64)")
    add_count(served, "--max-texts", default=64, help="texts a request may hold (default 64)")
    add_count(served, "--max-chars", help="characters a text may hold (default 512, or --maxlen if more)")
    add_count(served, "--max-n", default=1000, help="largest /synonyms n (default 1000)")
    add_count(served, "--max-k", default=100, help="largest /synonyms k and /similar topn (default 100)")
    served.add_argument("--timeout", type=argument_type(check_positive, "--timeout", float), default=30.0,
                        help="seconds a request may take (default 30)")

    exported = commands.add_parser("export", help="the model in another format: SavedModel, ONNX, Hugging Face, "
                                                  "bert4keras, sentence-transformers", parents=[common])
    add_model_directory(exported, help="model directory (or a training output: its latest checkpoint)")
    exported.add_argument("out", type=output_path("export directory", directory=True), help="new directory to write")
    exported.add_argument("--format", required=True,
                          choices=["saved_model", "onnx", "hf", "bert4keras", "sentence_transformers"],
                          help="saved_model / onnx: the encoder (token_ids, segment_ids -> pooled vector); "
                               "hf: transformers' BERT / RoFormer; bert4keras: the released layout; "
                               "sentence_transformers: a SentenceTransformer directory (encode's vectors)")
    add_count(exported, "--max-positions",
              help="hf / sentence_transformers, a model with hierarchical positions: rows its position table is "
                   "written out to (transformers has none; default: its limit, at most 8192)")
    exported.add_argument("--maxlen", dest="max_tokens", metavar="TOKENS",
                          type=argument_type(check_integer, "--maxlen", minimum=3),
                          help="sentence_transformers: tokens a text keeps, its max_seq_length (default 64, as "
                               "encode's --maxlen)")
    exported.set_defaults(run=_export)

    convert = commands.add_parser("convert", help="add the other weight format to a model directory",
                                  parents=[common])
    add_model_directory(convert, help="model directory (or a training output: its latest checkpoint)")
    convert.add_argument("--to", required=True, choices=["bert4keras", "safetensors"],
                         help="bert4keras: bert_model.ckpt.* (needs TensorFlow); safetensors: bert_model.safetensors")
    convert.set_defaults(run=_convert)
    return parser


def add_count(command: argparse.ArgumentParser, *flags: str, default: int | None = None, help: str | None = None,
              **bounds) -> None:
    """An integer option checked by `check_integer` (at least 1 unless `bounds` say
    otherwise), named in its error by its first flag."""
    command.add_argument(*flags, type=argument_type(check_integer, flags[0], **bounds), default=default, help=help)


def add_model_directory(command: argparse.ArgumentParser, help: str | None = None) -> None:
    """The `model_dir` positional, checked to be an existing directory before anything loads."""
    command.add_argument("model_dir", type=existing_path("model directory", directory=True), help=help)


def add_distribution(command: argparse.ArgumentParser) -> None:
    """`--distribution`, `SimBERT.from_pretrained`'s."""
    command.add_argument("--distribution", choices=["auto", "none", "data_parallel"], default="auto",
                         help="auto (default): split each batch over every local device when JAX sees several; "
                              "none: one device; data_parallel: every local device (needs KERAS_BACKEND=jax)")


def add_cache_arguments(command: argparse.ArgumentParser, default: str | None) -> None:
    command.add_argument("--compile-cache", metavar="DIR", default=default,
                         help="keep compiled programs here for later runs (default ~/.cache/simbert/xla"
                              + (", or the recipe's training.compilation_cache)" if default is None else ")"))
    command.add_argument("--no-compile-cache", action="store_true", help="do not keep compiled programs")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "resume_anyway", False) and not args.resume:
        parser.error("--resume-anyway goes with --resume")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    # simbert's own INFO lines (what a command does); other libraries' from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("simbert").setLevel(logging.INFO)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("simbert: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 (every failure becomes one line; --debug shows it whole)
        if args.debug:
            raise
        print(f"simbert: error: {one_line(error)}", file=sys.stderr)
        return 1


# Optional packages and the extra of setup.py that installs each.
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "tf2onnx": "export", "onnx": "export", "onnxruntime": "export",
          "faiss": "faiss"}


def one_line(error: BaseException) -> str:
    """The error's message on one line; its type too unless it is one of simbert's or a
    plain ValueError / OSError, whose messages name the file or argument. A missing
    optional package names the extra that installs it."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, ModuleNotFoundError) and error.name in EXTRAS:
        extra = EXTRAS[error.name]
        return (f"this command needs {error.name}, which simbert installs as an option: pip install "
                f"'simbert[{extra}]' (from a checkout: pip install -e '.[{extra}]')")
    if isinstance(error, (ValueError, OSError, RuntimeError)) and type(error).__module__.split(".")[0] in (
            "simbert", "builtins"):
        return message
    return f"{type(error).__name__}: {message}"


if __name__ == "__main__":
    sys.exit(main())
