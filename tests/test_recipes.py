"""The trainer recipes of docs/guides/recipes.md, run from the page's own code blocks.

big_vision, Levanter and MaxText are not dependencies of this project (big_vision and
MaxText are not on PyPI; Levanter pulls in Ray, Transformers, Datasets and more), so each
recipe was checked by hand against the real trainer, at the commit the page names. These
tests keep the page's code true to what those checks found, against stand-ins for the one
hook each trainer offers:

- big_vision: its `big_vision/optax.py` creates the `optax.big_vision` namespace when
  imported, so a registration made before that import is lost. The stand-in module does the
  same; the page's block must register after it.
- Levanter: `OptimizerConfig` is a frozen dataclass. The page's config must subclass a
  frozen base, register under its name, and build an optimizer whose stacked leaves get
  one g-SNR per layer (checked against NumPy).
- MaxText: the page's `elif` branch must assign `base_opt` (MaxText wraps it afterwards),
  read only settings the page's schema block declares or MaxText already has, and map them
  onto `sgd_sai` (weight decay, its mask, momentum dtype, per-layer blocks).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import operator
import re
import sys
import textwrap
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sai

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "recipes.md"
BLOCKS = re.findall(r"^```(\S*)\n(.*?)^```", PAGE.read_text(), re.S | re.M)


def page_block(lang: str, needle: str) -> str:
  """The one fenced block of the page in `lang` that contains `needle`."""
  found = [body for kind, body in BLOCKS if kind == lang and needle in body]
  assert len(found) == 1, f"{len(found)} {lang} blocks contain {needle!r}"
  return found[0]


def numpy_gsnr(g: np.ndarray) -> float:
  g = np.asarray(g, np.float64).ravel()
  return float(np.linalg.norm(g) / (np.std(g, ddof=1) + 1e-8))


def test_every_trainer_section_records_its_check():
  text = PAGE.read_text()
  for trainer in ("big_vision", "Levanter", "MaxText"):
    note = re.search(rf":::{{admonition}} Checked against {trainer} (\S+)", text)
    assert note, trainer
    assert re.fullmatch(r"[0-9a-f]{7,40}", note.group(1)), note.group(1)
  assert not re.search(r"@[A-Z_]+@", text)


# --- big_vision ---------------------------------------------------------------------------


@pytest.fixture
def big_vision_stand_in(tmp_path, monkeypatch):
  """A `big_vision.optax` that, like the real one, creates `optax.big_vision` on import."""
  package = tmp_path / "big_vision"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "optax.py").write_text('import optax\noptax.big_vision = type("", (), {})()\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  for name in ("big_vision", "big_vision.optax"):
    monkeypatch.delitem(sys.modules, name, raising=False)
  assert not hasattr(optax, "big_vision")
  yield
  for name in ("big_vision", "big_vision.optax"):
    sys.modules.pop(name, None)
  if hasattr(optax, "big_vision"):
    del optax.big_vision


def test_big_vision_registration_survives_big_visions_import(big_vision_stand_in):
  exec(page_block("python", "optax.big_vision.scale_by_sai ="), {})
  importlib.import_module("big_vision.optax")  # the trainer imports it again: a no-op
  assert optax.big_vision.scale_by_sai is optax_sai.scale_by_sai


def test_big_vision_registration_made_first_would_be_lost(big_vision_stand_in):
  # What the page warns against, so that the stand-in is known to catch it.
  with pytest.raises(AttributeError, match="big_vision"):
    optax.big_vision.scale_by_sai = optax_sai.scale_by_sai
  optax.big_vision = types.SimpleNamespace(scale_by_sai=optax_sai.scale_by_sai)
  importlib.import_module("big_vision.optax")
  assert not hasattr(optax.big_vision, "scale_by_sai")


def test_big_vision_config_names_the_registered_transform(big_vision_stand_in):
  exec(page_block("python", "optax.big_vision.scale_by_sai ="), {})
  config = types.SimpleNamespace()
  exec(page_block("python", "config.optax_name"), {"config": config})
  tx_func = operator.attrgetter(config.optax_name)(optax)  # as big_vision.optax.make does
  assert tx_func is optax_sai.scale_by_sai
  tx_func(**config.optax).init({"kernel": jnp.ones((2, 2))})
  # The block carries the vit-s16 example's SGD-SaI settings, with "config.wd = config.lr * λ".
  from examples.vit import configs as vit_configs

  vit = vit_configs.get_config("vit-s16")
  lr, wd = vit.learning_rates["sgd_sai"], vit.weight_decays["sgd_sai"]
  assert config.lr == pytest.approx(lr)
  assert config.wd == pytest.approx(lr * wd)


# --- Levanter -------------------------------------------------------------------------------


def _levanter_stand_in():
  """`levanter.optim` with a frozen `OptimizerConfig` and its three hooks the recipe uses."""
  registry = {}

  @dataclasses.dataclass(frozen=True)
  class OptimizerConfig:
    learning_rate: float = 6e-4
    weight_decay: float = 0.1
    warmup: float = 0.0
    min_lr_ratio: float = 0.0

    @classmethod
    def register_subclass(cls, name):
      def register(subclass):
        registry[name] = subclass
        return subclass
      return register

    def lr_scheduler(self, num_train_steps):
      return optax.cosine_decay_schedule(self.learning_rate, num_train_steps, self.min_lr_ratio)

    def build_weight_decay_mask(self):
      return lambda params: jax.tree_util.tree_map_with_path(
          lambda path, _: getattr(path[-1], "key", None) != "bias", params)

  optim = types.ModuleType("levanter.optim")
  optim.OptimizerConfig = OptimizerConfig
  levanter = types.ModuleType("levanter")
  levanter.optim = optim
  return levanter, optim, registry


@pytest.fixture
def levanter_recipe(tmp_path, monkeypatch):
  levanter, optim, registry = _levanter_stand_in()
  monkeypatch.setitem(sys.modules, "levanter", levanter)
  monkeypatch.setitem(sys.modules, "levanter.optim", optim)
  (tmp_path / "sgd_sai_levanter_recipe.py").write_text(page_block("python", "register_subclass"))
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "sgd_sai_levanter_recipe", raising=False)
  module = importlib.import_module("sgd_sai_levanter_recipe")
  yield module, registry
  sys.modules.pop("sgd_sai_levanter_recipe", None)


def test_levanter_config_is_frozen_and_registered(levanter_recipe):
  module, registry = levanter_recipe
  assert registry == {"sgd_sai": module.SgdSaiConfig}
  config = module.SgdSaiConfig()
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.momentum = 0.5  # type: ignore[misc]
  fields = {f.name for f in dataclasses.fields(module.SgdSaiConfig)}
  yaml_keys = set(re.findall(r"^  (\w+):", page_block("yaml", "type: sgd_sai"), re.M)) - {"type"}
  assert yaml_keys <= fields
  assert {"momentum", "normalize", "max_grad_norm", "split_stacked_layers"} <= fields


@dataclasses.dataclass
class _Stacked:  # a module whose arrays carry the layers on axis 0, as Haliax's `Stacked`
  stacked: dict


@dataclasses.dataclass
class _Model:
  embedding: jax.Array
  blocks: _Stacked


jax.tree_util.register_dataclass(_Stacked, data_fields=["stacked"], meta_fields=[])
jax.tree_util.register_dataclass(_Model, data_fields=["embedding", "blocks"], meta_fields=[])


def test_levanter_build_gives_one_block_per_stacked_layer(levanter_recipe):
  module, _ = levanter_recipe
  layers = 3
  stacked = {"weight": jnp.ones((layers, 4, 4)), "bias": jnp.ones((layers, 4))}
  model = _Model(embedding=jnp.ones((10, 4)), blocks=_Stacked(stacked))
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.3, 1.0, x.shape), jnp.float32), model)
  tx = module.SgdSaiConfig(learning_rate=0.1, weight_decay=0.0, max_grad_norm=None).build(10)
  state = tx.init(model)
  _, state = tx.update(grads, state, model)
  captured = optax_sai.find_gsnr_state(state).gsnr
  for name in ("weight", "bias"):
    got = np.asarray(captured.blocks.stacked[name])
    want = [numpy_gsnr(layer) for layer in np.asarray(grads.blocks.stacked[name])]
    np.testing.assert_allclose(got, want, rtol=1e-5)
  assert np.shape(captured.embedding) == ()
  np.testing.assert_allclose(captured.embedding, numpy_gsnr(grads.embedding), rtol=1e-5)
  unsplit = module.SgdSaiConfig(split_stacked_layers=False, max_grad_norm=None).build(10)
  _, unsplit_state = unsplit.update(grads, unsplit.init(model), model)
  assert np.shape(optax_sai.find_gsnr_state(unsplit_state).gsnr.blocks.stacked["weight"]) == ()


def test_levanter_build_decays_by_the_scheduled_learning_rate_only(levanter_recipe):
  module, _ = levanter_recipe
  params = {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full(3, 2.0)}
  config = module.SgdSaiConfig(learning_rate=0.1, weight_decay=0.5, min_lr_ratio=0.0)
  tx = config.build(4)
  state = tx.init(params)
  schedule = config.lr_scheduler(4)
  expected_kernel = 2.0
  for step in range(3):  # zero gradients: p_t = p_{t-1} * (1 - lr_t * wd), biases unmasked
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    params = optax.apply_updates(params, updates)
    expected_kernel *= 1 - float(schedule(step)) * 0.5
  np.testing.assert_allclose(params["kernel"], expected_kernel, rtol=1e-6)
  np.testing.assert_array_equal(params["bias"], 2.0)


# --- MaxText --------------------------------------------------------------------------------


def _maxtext_branch() -> str:
  return page_block("python", 'elif config.opt_type == "sgd_sai"')


def test_maxtext_branch_assigns_base_opt_and_does_not_return():
  tree = ast.parse("if False:\n  pass\n" + textwrap.dedent(_maxtext_branch()))
  branch = tree.body[0].orelse
  assert len(branch) == 1 and isinstance(branch[0], ast.If)
  body = branch[0].body
  assigned = {t.id for node in body if isinstance(node, ast.Assign) for t in node.targets}
  assert assigned == {"base_opt"}
  assert not any(isinstance(node, ast.Return) for node in ast.walk(branch[0]))


def test_maxtext_branch_reads_only_declared_settings():
  schema = page_block("python", "class SgdSai(BaseModel)")
  declared = set(re.findall(r"^  (\w+): ", schema, re.M))
  yaml_keys = set(re.findall(r"^(\w+):", page_block("yaml", "sai_momentum"), re.M))
  assert yaml_keys == declared == {"sai_momentum", "sai_weight_decay", "sai_normalize"}
  assert 'SGD_SAI = "sgd_sai"' in page_block("python", "class OptimizerType")
  helper = page_block("{testcode}", "def sai_block_axes")
  read = set(re.findall(r"config\.(\w+)", _maxtext_branch() + helper))
  maxtext_own = {"opt_type", "mu_dtype", "scan_layers", "param_scan_axis"}
  assert read <= declared | maxtext_own, read - declared - maxtext_own


def test_maxtext_branch_maps_the_settings_onto_sgd_sai():
  namespace = {"optax_sai": optax_sai}
  exec(page_block("{testcode}", "def sai_block_axes").split("\nconfig = ")[0], namespace)
  layers, lr, wd = 3, 0.1, 0.5
  config = types.SimpleNamespace(
      opt_type="sgd_sai", sai_momentum=0.8, sai_weight_decay=wd, sai_normalize=True,
      mu_dtype="bfloat16", scan_layers=True, param_scan_axis=1)

  def get_adamw_mask(config):  # MaxText's: True where the path matches none of adamw_mask
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "norm" not in jax.tree_util.keystr(path), params)

  namespace.update(config=config, learning_rate_schedule=optax.constant_schedule(lr),
                   get_adamw_mask=get_adamw_mask)
  exec("if False:\n  pass\n" + textwrap.dedent(_maxtext_branch()), namespace)
  base_opt = namespace["base_opt"]

  params = {"decoder": {"layers": {"wi": jnp.ones((4, layers, 5)), "norm": jnp.ones((4, layers))},
                        "decoder_norm": jnp.ones(4)},
            "token_embedder": jnp.ones((7, 4))}
  state = base_opt.init(params)
  momenta = [x for x in jax.tree.leaves(state) if np.shape(x) == (4, layers, 5)]
  assert momenta and all(x.dtype == jnp.bfloat16 for x in momenta)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(2):  # zero gradients: decayed leaves shrink by (1 - lr * wd) a step
    updates, state = base_opt.update(zeros, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params["decoder"]["layers"]["wi"], (1 - lr * wd) ** 2, rtol=1e-6)
  np.testing.assert_allclose(params["token_embedder"], (1 - lr * wd) ** 2, rtol=1e-6)
  np.testing.assert_array_equal(params["decoder"]["layers"]["norm"], 1.0)
  np.testing.assert_array_equal(params["decoder"]["decoder_norm"], 1.0)

  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.2, 1.0, x.shape), jnp.float32), params)
  state = base_opt.init(params)
  _, state = base_opt.update(grads, state, params)
  captured = optax_sai.find_gsnr_state(state).gsnr
  wi = np.asarray(grads["decoder"]["layers"]["wi"])
  want = [numpy_gsnr(wi[:, i, :]) for i in range(layers)]  # slices along param_scan_axis=1
  np.testing.assert_allclose(captured["decoder"]["layers"]["wi"], want, rtol=1e-5)
  assert np.shape(captured["token_embedder"]) == ()
