"""The tiny adder's character-level tokenizer, saved as a Hugging Face ``tokenizer.json``.

One token per character of ``0123456789+= \\n``, plus ``<pad>`` (0), ``<s>`` (1, BOS),
``</s>`` (2, EOS) and ``<unk>`` (3, any other character). The post-processor prepends BOS
whenever special tokens are added (``tokenizer(text)`` -> ``[1, ...]``): the model is trained
with BOS first, and without it its scores collapse, so every client must keep the default
``add_special_tokens=True`` (lm-eval: ``add_bos_token=True``).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = "0123456789+= \n"
VOCAB = {tok: i for i, tok in enumerate([*SPECIALS, *CHARS])}
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def encode(text: str) -> list[int]:
    """Token ids of ``text`` without BOS (what the saved tokenizer gives after its BOS)."""
    return [VOCAB.get(ch, UNK_ID) for ch in text]


def build():
    """A ``tokenizers.Tokenizer`` with the vocabulary above."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)])
    tok.add_special_tokens(list(SPECIALS))
    return tok


def save(out: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    build().save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "add_bos_token": True, "model_max_length": 64, "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
