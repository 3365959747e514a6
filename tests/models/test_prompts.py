"""CoOp prompt encoding: short sequences equal full length, contexts of real words equal those words as text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from zegot_jax.models import encoder_checkpoint, prompts

CLASSES = ["cat", "potted plant", "tv monitor", "sheep"]


@pytest.fixture(scope="module")
def loaded(make_checkpoint):
  directory, torch_model = make_checkpoint()
  return encoder_checkpoint.from_pretrained(directory), torch_model, prompts.load_tokenizer(directory)


def _encode_prompts(loaded_clip, ids, context):
  out = loaded_clip.model.apply({"params": loaded_clip.params}, jnp.asarray(ids), jnp.asarray(context),
                                method="encode_prompts")
  return np.asarray(out.text_embeds)


def _word_context(loaded_clip, tokenizer, words):
  ids = tokenizer(words, add_special_tokens=False)["input_ids"]
  return np.asarray(loaded_clip.model.apply({"params": loaded_clip.params}, jnp.asarray(ids),
                                            method=lambda m, i: m.text_model.embed_tokens(i)))  # (C, width)


def test_context_of_real_words_equals_encoding_the_words(loaded):
  """Contexts set to the embeddings of 'a photo of a' / 'the art of a' give the text features transformers
  computes for 'a photo of a <class>.' / 'the art of a <class>.'."""
  clip, torch_model, tokenizer = loaded
  phrases = ["a photo of a", "the art of a"]
  c = len(tokenizer(phrases[0], add_special_tokens=False)["input_ids"])
  assert len(tokenizer(phrases[1], add_special_tokens=False)["input_ids"]) == c
  context = np.stack([_word_context(clip, tokenizer, p) for p in phrases])  # (N=2, C, width)
  tokens = prompts.prompt_token_ids(tokenizer, CLASSES, c)
  ours = _encode_prompts(clip, tokens.input_ids, context)  # (K, N, D)
  assert ours.shape == (len(CLASSES), 2, 16)
  for n, phrase in enumerate(phrases):
    text = tokenizer([f"{phrase} {name}." for name in CLASSES], padding=True, return_tensors="pt")
    with torch.no_grad():
      reference = torch_model.get_text_features(**text).pooler_output.numpy()
    np.testing.assert_allclose(ours[:, n], reference, rtol=1e-5, atol=1e-5)


def test_shortest_length_equals_full_length(loaded):
  clip, _, tokenizer = loaded
  context = np.random.default_rng(0).standard_normal((3, 5, 24)).astype(np.float32)
  short = prompts.prompt_token_ids(tokenizer, CLASSES, 5)
  full = prompts.prompt_token_ids(tokenizer, CLASSES, 5, length=77)
  longest = max(len(tokenizer(f"{' '.join(['X'] * 5)} {n}.")["input_ids"]) for n in CLASSES)
  assert short.input_ids.shape == (4, longest) and full.input_ids.shape == (4, 77)
  np.testing.assert_allclose(_encode_prompts(clip, short.input_ids, context),
                             _encode_prompts(clip, full.input_ids, context), rtol=1e-6, atol=1e-6)


def test_prompt_gradient_reaches_only_context(loaded):
  """d(text embeddings)/d(context) is non-zero, and a context change moves every class's embedding."""
  clip, _, tokenizer = loaded
  tokens = prompts.prompt_token_ids(tokenizer, CLASSES, 4)
  context = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 24)), jnp.float32)
  f = lambda ctx: clip.model.apply({"params": clip.params}, jnp.asarray(tokens.input_ids), ctx,
                                   method="encode_prompts").text_embeds.sum()
  g = jax.grad(f)(context)
  assert g.shape == context.shape and np.all(np.abs(np.asarray(g)).sum(axis=-1) > 0)
  # Finite difference on one coordinate agrees with the gradient.
  eps = 1e-3
  bump = jnp.zeros_like(context).at[1, 2, 5].set(eps)
  fd = (f(context + bump) - f(context - bump)) / (2 * eps)
  np.testing.assert_allclose(float(fd), float(g[1, 2, 5]), rtol=2e-2, atol=1e-3)


def test_bad_class_lists_are_named():
  tokenizer = prompts.byte_level_tokenizer()
  with pytest.raises(ValueError, match="empty"):
    prompts.prompt_token_ids(tokenizer, [], 4)
  with pytest.raises(ValueError, match=r"positions \[1\] are empty"):
    prompts.prompt_token_ids(tokenizer, ["cat", "  "], 4)
  with pytest.raises(ValueError, match=r"repeat.*'Cat'"):
    prompts.prompt_token_ids(tokenizer, ["cat", "dog", "Cat"], 4)
  with pytest.raises(ValueError, match="longer than the text tower's 77 tokens"):
    prompts.prompt_token_ids(tokenizer, ["a very long class name " * 4], 8)
  with pytest.raises(ValueError, match="shorter than the longest prompt"):
    prompts.prompt_token_ids(tokenizer, ["cat"], 4, length=5)


def test_context_must_fit_the_sequence(loaded):
  clip, _, tokenizer = loaded
  ids = prompts.tokenize(tokenizer, ["cat."])  # 6 tokens
  with pytest.raises(ValueError, match="do not fit"):
    _encode_prompts(clip, ids, np.zeros((1, 8, 24), np.float32))
