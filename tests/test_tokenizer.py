"""Tokenizer: special ids, padding, truncation, round trip, determinism, persistence."""

from __future__ import annotations

import pytest
import torch

from cliptune.errors import ConfigError, DataError
from cliptune.tokenizer import Tokenizer

CAPTIONS = [
    "A dog runs across the grass .",
    "Two men in hard hats are working .",
    "A small red circle to the left of a blue square",
    "a girl in a pink dress climbs the stairs .",
    "Several people walk down a busy street .",
] * 4


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(CAPTIONS, vocab_size=200, context_length=12)


def test_special_ids_and_vocab_size(tokenizer):
    assert (tokenizer.pad_id, tokenizer.sot_id, tokenizer.eot_id) == (0, 1, 2)
    assert tokenizer.context_length == 12
    assert 4 < tokenizer.vocab_size <= 200


def test_encode_layout_start_end_then_padding(tokenizer):
    tokens = tokenizer.encode(["a dog runs", "two men"])
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 12)
    for row in tokens:
        length = int((row != 0).sum())
        assert row[0] == tokenizer.sot_id
        assert row[length - 1] == tokenizer.eot_id  # where the text model pools
        assert (row[length:] == 0).all()
        assert (row[:length] != 0).all()


def test_round_trip_is_lowercased_text(tokenizer):
    text = "A dog runs across the grass ."
    assert tokenizer.decode(tokenizer.encode([text])[0]) == text.lower()
    # Repeated whitespace collapses; decode accepts plain lists too.
    assert tokenizer.decode(tokenizer.encode(["Two   men  "])[0].tolist()) == "two men"


def test_truncation_keeps_end_token_last(tokenizer):
    long = " ".join(["dog runs across the grass"] * 10)
    row = tokenizer.encode([long])[0]
    assert (row != 0).all()
    assert row[0] == tokenizer.sot_id and row[-1] == tokenizer.eot_id
    assert tokenizer.eot_id not in row[1:-1].tolist()
    assert tokenizer.decode(row).startswith("dog runs across")


def test_unseen_characters_do_not_break_encoding(tokenizer):
    row = tokenizer.encode(["zebra ü"])[0]
    assert row[0] == tokenizer.sot_id and tokenizer.eot_id in row.tolist()


def test_large_vocab_covers_every_byte():
    tok = Tokenizer.train(CAPTIONS, vocab_size=1024, context_length=32)
    text = "zebra über straße"
    assert tok.decode(tok.encode([text])[0]) == text
    assert tok.vocab_size <= 1024


def test_training_is_deterministic():
    first = Tokenizer.train(CAPTIONS, vocab_size=150, context_length=8)
    second = Tokenizer.train(list(CAPTIONS), vocab_size=150, context_length=8)
    assert first.to_json() == second.to_json()


def test_save_load_and_json_round_trip(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = Tokenizer.load(path)
    texts = ["a red circle", "men in hard hats"]
    assert torch.equal(loaded.encode(texts), tokenizer.encode(texts))
    assert loaded.context_length == 12 and loaded.vocab_size == tokenizer.vocab_size
    assert torch.equal(Tokenizer.from_json(tokenizer.to_json()).encode(texts), tokenizer.encode(texts))


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no training captions"):
        Tokenizer.train([], vocab_size=100, context_length=8)
    with pytest.raises(ConfigError, match="vocab_size"):
        Tokenizer.train(CAPTIONS, vocab_size=4, context_length=8)
    with pytest.raises(DataError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="bad.json"):
        Tokenizer.load(tmp_path / "bad.json")
    with pytest.raises(TypeError):
        Tokenizer.train(CAPTIONS, vocab_size=100, context_length=8).encode("a single string")
