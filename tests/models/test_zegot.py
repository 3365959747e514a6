"""The ZegOT model: class permutation equivariance, any class list, ablation switches, where gradients go."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zegot_jax.models import encoder_checkpoint, prompts, zegot
from zegot_jax.models.losses import segmentation_loss

CLASSES = ["cat", "dog", "potted plant", "sheep", "tv monitor"]
BASE = zegot.ZegOTConfig(dfa_layers=(1, 2, 3), context_length=4, num_prompts=3, decoder_features=8)


@pytest.fixture(scope="module")
def clip(make_checkpoint):
  directory, _ = make_checkpoint()
  return encoder_checkpoint.from_pretrained(directory), prompts.load_tokenizer(directory)


@pytest.fixture(scope="module")
def images():
  return jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 40, 32, 3)), jnp.uint8)


def _build(clip, config=BASE, classes=CLASSES, seed=0, dtype=jnp.float32):
  loaded, tokenizer = clip
  model = zegot.ZegOT(loaded.config, config, dtype=dtype)
  tokens = zegot.class_tokens(tokenizer, classes, config)
  trainable = zegot.init_trainable(model, jax.random.key(seed))
  return model, zegot.merge_params(trainable, loaded.params), tokens


def _trainable(params):
  return {k: v for k, v in params.items() if k != "clip"}


def _run(model, params, images, tokens):
  return jax.jit(model.apply)({"params": params}, images, jnp.asarray(tokens))


def test_output_shapes_and_ensemble(clip, images):
  model, params, tokens = _build(clip)
  out, aux = _run(model, params, images, tokens)
  for y in out:
    assert y.shape == (2, 40, 32, 5) and y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all()
  np.testing.assert_allclose(out.logits, 0.8 * out.score_logits + 0.2 * out.decoder_logits, rtol=1e-5, atol=1e-6)
  assert aux["score_maps"].shape == (3, 2, 5, 4, 5, 3)  # (d, B, h, w, K, N)
  assert aux["transport_plans"].shape == (3, 2, 5, 4, 5, 3)
  assert aux["sinkhorn_iterations"].shape == (3 * 2 * 5,) and int(aux["sinkhorn_iterations"].max()) <= 100


def test_permuting_classes_permutes_every_output(clip, images):
  model, params, tokens = _build(clip)
  perm = np.array([3, 0, 4, 2, 1])
  out, _ = _run(model, params, images, tokens)
  permuted, _ = _run(model, params, images, tokens[perm])
  for a, b in zip(out, permuted):
    np.testing.assert_allclose(np.asarray(a)[..., perm], b, rtol=1e-5, atol=1e-5)


def test_keeping_some_classes_gives_their_logits_unchanged(clip, images):
  """decode(..., keep) (the teacher's unseen classes) upsamples only the kept classes; their logits equal the full
  decode's, although the decoder's normalization sees every class."""
  model, params, tokens = _build(clip)
  keep = (4, 1)

  def decode(images, tokens, keep):
    features = model.apply({"params": params}, images, method="encode_images")
    text = model.apply({"params": params}, tokens, method="encode_classes")
    return model.apply({"params": params}, features, text, keep, method="decode")[0]

  full = jax.jit(lambda im, t: decode(im, t, None))(images, jnp.asarray(tokens))
  kept = jax.jit(lambda im, t: decode(im, t, keep))(images, jnp.asarray(tokens))
  for a, b in zip(full, kept):
    assert b.shape == (2, 40, 32, 2)
    np.testing.assert_allclose(np.asarray(a)[..., list(keep)], b, rtol=1e-6, atol=1e-6)


def test_other_class_lists_need_no_new_parameters(clip, images):
  """A model initialized on 5 classes segments 2 or 7 with the same parameters. A class's score map Y does not
  depend on which other classes are asked for; the decoder's output does, by design: its normalization
  statistics are shared by the classes of an image, so that it can compare their levels (decoder.py)."""
  loaded, tokenizer = clip
  model, params, tokens = _build(clip)
  out, _ = _run(model, params, images, tokens)
  more = CLASSES + ["giraffe", "a very long class name"]
  out_more, _ = _run(model, params, images, zegot.class_tokens(tokenizer, more, BASE))
  out_two, _ = _run(model, params, images, zegot.class_tokens(tokenizer, ["dog", "sheep"], BASE))
  for a, b, c in zip(out, out_more, out_two):
    assert b.shape[-1] == 7 and c.shape[-1] == 2
  a, b, c = out.score_logits, out_more.score_logits, out_two.score_logits
  np.testing.assert_allclose(b[..., :5], a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c, np.asarray(a)[..., [1, 3]], rtol=1e-5, atol=1e-5)
  assert not np.allclose(out_more.decoder_logits[..., :5], out.decoder_logits, atol=1e-4)
  shapes = jax.tree_util.tree_map(jnp.shape, _trainable(params))
  assert jax.tree_util.tree_map(jnp.shape, zegot.abstract_trainable(model)) == shapes


ABLATIONS = {
    "matching=none": dict(matching="none"),
    "matching=bipartite": dict(matching="bipartite"),
    "matching=self_attention": dict(matching="self_attention"),
    "prompts=handcrafted": dict(prompts="handcrafted", templates=("a photo of a {}.", "art of the {}.")),
    "dfa_layers=(2,3)": dict(dfa_layers=(2, 3)),
    "num_prompts=2": dict(num_prompts=2),
    "context_length=2": dict(context_length=2),
    "ensemble_lambda=0.5": dict(ensemble_lambda=0.5),
    "fusion_norm=minmax": dict(fusion_norm="minmax"),
    "dense_features=maskclip": dict(dense_features="maskclip"),
    "ga_init=random": dict(ga_init="random"),
    "score_scale=10": dict(score_scale=10.0),
    "score_scale_at=fusion": dict(score_scale=10.0, score_scale_at="fusion"),
    "score_scale_learnable": dict(score_scale=10.0, score_scale_learnable=True),
}


@pytest.fixture(scope="module")
def default_run(clip, images):
  model, params, tokens = _build(clip)
  return params, _run(model, params, images, tokens)[0]


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_ablation_switch_builds_runs_and_changes_the_output(clip, images, default_run, name):
  params, reference = default_run
  config = dataclasses.replace(BASE, **ABLATIONS[name])
  model_a, params_a, tokens_a = _build(clip, config)
  # Shared parameters are taken from the reference so that only the switch differs.
  trainable_a = _trainable(params_a)
  for key in ("decoder",) if name == "ga_init=random" else ("global_alignment", "decoder"):
    trainable_a[key] = _trainable(params)[key]
  out, _ = _run(model_a, zegot.merge_params(trainable_a, params["clip"]), images, tokens_a)
  assert all(np.isfinite(np.asarray(y)).all() for y in out)
  assert float(jnp.abs(out.logits - reference.logits).max()) > 1e-4, f"{name} did not change the output"


def test_ga_starts_as_the_identity(clip, images):
  """With ga_init="identity" an untrained GA passes the text through (g_GA = g): the untrained model scores
  pixels exactly as with no GA at all, CLIP's own zero-shot alignment. A random Q does not."""
  model, params, tokens = _build(clip)
  _, aux = _run(model, params, images, tokens)
  np.testing.assert_allclose(aux["aligned_text"], np.broadcast_to(aux["text_embeddings"], aux["aligned_text"].shape),
                             rtol=1e-5, atol=1e-6)
  model_off, params_off, _ = _build(clip, dataclasses.replace(BASE, global_alignment=False))
  params_off = dict(params_off, context=params["context"])
  np.testing.assert_allclose(_run(model_off, params_off, images, tokens)[0].score_logits,
                             _run(model, params, images, tokens)[0].score_logits, rtol=1e-5, atol=1e-5)
  model_r, params_r, _ = _build(clip, dataclasses.replace(BASE, ga_init="random"))
  _, aux_r = _run(model_r, params_r, images, tokens)
  assert float(jnp.abs(aux_r["aligned_text"] - aux_r["text_embeddings"][None]).max()) > 0.1


def test_gradients_reach_exactly_the_trainable_parameters(clip, images):
  for config in (BASE, dataclasses.replace(BASE, matching="self_attention")):
    model, params, tokens = _build(clip, config)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 5, (2, 40, 32))).at[:, :8].set(255)

    def loss(p):
      out, _ = model.apply({"params": p}, images, jnp.asarray(tokens))
      return segmentation_loss(out.score_logits, labels).total + segmentation_loss(out.decoder_logits, labels).total

    grads = jax.jit(jax.grad(loss))(params)
    clip_grads = jax.tree_util.tree_leaves(grads["clip"])
    assert clip_grads and all(float(jnp.abs(g).max()) == 0.0 for g in clip_grads)
    trainable = _trainable(grads)
    expected = {"context", "global_alignment", "decoder"} | (
        {"match_query", "match_key"} if config.matching == "self_attention" else set())
    assert set(trainable) == expected
    for path, g in jax.tree_util.tree_leaves_with_path(trainable):
      assert float(jnp.abs(g).max()) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_bfloat16_forward_close_to_float32(clip, images):
  model, params, tokens = _build(clip)
  model16 = zegot.ZegOT(clip[0].config, BASE, dtype=jnp.bfloat16)
  out32, aux32 = _run(model, params, images, tokens)
  out16, aux16 = _run(model16, params, images, tokens)
  assert all(y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all() for y in out16)
  rel = float(jnp.linalg.norm(aux16["score_maps"] - aux32["score_maps"]) / jnp.linalg.norm(aux32["score_maps"]))
  assert 1e-5 < rel < 5e-2


