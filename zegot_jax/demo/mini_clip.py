"""The demo's mini-CLIP: a small CLIP pretrained on captions of the `textures_zs3` world.

It ships inside the package (`zegot_jax/demo/mini_clip/`, transformers' format, with `knowledge.json`: what it
knows, measured on held-out scenes) and is selected with `clip.path = "mini-clip"`; it loads through the same
`encoder_checkpoint.from_pretrained` as any real CLIP. `python -m zegot_jax.demo.pretrain --out DIR` reproduces
it. This module holds what both need: the architecture and the caption tokenizer.
"""

from __future__ import annotations

import pathlib

from zegot_jax.data import textures
from zegot_jax.models.clip import CLIPConfig, TextConfig, VisionConfig

IMAGE_SIZE = 64  # pretraining resolution; the demo segments at this size too
PATCH_SIZE = 8  # an 8×8 grid of patches at IMAGE_SIZE


def vocabulary() -> dict:
  """vocabulary.json of the checkpoint: its closed vocabulary (prompts.closed_vocabulary), the caption words."""
  return dict(words=list(textures.caption_words()),
              note="the only words the mini-CLIP was pretrained on (textures.caption_words()); any other word is "
                   "spelled out by its tokenizer and means nothing to it")


def shipped_path() -> pathlib.Path:
  """The checkpoint directory inside the installed package."""
  return pathlib.Path(__file__).resolve().parent / "mini_clip"


def caption_tokenizer():
  """A transformers `CLIPTokenizer` whose byte-level BPE has every caption word as one token.

  The vocabulary is CLIP's 512 byte-level symbols (alone and word-final), then the merged pieces, then
  `<|startoftext|>` and `<|endoftext|>`; any text still tokenizes (unknown words are spelled out). Merges are
  added word by word: each word is first split by the merges so far, and its pieces are then joined left to right
  by new merges. New merges rank below every earlier one, so they never change how an earlier word splits.
  Deterministic: the same words give the same files.
  """
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top

  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {s: i for i, s in enumerate(alphabet)}
  vocab.update({s + "</w>": len(alphabet) + i for i, s in enumerate(alphabet)})
  ranks: dict[tuple[str, str], int] = {}

  def split(symbols: list[str]) -> list[str]:  # BPE with the merges so far: lowest rank first
    while len(symbols) > 1:
      rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
      if rank == len(ranks):
        break
      symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols

  for word in textures.caption_words():
    pieces = split(list(word[:-1]) + [word[-1] + "</w>"])
    merged = pieces[0]
    for piece in pieces[1:]:
      ranks[(merged, piece)] = len(ranks)
      merged += piece
      vocab.setdefault(merged, len(vocab))
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  return transformers.CLIPTokenizer(vocab=vocab, merges=sorted(ranks, key=ranks.get))


def mini_config(vocab_size: int, eos_token_id: int) -> CLIPConfig:
  """4 vision layers on 8×8 patches of 64×64 images, 3 text layers, width 128, joint space 64 (1.5 M params)."""
  return CLIPConfig(
      vision=VisionConfig(128, 512, 4, 4, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="gelu"),
      text=TextConfig(128, 512, 3, 4, hidden_act="gelu", vocab_size=vocab_size, max_position_embeddings=32,
                      eos_token_id=eos_token_id),
      projection_dim=64)
