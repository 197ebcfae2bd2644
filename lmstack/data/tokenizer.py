"""Byte-level BPE tokenizer trained with Hugging Face `tokenizers`, and the bytes each token stands for.

Every character of a byte-level token string stands for exactly one byte, so the UTF-8 length of the
text behind a token is the length of its string; special tokens stand for none. Bits per byte uses this.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOS, PAD]


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """int32 [vocab]: how many UTF-8 bytes each token id decodes to (0 for special tokens)."""
    vocab = tok.get_vocab(with_added_tokens=True)
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    out = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=np.int32)
    for token, idx in vocab.items():
        out[idx] = 0 if token in special else len(token)
    return out


# End-of-text tokens of tokenizers users bring (`lmstack import-hf`): GPT-2/OLMo, Llama 3, Llama 2, Gemma.
EOS_NAMES = (EOS, "<|end_of_text|>", "</s>", "<eos>")


def eos_id(tok: Tokenizer) -> int:
    """The id of the token that ends a document: ours, or an imported tokenizer's own end-of-text token."""
    for name in EOS_NAMES:
        idx = tok.token_to_id(name)
        if idx is not None:
            return idx
    raise ValueError(f"tokenizer has no end-of-text token (looked for {', '.join(EOS_NAMES)})")
