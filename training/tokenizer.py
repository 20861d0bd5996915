"""A small byte-level BPE tokenizer trained from scratch (no model hub needed)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"


def _bpe_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Train a raw byte-level BPE ``tokenizers.Tokenizer`` on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any input encodes
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_tokenizer(
    texts: list[str], vocab_size: int = 2048, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    ``<|endoftext|>`` serves as BOS, EOS and padding token.  Any unicode text
    round-trips through encode/decode.  No BOS/EOS is added automatically.
    """
    raw = _bpe_tokenizer(texts, vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
