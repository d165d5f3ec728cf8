"""A tiny randomly initialised CLIP model (text + vision towers) saved as a local folder.

No CLIP weights install offline, so the CLIP path is tested with this: the real
transformers ``CLIPModel`` class, random weights, a small word-level BPE tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = [
    *("a", "photo", "of", "the", "red", "green", "blue", "cat", "dog", "car", "tree"),
    *("house", "sky", "sea", "apple", "animal", "vehicle", "plant", "colour", "shape"),
]


def build_tiny_clip(folder: Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Write config, weights and a fast tokenizer for a ~100k-parameter CLIP to ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|startoftext|>", "<|endoftext|>"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    vocab: dict[str, int] = {}
    for token in [*specials, *letters, *(f"{c}</w>" for c in letters)]:
        vocab[token] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in WORDS:  # merge each known word letter by letter into one token
        current = word[0]
        for i, ch in enumerate(word[1:], start=1):
            piece = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append((current, piece))
            current += piece
            vocab.setdefault(current, len(vocab))
        if len(word) == 1:
            vocab.setdefault(f"{word}</w>", len(vocab))
    bpe = models.BPE(
        vocab=vocab,
        merges=list(dict.fromkeys(merges)),
        unk_token=specials[1],
        end_of_word_suffix="</w>",
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    bos, eos = vocab[specials[0]], vocab[specials[1]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{specials[0]} $A {specials[1]}",
        special_tokens=[(specials[0], bos), (specials[1], eos)],
    )
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": specials[0],
                "eos_token": specials[1],
                "pad_token": specials[1],
                "unk_token": specials[1],
                "model_max_length": 77,
            }
        )
    )
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(str(folder))
    return folder
