"""simbert: SimBERT-style paraphrase generation and sentence embedding in Keras 3."""

from simbert.models import Transformer, build_transformer_model
from simbert.tokenizer import Tokenizer, load_vocab

__version__ = "0.1.0"
__all__ = ["Transformer", "Tokenizer", "build_transformer_model", "load_vocab"]
