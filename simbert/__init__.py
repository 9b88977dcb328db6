"""simbert: SimBERT-style paraphrase generation and sentence embedding in Keras 3."""

from simbert.api import SimBERT, gen_synonyms, most_similar
from simbert.models import Transformer, build_transformer_model
from simbert.retrieval import SimilarityIndex
from simbert.tokenizer import Tokenizer, load_vocab

__version__ = "0.1.0"
__all__ = ["SimBERT", "SimilarityIndex", "Tokenizer", "Transformer", "build_transformer_model",
           "gen_synonyms", "load_vocab", "most_similar"]
