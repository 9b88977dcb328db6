"""Build a small random SimBERT-shaped model and encode a few sentences."""

import numpy as np

from simbert import Tokenizer, build_transformer_model

SENTENCES = ["今天天气怎么样", "明天会下雨吗", "花呗怎么还款"]

vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set("".join(SENTENCES)))
tokenizer = Tokenizer({token: i for i, token in enumerate(vocab)})
config = {"vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 4, "intermediate_size": 64}
model = build_transformer_model(config, application="unilm", with_pool="linear")
encoded = [tokenizer.encode(s)[0] for s in SENTENCES]
length = max(map(len, encoded))
token_ids = np.array([ids + [0] * (length - len(ids)) for ids in encoded])
vectors = model.predict([token_ids, np.zeros_like(token_ids)], verbose=0)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
print("cosine similarities:\n", np.round(vectors @ vectors.T, 3))
