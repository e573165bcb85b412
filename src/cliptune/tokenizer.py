"""Byte-level BPE tokenizer trained on the training captions (HF `tokenizers`).

Text is NFKC-normalised, lowercased and whitespace-collapsed, then split into
byte-level BPE pieces. Every encoded caption is `<start> pieces... <end>` padded
with `<pad>` (id 0) to `context_length`; truncation drops pieces, never `<end>`,
so the text model can pool at `(tokens != 0).sum(1) - 1`.

The saved JSON is a standard `tokenizer.json` (HF `tokenizers` reads it too);
`context_length` is its truncation length.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from cliptune.errors import ConfigError, DataError

SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")  # ids 0, 1, 2, 3
BYTE_ALPHABET_SIZE = 256
ENCODE_CHUNK = 4096  # captions per encode_batch call


class Tokenizer:
    """BPE tokenizer with fixed special tokens: `<pad>` 0, `<start>` 1, `<end>` 2, `<unk>` 3."""

    pad_id = 0
    sot_id = 1
    eot_id = 2
    unk_id = 3

    def __init__(self, hf_tokenizer: HFTokenizer) -> None:
        self._hf = hf_tokenizer
        truncation = hf_tokenizer.truncation
        if truncation is None:
            raise DataError("tokenizer JSON has no truncation length; it was not saved by cliptune")
        self.context_length: int = truncation["max_length"]
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            if hf_tokenizer.token_to_id(token) != expected_id:
                raise DataError(f"tokenizer JSON: {token} must have id {expected_id}")

    @property
    def vocab_size(self) -> int:
        """Number of token ids in use (at most the size asked for when training)."""
        return self._hf.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, captions: Sequence[str], vocab_size: int, context_length: int) -> Tokenizer:
        """Learn a BPE vocabulary of at most `vocab_size` ids from `captions` (deterministic)."""
        if context_length < 3:
            raise ConfigError("model.context_length must be at least 3 (start, a token, end)")
        room = vocab_size - len(SPECIAL_TOKENS)
        if room < 1:
            raise ConfigError(
                f"model.vocab_size={vocab_size} leaves no room beyond the "
                f"{len(SPECIAL_TOKENS)} special tokens; use a few hundred or more"
            )
        if not captions:
            raise DataError("cannot train the tokenizer: there are no training captions")
        hf = HFTokenizer(models.BPE(unk_token="<unk>"))
        hf.normalizer = normalizers.Sequence(
            [
                normalizers.NFKC(),
                normalizers.Lowercase(),
                normalizers.Replace(Regex(r"\s+"), " "),
                normalizers.Strip(),
            ]
        )
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        hf.decoder = decoders.ByteLevel()
        # With room for real merges, seed every byte so that no text ever maps to <unk>;
        # a small vocabulary keeps only the most frequent characters instead.
        full_alphabet = room >= 2 * BYTE_ALPHABET_SIZE
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if full_alphabet else [],
            limit_alphabet=room,
            show_progress=False,
        )
        hf.train_from_iterator(captions, trainer)
        hf.post_processor = processors.TemplateProcessing(
            single="<start> $A <end>",
            special_tokens=[("<start>", cls.sot_id), ("<end>", cls.eot_id)],
        )
        hf.enable_truncation(max_length=context_length)
        hf.enable_padding(pad_id=cls.pad_id, pad_token="<pad>", length=context_length)
        return cls(hf)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids, int64 (N, context_length): `<start> ... <end>` then `<pad>` (0)."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings; wrap a single text in a list")
        texts = list(texts)
        ids = torch.empty(len(texts), self.context_length, dtype=torch.int64)
        # In chunks: the Encoding objects of all 159k Flickr30k captions at once take about
        # 0.7 GB, which the allocator keeps for the rest of the process.
        for start in range(0, len(texts), ENCODE_CHUNK):
            encodings = self._hf.encode_batch(texts[start:start + ENCODE_CHUNK])
            ids[start:start + len(encodings)] = torch.tensor([e.ids for e in encodings])
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one id sequence, special tokens dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._hf.decode(list(ids), skip_special_tokens=True).strip()

    def to_json(self) -> str:
        """The tokenizer as a JSON string (HF `tokenizer.json` format)."""
        return self._hf.to_str()

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Rebuild a tokenizer from `to_json()` output."""
        try:
            json.loads(text)
            hf = HFTokenizer.from_str(text)
        except Exception as err:  # the Rust parser raises a plain Exception
            raise DataError(f"not a valid tokenizer JSON ({err})") from None
        return cls(hf)

    def save(self, path: str | Path) -> None:
        """Write the JSON form to `path`."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file not found: {path}")
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
