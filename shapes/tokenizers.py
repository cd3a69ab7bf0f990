"""Word-level BPE tokenizers for the shapes world, built offline from the world's vocabulary.

Both keep the full byte alphabet of ``unidiffuser.tiny`` (so any text still tokenises, character by character)
and add merges until every word the world writes is a single token. They are ordinary BPE tokenizers: saved
as ``vocab.json`` + ``merges.txt``, they load with ``CLIPTokenizer`` / ``GPT2Tokenizer``.
"""

from __future__ import annotations

from collections import Counter

from transformers import CLIPTokenizer, GPT2Tokenizer

from shapes.world import vocabulary_corpus
from unidiffuser.tiny import (
    CLIP_BOS,
    CLIP_EOS,
    GPT2_EOS,
    byte_to_unicode,
    tiny_clip_tokenizer,
    tiny_gpt2_tokenizer,
)

END_OF_WORD = "</w>"


def learn_merges(words: Counter[tuple[str, ...]]) -> list[tuple[str, str]]:
    """Classic BPE learning (most frequent adjacent pair first, ties by the pair itself) until every word
    is one symbol."""
    words = Counter({w: c for w, c in words.items() if len(w) > 0})
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            return merges
        best = max(pairs.items(), key=lambda kv: (kv[1], [-ord(ch) for ch in "".join(kv[0])]))[0]
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged


def _pre_tokens(tokenizer, texts: list[str]) -> Counter[str]:
    backend = tokenizer.backend_tokenizer
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
            counts[piece] += 1
    return counts


def _extend(vocab: dict[str, int], tokens: list[str]) -> dict[str, int]:
    out = dict(vocab)
    for token in tokens:
        if token not in out:
            out[token] = len(out)
    return out


def world_clip_tokenizer(max_length: int = 32, corpus: list[str] | None = None) -> CLIPTokenizer:
    """CLIP tokenizer: bytes (alone and word-final) + every world word as one ``word</w>`` token."""
    corpus = vocabulary_corpus() if corpus is None else corpus
    words: Counter[tuple[str, ...]] = Counter()
    for piece, count in _pre_tokens(tiny_clip_tokenizer(), corpus).items():
        words[tuple(piece[:-1]) + (piece[-1] + END_OF_WORD,)] += count
    merges = learn_merges(words)
    chars = list(byte_to_unicode().values())
    base = chars + [c + END_OF_WORD for c in chars] + [CLIP_BOS, CLIP_EOS]
    vocab = _extend({t: i for i, t in enumerate(base)}, [a + b for a, b in merges])
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    _check_single_tokens(tokenizer, corpus, extra=2)
    return tokenizer


def world_gpt2_tokenizer(corpus: list[str] | None = None) -> GPT2Tokenizer:
    """GPT-2 tokenizer: 256 bytes + every world word (with and without its leading space) + end of text."""
    corpus = vocabulary_corpus() if corpus is None else corpus
    pieces = _pre_tokens(tiny_gpt2_tokenizer(), corpus)
    # the words as they appear mid-caption ("Ġcircle") and at its start ("circle")
    for piece in list(pieces):
        pieces[piece.removeprefix("Ġ")] += 1
    merges = learn_merges(Counter({tuple(p): c for p, c in pieces.items()}))
    base = list(byte_to_unicode().values())
    vocab = _extend({t: i for i, t in enumerate(base)}, [a + b for a, b in merges] + [GPT2_EOS])
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges)
    _check_single_tokens(tokenizer, corpus, extra=0)
    return tokenizer


def _check_single_tokens(tokenizer, corpus: list[str], extra: int) -> None:
    """Every caption of the world must tokenise into exactly its pre-tokens (one token per word)."""
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    norm = tokenizer.backend_tokenizer.normalizer
    sample = corpus[:: max(1, len(corpus) // 2000)]
    for text in sample:
        expected = len(pre.pre_tokenize_str(norm.normalize_str(text) if norm else text))
        got = len(tokenizer(text).input_ids)
        if got != expected + extra:
            raise RuntimeError(f"BPE did not make every word one token: {text!r}: {got} ids for {expected}")
