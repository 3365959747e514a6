"""Token ids of class prompts for the frozen encoder's text tower.

CoOp prompts are `[SOS] X×C <class name> . [EOS]` (CLIP) or `X×C <class name> . </s>` (SigLIP): the C placeholder
tokens are replaced by learnable context vectors in `encode_prompts`. CLIP's text tower is causal, so the pooled
EOS output does not depend on anything after the EOS: sequences are cut to the shortest length that holds the
longest prompt (K·N sequences per step make this a large saving) and `encode_prompts` gives the same embeddings as
at 77 tokens. SigLIP's pools the last position of texts padded to 64 tokens, as it was trained; its prompts are
padded there (`zegot.class_tokens`).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

PLACEHOLDER = "X"  # CoOp's placeholder word; its embedding never reaches the encoder.


class PromptTokens(NamedTuple):
  input_ids: np.ndarray  # (K, T) int32, padded with the tokenizer's pad id
  context_start: int  # first placeholder position (CLIP: 1, right after [SOS]; SigLIP: 0)
  num_context: int  # C


def load_tokenizer(directory: str | os.PathLike):
  """The transformers tokenizer saved in a checkpoint directory (as `from_pretrained` resolved it)."""
  import transformers  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  names = ("tokenizer.json", "vocab.json", "spiece.model")
  if not any((directory / n).is_file() for n in names):
    raise FileNotFoundError(f"{directory} has no tokenizer: expected tokenizer.json (or CLIP's vocab.json + "
                            f"merges.txt, or SigLIP's spiece.model) as written by the tokenizer's save_pretrained")
  return transformers.AutoTokenizer.from_pretrained(str(directory))


VOCABULARY_FILE = "vocabulary.json"  # in a checkpoint directory: the only words its text tower was trained on


def closed_vocabulary(tokenizer) -> tuple[str, ...] | None:
  """The words a model knows when its checkpoint declares a closed vocabulary (vocabulary.json beside the tokenizer,
  {"words": [...]}: the demo's mini-CLIP, trained on captions of a small world); None for an open one (a real
  CLIP, trained on the web's text, has no such file)."""
  path = pathlib.Path(getattr(tokenizer, "name_or_path", "") or ".") / VOCABULARY_FILE
  if not path.is_file():
    return None
  return tuple(json.loads(path.read_text())["words"])


def unknown_words(class_names: Sequence[str], vocabulary: Sequence[str] | None) -> list[str]:
  """The words of `class_names` (split on spaces, lower-cased) that a closed vocabulary lacks, each once; [] for
  an open vocabulary (None)."""
  if vocabulary is None:
    return []
  known = {w.lower() for w in vocabulary}
  words = (w for name in class_names for w in str(name).lower().split())
  return list(dict.fromkeys(w for w in words if w not in known))


def check_class_names(class_names: Sequence[str]) -> list[str]:
  """Class names stripped; empty or repeated names are an error that names them."""
  names = [str(n).strip() for n in class_names]
  if not names:
    raise ValueError("the class list is empty")
  empty = [i for i, n in enumerate(names) if not n]
  if empty:
    raise ValueError(f"class names at positions {empty} are empty")
  seen, repeated = set(), []
  for n in names:
    if n.lower() in seen:
      repeated.append(n)
    seen.add(n.lower())
  if repeated:
    raise ValueError(f"class names repeat (case-insensitively): {sorted(set(repeated))}")
  return names


def tokenize(tokenizer, texts: Sequence[str], *, length: int | None = None, max_length: int = 77) -> np.ndarray:
  """(K, T) int32 ids of `[SOS] text [EOS]`, padded to `length` or, by default, to the longest text."""
  ids = tokenizer(list(texts), add_special_tokens=True, padding=False, truncation=False)["input_ids"]
  longest = max(len(x) for x in ids)
  too_long = [t for t, x in zip(texts, ids) if len(x) > max_length]
  if too_long:
    raise ValueError(f"prompts longer than the text tower's {max_length} tokens: {too_long[:5]}")
  length = longest if length is None else length
  if length < longest:
    raise ValueError(f"length={length} is shorter than the longest prompt ({longest} tokens)")
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  out = np.full((len(ids), length), pad, dtype=np.int32)
  for i, x in enumerate(ids):  # host-side, once per class list
    out[i, :len(x)] = x
  return out


def prompt_token_ids(tokenizer, class_names: Sequence[str], num_context: int, *, length: int | None = None,
                     max_length: int = 77) -> PromptTokens:
  """Ids of `[SOS] X×C <class name> . [EOS]` for every class, at the shortest length (or `length`)."""
  names = check_class_names(class_names)
  if num_context < 0:
    raise ValueError(f"num_context must be >= 0, got {num_context}")
  prefix = " ".join([PLACEHOLDER] * num_context)
  texts = [f"{prefix} {n}." if prefix else f"{n}." for n in names]
  ids = tokenize(tokenizer, texts, length=length, max_length=max_length)
  start = context_start(tokenizer)
  if num_context and not np.all(ids[:, start:start + num_context] == placeholder_id(tokenizer)):
    raise ValueError("placeholder tokens were merged with a class name by the tokenizer; check the class names")
  return PromptTokens(ids, start, num_context)


def placeholder_id(tokenizer) -> int:
  ids = tokenizer(PLACEHOLDER, add_special_tokens=False)["input_ids"]
  if len(ids) != 1:
    raise ValueError(f"the placeholder {PLACEHOLDER!r} is not a single token for this tokenizer")
  return ids[0]


def context_start(tokenizer) -> int:
  """Where the tokenizer puts the first word: after its start token (CLIP: 1), or at 0 when it has none (SigLIP)."""
  return tokenizer(PLACEHOLDER, add_special_tokens=True)["input_ids"].index(placeholder_id(tokenizer))


def byte_level_tokenizer():
  """A CLIP tokenizer whose vocabulary is the 256 byte-level symbols (alone and word-final) and the two
  special tokens: every word is spelled out symbol by symbol. For tiny random models and tests, which need real
  tokenization without a downloaded vocabulary. Ids: symbols 0..511, [SOS] = 512, [EOS] = 513."""
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top

  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {s: i for i, s in enumerate(alphabet)}
  vocab.update({s + "</w>": len(alphabet) + i for i, s in enumerate(alphabet)})
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  return transformers.CLIPTokenizer(vocab=vocab, merges=[])
