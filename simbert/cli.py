"""The `simbert` command: `simbert train --config FILE [--steps N] [--output-dir DIR] [--resume]`."""

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
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
