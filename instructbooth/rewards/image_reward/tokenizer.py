"""ImageReward's prompt tokenizer, offline: bert-base-uncased WordPiece + [DEC] and [ENC].

Built directly on the `tokenizers` library (the engine behind transformers'
BertTokenizerFast) from the shipped `vocab.txt`, with BERT's normaliser (lower case, accents
stripped, CJK characters split) and pre-tokeniser, `[CLS] prompt [SEP]`, truncation to
`max_length` and padding to exactly `max_length` with [PAD] (id 0). This is the reference's
`BertTokenizer.from_pretrained("bert-base-uncased")` plus `[DEC]` (30522) and `[ENC]` (30523)
called with `padding="max_length", truncation=True, max_length=35`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import torch
from torch import Tensor

from ...components import CONFIG_PACKAGE
from .config import shipped_settings

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class TokenizedPrompts:
    input_ids: Tensor  # [P, max_length] int64 token ids, [CLS] first
    attention_mask: Tensor  # [P, max_length] int64, 1 for tokens, 0 for padding

    def to(self, device: str | torch.device) -> "TokenizedPrompts":
        return TokenizedPrompts(self.input_ids.to(device), self.attention_mask.to(device))

    def select(self, index: Tensor | slice) -> "TokenizedPrompts":
        return TokenizedPrompts(self.input_ids[index], self.attention_mask[index])


class PromptTokenizer:
    """`tokenizer(prompts) -> TokenizedPrompts`; build with `PromptTokenizer.shipped()`."""

    def __init__(
        self,
        vocab: dict[str, int],
        max_length: int = 35,
        added_tokens: Sequence[str] = ("[DEC]", "[ENC]"),
        lowercase: bool = True,
    ):
        self.max_length = max_length
        self._tokenizer = _build_wordpiece(vocab, max_length, list(added_tokens), lowercase)
        self.added_token_ids = {token: self._tokenizer.token_to_id(token) for token in added_tokens}

    @staticmethod
    def shipped(max_length: int = 35) -> "PromptTokenizer":
        """From the package's `configs/imagereward/` files (no network)."""
        settings = shipped_settings()["tokenizer"]
        folder = resources.files(CONFIG_PACKAGE).joinpath("imagereward")
        vocab = _parse_vocab(folder.joinpath(settings["vocab_file"]).read_text("utf-8"))
        return PromptTokenizer(vocab, max_length, settings["added_tokens"], settings["lowercase"])

    @staticmethod
    def from_vocab_file(path: str | os.PathLike, max_length: int = 35) -> "PromptTokenizer":
        with open(path, encoding="utf-8") as handle:
            return PromptTokenizer(_parse_vocab(handle.read()), max_length)

    @property
    def vocab_size(self) -> int:
        """Vocabulary plus added tokens (30524 for ImageReward)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, prompts: str | Sequence[str]) -> TokenizedPrompts:
        """One prompt or a list of P prompts -> ids and masks [P, max_length]."""
        if isinstance(prompts, str):
            prompts = [prompts]
        encodings = self._tokenizer.encode_batch(list(prompts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).view(-1, self.max_length)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long).view(-1, self.max_length)
        return TokenizedPrompts(ids, mask)


def _parse_vocab(text: str) -> dict[str, int]:
    """vocab.txt: one token per line, id = line number."""
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return {token: index for index, token in enumerate(tokens)}


def _build_wordpiece(vocab: dict[str, int], max_length: int, added: list[str], lowercase: bool):
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    for special in BERT_SPECIAL_TOKENS[:4]:
        if special not in vocab:
            raise ValueError(f"not a BERT vocabulary: token {special} is missing")
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    # BERT's own special tokens are matched whole inside a prompt too, as transformers does
    specials = [token for token in BERT_SPECIAL_TOKENS if token in vocab] + added
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tokenizer