def test_text_embeddings_reused_across_images(clip, images):
  """segment() with text from encode_classes() equals the full call: text can be computed once."""
  model, params, tokens = _build(clip)
  text = model.apply({"params": params}, jnp.asarray(tokens), method="encode_classes")
  assert text.shape == (5, 3, 16)
  np.testing.assert_allclose(jnp.linalg.norm(text, axis=-1), 1.0, rtol=1e-5)
  full, _ = _run(model, params, images, tokens)
  split, _ = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, method="segment"))(params, images, text)
  np.testing.assert_allclose(split.logits, full.logits, rtol=1e-5, atol=1e-5)


def test_bad_configs_are_named():
  with pytest.raises(ValueError, match=r"matching='ot'; expected one of"):
    zegot.ZegOTConfig(matching="ot")
  with pytest.raises(ValueError, match="dfa_layers=.*increasing"):
    zegot.ZegOTConfig(dfa_layers=(12, 8))
  with pytest.raises(ValueError, match=r"ensemble_lambda=1.5"):
    zegot.ZegOTConfig(ensemble_lambda=1.5)
  with pytest.raises(ValueError, match=r"ga_init='zeros'; expected one of"):
    zegot.ZegOTConfig(ga_init="zeros")
  with pytest.raises(ValueError, match="needs a '{}'"):
    zegot.ZegOTConfig(prompts="handcrafted", templates=("a photo",))


