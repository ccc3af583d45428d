"""Byte-level BPE tokenizers: trained here with Hugging Face `tokenizers`, or loaded from a local path.

Nothing downloads at run time: a name that is not a local file or folder (say `gpt2`) is refused
with a message saying to pass a path. The end-of-document token is `<|endoftext|>` unless set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from winnow.pipeline.errors import ConfigError

EOS = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, eos: str = EOS) -> Tokenizer:
    """A GPT-2-style byte-level BPE trained on `texts` (deterministic for the same texts in the same order)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizer.json` file, or a folder holding one (a Hugging Face model folder works)."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ConfigError(f"tokenizer {str(path)!r} is not a local tokenizer.json or a folder holding one; "
                          "winnow downloads nothing at run time: pass a local path", key="tokenizer")
    return Tokenizer.from_file(str(p))


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.blake2b(tok.to_str().encode(), digest_size=12).hexdigest()


def eos_id(tok: Tokenizer, eos: str = EOS) -> int:
    token_id = tok.token_to_id(eos)
    if token_id is None:
        raise ConfigError(f"the tokenizer has no {eos!r} token; set `eos` to its end-of-document token", key="eos")
    return token_id
