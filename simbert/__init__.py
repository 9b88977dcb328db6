"""simbert: SimBERT-style paraphrase generation and sentence embedding in Keras 3.

The public names are imported on first use (module `__getattr__`), so that importing
simbert, or running `simbert --help`, does not start TensorFlow.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "SimBERT": "simbert.api",
    "gen_synonyms": "simbert.api",
    "most_similar": "simbert.api",
    "PairClassifier": "simbert.pair_classifier",
    "BackboneConfig": "simbert.config",
    "TrainConfig": "simbert.config",
    "Transformer": "simbert.models",
    "build_backbone": "simbert.directories",
    "build_transformer_model": "simbert.directories",
    "load_pretrained": "simbert.directories",
    "save_pretrained": "simbert.directories",
    "SimilarityIndex": "simbert.retrieval",
    "Tokenizer": "simbert.tokenizer",
    "load_vocab": "simbert.tokenizer",
    "Trainer": "simbert.trainer",
    "use_compilation_cache": "simbert.compiled",
    "Platform": "simbert.kernels",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'simbert' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted([*globals(), *_EXPORTS])