def test_dfa_layers_beyond_the_tower_are_named(clip, images):
  with pytest.raises(ValueError, match=r"reach past the image tower's 3 layers"):
    _build(clip, dataclasses.replace(BASE, dfa_layers=(3, 4)))


def test_fusion_is_eq8_with_geometric_mean_of_sigmoids():
  rng = np.random.default_rng(2)
  refined = rng.normal(0, 2, (4, 2, 3, 3, 2, 3)).astype(np.float32)  # (d=4, B, h, w, K, N)
  sig = 1 / (1 + np.exp(-refined[:-1].astype(np.float64)))
  expected = refined[-1] * np.prod(sig, axis=0) ** (1 / 3)  # S*_L · Π_{i<L} σ(S*_i)^(1/(d−1))
  np.testing.assert_allclose(zegot.fuse_score_maps(jnp.asarray(refined)), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(zegot.fuse_score_maps(jnp.asarray(refined[:1])), refined[0])  # d = 1: S*_L
  lo = refined[:-1].min(axis=(2, 3), keepdims=True)
  hi = refined[:-1].max(axis=(2, 3), keepdims=True)
  minmax = np.clip((refined[:-1] - lo) / (hi - lo), 1e-6, 1)
  np.testing.assert_allclose(zegot.fuse_score_maps(jnp.asarray(refined), "minmax"),
                             refined[-1] * np.prod(minmax.astype(np.float64), axis=0) ** (1 / 3), rtol=1e-4,
                             atol=1e-6)


@pytest.mark.parametrize("overrides", [{}, dict(prompts="handcrafted"), dict(matching="self_attention"),
                                       dict(global_alignment=False)])
def test_trainable_init_equals_the_trainable_part_of_a_full_init(clip, overrides):
  """init_trainable never initializes the CLIP, yet gives bit for bit the values a full model.init gives the
  trainable parameters (flax keys each parameter by its module path); abstract_trainable has their shapes."""
  loaded, tokenizer = clip
  model = zegot.ZegOT(loaded.config, dataclasses.replace(BASE, **overrides))
  tokens = zegot.class_tokens(tokenizer, CLASSES, model.config)
  size = 2 * loaded.config.vision.patch_size
  full = jax.jit(lambda key: _trainable(model.init(key, jnp.zeros((1, size, size, 3), jnp.uint8),
                                                  jnp.asarray(tokens))["params"]))(jax.random.key(7))
  trainable = zegot.init_trainable(model, jax.random.key(7))
  assert jax.tree_util.tree_structure(trainable) == jax.tree_util.tree_structure(full)
  jax.tree_util.tree_map(np.testing.assert_array_equal, trainable, full)
  assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), zegot.abstract_trainable(model)) == \
      jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), full)


