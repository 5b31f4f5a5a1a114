"""Text encoders and tokenizers of the empty prompt, shared by every teacher family.

Teachers embed "" once at build time. Tiny twins and random-init teachers have no real
text encoders: they get tiny random ones when saved, and a handwritten tokenizer vocab
that knows the special tokens "" needs (nothing is downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

TEXT_LENGTH = 77  # CLIP's context length
BOS, EOS = 49406, 49407
PAD_ID = {"clip": EOS, "open_clip": 0}

# Minimal byte-level BPE vocab: enough for "" and a few lowercase words.
TINY_VOCAB = ["!", "<|startoftext|>", "<|endoftext|>", "a</w>", "e</w>", "f", "a", "c", "e",
              "fa", "ce</w>"]
_TINY_MERGES = ["f a", "c e</w>"]


def write_clip_tokenizer(folder: Path, pad: str, sparse_real_ids: bool = False) -> None:
    """A CLIPTokenizer from a handwritten vocab.json/merges.txt (bos/eos/pad are all "" needs).

    `sparse_real_ids` keeps the real CLIP ids (bos 49406, eos 49407, "!" 0) so that a real text
    encoder from a single file embeds "" exactly as with its full tokenizer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if sparse_real_ids:
        vocab = {"!": 0, "<|startoftext|>": BOS, "<|endoftext|>": EOS}
        merges: list[str] = []
    else:
        vocab = {token: i for i, token in enumerate(TINY_VOCAB)}
        merges = _TINY_MERGES
    pad_token = "<|endoftext|>" if pad == "clip" else "!"
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": TEXT_LENGTH, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def tiny_clip(hidden: int, projection_dim: int | None = None) -> nn.Module:
    """A tiny random CLIP text encoder of width `hidden` (with a projection: pooled output),
    from the global RNG: callers seed it (inside `torch.random.fork_rng`)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    extra: dict[str, Any] = {} if projection_dim is None else {"projection_dim": projection_dim}
    config = CLIPTextConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=hidden, intermediate_size=64,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=TEXT_LENGTH,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, **extra,
    )
    cls = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return cls(config).eval()


def tiny_t5(d_model: int) -> nn.Module:
    """A tiny random T5 encoder of width `d_model` (SD3's / Flux's third text encoder), from
    the global RNG as `tiny_clip`."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=32, num_layers=1,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def write_t5_tokenizer(folder: Path) -> None:
    """A T5 tokenizer that knows "" (pad 0, eos 1): a tiny WordLevel tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    core = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                        eos_token="</s>", unk_token="<unk>", model_max_length=512)
    tokenizer.save_pretrained(str(folder))


def t5_ids(tokenizer: Any, length: int) -> torch.Tensor:
    """Token ids [1, length] of "" as the SD3/Flux pipelines pad them for T5."""
    return tokenizer("", padding="max_length", max_length=length, truncation=True,
                     add_special_tokens=True, return_tensors="pt").input_ids


def clip_ids(tokenizer: Any) -> torch.Tensor:
    """Token ids [1, 77] of "" padded to the tokenizer's length, as every SD pipeline does."""
    return tokenizer("", padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids
