"""examples/common: schedule, decay mask, optimizer factory, mesh parsing, metrics files."""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_sai
from examples.common import cli, layers, metrics, optim, training
from examples.common import config as config_lib
from examples.common import mesh as mesh_lib
from examples.common.config import OPTIMIZERS


def test_warmup_cosine_shape():
  sched = optim.warmup_cosine(1.0, warmup_steps=10, decay_steps=110, min_ratio=0.1)
  np.testing.assert_allclose(sched(0), 0.1, rtol=1e-6)  # (0 + 1) / 10
  np.testing.assert_allclose(sched(9), 1.0, rtol=1e-6)
  np.testing.assert_allclose(sched(10), 1.0, rtol=1e-6)  # cosine starts at the peak
  np.testing.assert_allclose(sched(60), 0.55, rtol=1e-5)  # halfway: (1 + 0.1) / 2
  np.testing.assert_allclose(sched(110), 0.1, rtol=1e-6)
  np.testing.assert_allclose(sched(500), 0.1, rtol=1e-6)
  no_warmup = optim.warmup_cosine(2.0, warmup_steps=0, decay_steps=10)
  np.testing.assert_allclose(no_warmup(0), 2.0, rtol=1e-6)


class _Tiny(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(10, 4, rngs=rngs)
    self.dense = nnx.Linear(4, 4, rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)
    self.pos_embed = nnx.Param(jnp.zeros((3, 4)))


def test_decay_mask_exempts_biases_norms_embeddings():
  params = nnx.state(_Tiny(nnx.Rngs(0)), nnx.Param)
  mask = {optim.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(
      optim.decay_mask(params))[0]}
  assert mask == {
      "dense/bias": False, "dense/kernel": True, "embed/embedding": False,
      "norm/bias": False, "norm/scale": False, "pos_embed": False,
  }


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_updates_and_decay_skips_exempt_leaves(name):
  params = nnx.state(_Tiny(nnx.Rngs(0)), nnx.Param)
  zeros = jax.tree.map(jnp.zeros_like, params)
  if name == "prodigy":  # optax's prodigy cannot spare leaves from its weight decay
    with pytest.raises(ValueError, match="every leaf"):
      optim.make_optimizer(name, 0.1, weight_decay=0.5)
    return
  tx = optim.make_optimizer(name, 0.1, weight_decay=0.5, clip_norm=1.0, params=params)
  state = tx.init(params)
  # A zero gradient: any change comes from weight decay, which must spare non-kernels.
  updates, state = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  flat_old = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, value in jax.tree_util.tree_flatten_with_path(new)[0]:
    if optim.path_str(path) != "dense/kernel":
      np.testing.assert_array_equal(value, flat_old[path], err_msg=optim.path_str(path))
  if name != "adafactor":  # adafactor decays relative to its (zero) update
    assert not np.allclose(new["dense"]["kernel"][...], params["dense"]["kernel"][...])


def test_sgd_sai_factory_reports_gsnr_by_path():
  params = nnx.state(_Tiny(nnx.Rngs(0)), nnx.Param)
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
  tx = optim.make_optimizer("sgd_sai", 0.1, 0.0, clip_norm=1.0)
  _, state = tx.update(grads, tx.init(params), params)
  table = optim.gsnr_table(state)
  assert set(table) == {"dense/bias", "dense/kernel", "embed/embedding", "norm/bias",
                        "norm/scale", "pos_embed"}
  assert max(table.values()) == pytest.approx(1.0)
  # The largest block (the 10x4 embedding) has the largest g-SNR, ~sqrt(39).
  assert table["embed/embedding"] == pytest.approx(1.0)
  snr = optax_sai.gsnr(grads)
  assert table["dense/kernel"] == pytest.approx(
      float(snr["dense"]["kernel"][...] / snr["embed"]["embedding"][...]), rel=1e-5)


def test_parse_mesh():
  assert mesh_lib.parse_mesh(None, 8) == {"data": 8, "fsdp": 1}
  assert mesh_lib.parse_mesh("data=2,fsdp=4", 8) == {"data": 2, "fsdp": 4}
  assert mesh_lib.parse_mesh("fsdp=4", 8) == {"data": 2, "fsdp": 4}  # data takes the rest
  assert mesh_lib.parse_mesh("data=1,fsdp=8", 8) == {"data": 1, "fsdp": 8}
  assert mesh_lib.parse_mesh("data=-1,fsdp=2", 8) == {"data": 4, "fsdp": 2}
  with pytest.raises(ValueError):
    mesh_lib.parse_mesh("data=3", 8)
  with pytest.raises(ValueError):
    mesh_lib.parse_mesh("model=2", 2)


def test_fsdp_spec_picks_largest_divisible_dim():
  P = jax.sharding.PartitionSpec
  assert mesh_lib.fsdp_spec((768, 3072), 4) == P(None, "fsdp")
  assert mesh_lib.fsdp_spec((50257, 768), 4) == P(None, "fsdp")  # 50257 is odd
  assert mesh_lib.fsdp_spec((3,), 4) == P()
  assert mesh_lib.fsdp_spec((), 4) == P()
  assert mesh_lib.fsdp_spec((768, 3072), 1) == P()


def test_metrics_writer_truncates_on_resume(tmp_path):
  w = metrics.MetricsWriter(tmp_path)
  for step in (5, 10, 15):
    w.write({"step": step, "train_loss": 1.0 / step, "lr": 0.1})
  w = metrics.MetricsWriter(tmp_path, resume_step=10)
  w.write({"step": 15, "train_loss": 2.0, "lr": 0.1, "val_loss": float("nan")})
  records = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in records] == [5, 10, 15]
  assert records[-1]["train_loss"] == 2.0 and records[-1]["val_loss"] is None
  path = metrics.plot_curves(tmp_path, title="t")
  assert path.stat().st_size > 1000


# --- one override path: config.apply_overrides, cli.build_parser, training.main ----------


def test_apply_overrides_parses_by_field_type():
  from examples.gpt2.configs import get_config

  base = get_config("tiny")
  cfg = config_lib.apply_overrides(base, [
      "steps=50", "learning_rate=3e-3", "clip_norm=none", "scan_layers=true",
      "dataset=mytext", "vocab_size=null", "warmup-steps=1e1", ("batch_size", "4"),
  ])
  assert (cfg.steps, cfg.learning_rate, cfg.clip_norm, cfg.scan_layers) == (50, 0.003, None, True)
  assert (cfg.dataset, cfg.vocab_size, cfg.warmup_steps, cfg.batch_size) == ("mytext", None, 10, 4)
  assert type(cfg.steps) is int and type(cfg.learning_rate) is float
  # Later assignments win; untouched fields keep the named config's values.
  assert config_lib.apply_overrides(base, ["steps=5", "steps=7"]).steps == 7
  assert cfg.n_embd == base.n_embd and base.steps == 200


@pytest.mark.parametrize("assignment, message", [
    ("learning_rat=1e-3", "did you mean learning_rate"),
    ("steps=1.5", "expected an int"),
    ("steps=many", "expected an int"),
    ("learning_rate=fast", "cannot read 'fast'"),
    ("momentum=none", "expected a float"),  # not optional
    ("scan_layers=maybe", "expected a bool"),
    ("steps", "key=value"),
    ("learning_rates=0.1", "learning_rates.<key>"),
    ("learning_rates.adamx=0.1", "did you mean adam, adamw"),
    ("steps.x=1", "not a table"),
])
def test_apply_overrides_rejects_unknown_keys_and_bad_values(assignment, message):
  from examples.gpt2.configs import get_config

  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.apply_overrides(get_config("tiny"), [assignment])


def test_per_optimizer_defaults_are_config_data():
  from examples.vit.configs import get_config

  cfg = get_config("tiny")
  assert cfg.resolved("adamw").learning_rate == cfg.learning_rates["adamw"]
  assert cfg.resolved("adamw").weight_decay == cfg.weight_decays["adamw"]
  new = config_lib.apply_overrides(cfg, ["learning_rates.adamw=0.02", "weight_decays.sgdm=0.5"])
  assert new.resolved("adamw").learning_rate == 0.02
  assert new.resolved("sgdm").weight_decay == 0.5
  assert cfg.learning_rates["adamw"] != 0.02  # the original is untouched (frozen)
  # An explicit learning_rate beats the table; plain dicts are accepted and frozen.
  assert config_lib.apply_overrides(new, ["learning_rate=1"]).resolved("adamw").learning_rate == 1
  d = dataclasses.replace(cfg, learning_rates={"sgd_sai": 7.0})
  assert d.resolved("sgd_sai").learning_rate == 7.0 and hash(d)
  assert d.resolved("lion").learning_rate == 1e-3  # no entry: the documented fallback


@pytest.mark.parametrize("example", ["gpt2", "vit"])
def test_every_scalar_field_is_a_flag(example):
  import typing

  configs = importlib.import_module(f"examples.{example}.configs")
  cls = type(configs.get_config("tiny"))
  parser = cli.build_parser("t", configs.CONFIGS, cls)
  for name, tp in config_lib.field_types(cls).items():
    if name in ("name", "optimizer") or typing.get_origin(tp) is collections.abc.Mapping:
      continue
    flag = "--" + name.replace("_", "-")
    value = {bool: None, int: "3", float: "0.5", str: "x"}.get(tp, "none")
    argv = [flag] if value is None else [flag, value]
    args = parser.parse_args(argv)
    assert args.overrides == [(name, "true" if value is None else value)], name


def test_documented_flags_are_aliases_of_the_generic_path():
  from examples.gpt2 import configs

  parser = cli.build_parser("t", configs.CONFIGS, configs.GPTConfig)
  argv = ["--config", "tiny", "--optimizer", "adamw", "--steps", "6", "--lr", "1e-3",
          "--wd", "0.05", "--warmup-steps", "2", "--seed", "1", "--clip-norm", "0",
          "--no-bias", "--set", "n_layer=2", "learning_rates.sgdm=0.25", "--batch-size", "4",
          "--data-dir", "d", "--workdir", "w", "--resume", "--mesh", "data=1", "--no-progress"]
  args = parser.parse_args(argv)
  cfg = cli.config_from_args(args, configs.get_config, parser)
  expected = config_lib.apply_overrides(configs.get_config("tiny"), [
      "steps=6", "learning_rate=1e-3", "weight_decay=0.05", "warmup_steps=2", "seed=1",
      "clip_norm=0", "bias=false", "n_layer=2", "learning_rates.sgdm=0.25", "batch_size=4",
      "data_dir=d"])
  assert cfg == expected
  assert (args.optimizer, args.workdir, args.resume, args.mesh, args.progress) == (
      "adamw", "w", True, "data=1", False)
  # A bad value or an unknown key is a usage error that names the field.
  for bad in (["--set", "n_layers=2"], ["--steps", "ten"]):
    with pytest.raises(SystemExit):
      cli.config_from_args(parser.parse_args(bad), configs.get_config, parser)


def test_main_hands_the_overridden_config_to_train(capsys):
  from examples.vit import configs

  calls = []

  def fake_train(config, optimizer, workdir, **kwargs):
    calls.append((config, optimizer, workdir, kwargs))
    return {"val_loss": 1.5, "params": object()}

  out = training.main(["--optimizer", "sgdm", "--steps", "4", "--set", "dataset=digits",
                       "--stop-after", "2", "--extra", "7"],
                      description="t", configs=configs.CONFIGS, get_config=configs.get_config,
                      train_fn=fake_train,
                      extra_flags=lambda p: p.add_argument("--extra", type=int))
  (config, optimizer, workdir, kwargs), = calls
  assert config == dataclasses.replace(configs.get_config("tiny"), steps=4, dataset="digits")
  assert (optimizer, workdir) == ("sgdm", None)
  assert kwargs == {"resume": False, "resume_step": None, "mesh": None, "stop_after": 2,
                    "progress": None, "extra": 7}
  assert out["val_loss"] == 1.5 and json.loads(capsys.readouterr().out) == {"val_loss": 1.5}


def test_dropout_keeps_the_expectation():
  x = jnp.ones((200, 500))
  assert layers.dropout(x, 0.3, None) is x and layers.dropout(x, 0.0, jax.random.key(0)) is x
  y = np.asarray(layers.dropout(x, 0.3, jax.random.key(0)))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.7], rtol=1e-6)
  assert abs((y == 0).mean() - 0.3) < 0.01  # 1e5 Bernoulli draws: sd 0.0015
  assert abs(y.mean() - 1.0) < 0.02


# --- the command line refuses bad runs before writing anything ----------------------------


@pytest.mark.parametrize("argv, flag, reason", [
    (["--lr", "-1"], "--learning-rate/--lr", "must be > 0 (got -1.0)"),
    (["--steps", "0"], "--steps", "must be >= 1 (got 0)"),
    (["--steps", "-5"], "--steps", "must be >= 1 (got -5)"),
    (["--set", "momentum=1.5"], "--momentum", "must be in [0, 1) (got 1.5)"),
    (["--wd", "-0.01"], "--weight-decay/--wd", "must be >= 0 (got -0.01)"),
    (["--warmup", "-1"], "--warmup-steps/--warmup", "must be >= 0 (got -1)"),
    (["--clip-norm", "-1"], "--clip-norm", "must be >= 0 (got -1.0)"),
    (["--lr", "nan"], "--learning-rate/--lr", "must be a finite number (got nan)"),
    (["--set", "learning_rates.adamw=-3"], "--set learning_rates.adamw", "must be > 0"),
    (["--min-lr-ratio", "2"], "--min-lr-ratio", "must be in [0, 1] (got 2.0)"),
    (["--batch-size", "0"], "--batch-size", "must be >= 1 (got 0)"),
    (["--n-embd", "30"], "--n-embd", "must be a multiple of n_head (4) (got 30)"),
    (["--dropout", "1"], "--dropout", "must be in [0, 1) (got 1.0)"),
    (["--stop-after", "0"], "--stop-after", "must be >= 1 (got 0)"),
    (["--resume-step", "5"], "--resume-step", "needs --resume"),
    (["--mesh", "data=3"], "--mesh", "needs 3 devices"),
])
def test_bad_values_exit_2_naming_the_flag_before_writing(argv, flag, reason, tmp_path, capsys):
  from examples.gpt2 import train

  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) as exit_info:
    train.main(["--config", "tiny", "--workdir", str(workdir), *argv])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0].startswith("usage: python -m examples.gpt2.train ") and len(err) == 2
  prefix = "python -m examples.gpt2.train: error: "
  assert err[1].startswith((prefix + flag, f"{prefix}argument {flag}")), err[1]
  assert reason in err[1]
  assert not workdir.exists()


def test_python_configs_check_their_values_too():
  from examples.lora.configs import get_config as lora_config
  from examples.vit.configs import get_config as vit_config

  with pytest.raises(config_lib.ConfigError, match="steps: must be >= 1") as e:
    dataclasses.replace(vit_config("tiny"), steps=0)
  assert e.value.field == "steps"
  with pytest.raises(config_lib.ConfigError, match="image_size: must be a multiple of patch"):
    dataclasses.replace(vit_config("tiny"), image_size=18)
  with pytest.raises(config_lib.ConfigError, match="rank: must be >= 0"):
    dataclasses.replace(lora_config("tiny"), rank=-1)
  # The boundaries themselves are fine.
  dataclasses.replace(lora_config("tiny"), rank=0, momentum=0.0, weight_decay=0.0,
                      warmup_steps=0, clip_norm=None, min_lr_ratio=1.0)


def test_summary_is_strict_json_with_full_precision():
  line = cli.summary({"val_loss": 1 / 3, "tokens_per_s": float("nan"), "rate": None,
                      "step": 7, "params": object()})
  assert "\n" not in line

  def no_constants(name):
    raise AssertionError(f"{name} is not JSON")

  assert json.loads(line, parse_constant=no_constants) == {
      "val_loss": 1 / 3, "tokens_per_s": None, "rate": None, "step": 7}


def test_tree_nbytes_counts_shapes_and_dtypes():
  tree = {"a": jnp.zeros((3, 4), jnp.float32), "b": jax.ShapeDtypeStruct((5,), jnp.bfloat16),
          "c": np.zeros((2,), np.int8)}
  assert training.tree_nbytes(tree) == 3 * 4 * 4 + 5 * 2 + 2


def test_the_command_line_accepts_every_optimizer_the_studies_run():
  from benchmarks.study.specs import SPECS
  from examples.common import cli
  from examples.gpt2 import configs

  parser = cli.build_parser("gpt2", configs.CONFIGS, configs.GPTConfig)
  # Every optimizer of the table a study runs, directly or as an arm (LoRA's full_adamw is
  # adamw with rank 0).
  for key in sorted({spec.arm(k).optimizer for spec in SPECS.values() for k in spec.optimizers}):
    assert parser.parse_args(["--optimizer", key]).optimizer == key
  with pytest.raises(SystemExit):
    parser.parse_args(["--optimizer", "not_an_optimizer"])
