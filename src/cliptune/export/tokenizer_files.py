"""Our BPE tokenizer as Hugging Face tokenizer files, loadable by `AutoTokenizer`.

The tokenizer is already a standard `tokenizer.json`; next to it goes a
`tokenizer_config.json` naming the generic fast tokenizer class (so transformers
keeps our normaliser, pre-tokenizer and `<start> ... <end>` template as they are) and
the special tokens. `model_max_length` is the context length, so `truncation=True`
cuts captions where cliptune does.
"""

from __future__ import annotations

import json
from pathlib import Path

from cliptune.tokenizer import SPECIAL_TOKENS

PAD, START, END, UNK = SPECIAL_TOKENS


def swap_token_ids(tokenizer_json: str, a: int, b: int) -> str:
    """The tokenizer JSON with ids `a` and `b` trading places everywhere they occur
    (vocabulary, added tokens, the post-processor's template, the padding id)."""
    swap = {a: b, b: a}
    data = json.loads(tokenizer_json)
    vocab = data["model"]["vocab"]
    for token, index in vocab.items():
        vocab[token] = swap.get(index, index)
    for added in data.get("added_tokens") or []:
        added["id"] = swap.get(added["id"], added["id"])
    for special in ((data.get("post_processor") or {}).get("special_tokens") or {}).values():
        special["ids"] = [swap.get(index, index) for index in special["ids"]]
    padding = data.get("padding")
    if padding:
        padding["pad_id"] = swap.get(padding["pad_id"], padding["pad_id"])
    return json.dumps(data, ensure_ascii=False)


def write_tokenizer_files(tokenizer_json: str, context_length: int, out_dir: Path) -> list[str]:
    """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`;
    return the file names."""
    special = {"bos_token": START, "eos_token": END, "pad_token": PAD, "unk_token": UNK}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out_dir / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]