def test_score_scale_multiplies_y_or_the_refined_maps(clip, images):
  """score_scale_at="logits": Y = τ·U(Σ_N S*) (eq. 9) with everything else unchanged; "fusion": eq. 8 fuses
  τ·S*_i, so S* = τS*_L · Π σ(τS*_i)^(1/(d−1)), recomputed here from the refined maps by hand."""
  model, params, tokens = _build(clip)
  out1, aux1 = _run(model, params, images, tokens)
  scaled = dataclasses.replace(BASE, score_scale=7.5)
  out, aux = _run(zegot.ZegOT(clip[0].config, scaled), params, images, tokens)
  np.testing.assert_allclose(out.score_logits, 7.5 * np.asarray(out1.score_logits), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.decoder_logits, out1.decoder_logits, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out.logits, 0.8 * out.score_logits + 0.2 * out.decoder_logits, rtol=1e-5, atol=1e-5)

  at_fusion = dataclasses.replace(scaled, score_scale_at="fusion")
  _, aux_f = _run(zegot.ZegOT(clip[0].config, at_fusion), params, images, tokens)
  refined = 7.5 * np.asarray(aux1["refined_maps"], np.float64)  # the refined maps do not depend on τ
  np.testing.assert_allclose(aux_f["refined_maps"], aux1["refined_maps"], rtol=1e-6, atol=1e-6)
  expected = refined[-1] * np.prod(1 / (1 + np.exp(-refined[:-1])), axis=0) ** (1 / 2)
  np.testing.assert_allclose(aux_f["fused_map"], expected, rtol=1e-4, atol=1e-5)


def test_learnable_score_scale_starts_at_its_value_and_gets_the_right_gradient(clip, images):
  """With score_scale_learnable, log τ is a trainable parameter started at log(score_scale); its gradient equals a
  central finite difference of the loss on Y."""
  config = dataclasses.replace(BASE, score_scale=10.0, score_scale_learnable=True)
  model, params, tokens = _build(clip, config)
  np.testing.assert_allclose(params["log_score_scale"], np.log(10.0), rtol=1e-6)
  labels = jnp.asarray(np.random.default_rng(3).integers(0, 5, (2, 40, 32)))

  def loss(log_tau):
    out, _ = model.apply({"params": dict(params, log_score_scale=log_tau)}, images, jnp.asarray(tokens))
    return segmentation_loss(out.score_logits, labels).total

  loss = jax.jit(loss)
  grad = float(jax.grad(loss)(params["log_score_scale"]))
  h = 1e-2
  fd = (float(loss(params["log_score_scale"] + h)) - float(loss(params["log_score_scale"] - h))) / (2 * h)
  assert abs(grad) > 1e-4
  np.testing.assert_allclose(grad, fd, rtol=2e-2)
  with pytest.raises(ValueError, match=r"score_scale=0.0"):
    zegot.ZegOTConfig(score_scale=0.0)
  with pytest.raises(ValueError, match=r"score_scale_at='before'; expected one of"):
    zegot.ZegOTConfig(score_scale_at="before")
