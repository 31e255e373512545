"""optax_sai: SGD-SaI (learning-rate Scaling at Initialization) for Optax.

Reference: Xu et al., "No More Adam: Learning Rate Scaling at Initialization
is All You Need", arXiv:2412.11768, 2024.
"""

from optax_sai._alias import scale_by_sai, sgd_sai
from optax_sai._gsnr import gsnr, resolve_block_axes
from optax_sai._sharding import init_sharded, state_shardings
from optax_sai._state_format import STATE_FORMAT_VERSION, migrate_state, state_format
from optax_sai._transforms import (
    SaiMomentumState,
    ScaleByGsnrState,
    find_gsnr_state,
    gsnr_scales,
    sai_momentum,
    scale_by_gsnr,
)

__version__ = "0.2.0"

__all__ = [
    "STATE_FORMAT_VERSION",
    "SaiMomentumState",
    "ScaleByGsnrState",
    "find_gsnr_state",
    "gsnr",
    "gsnr_scales",
    "init_sharded",
    "migrate_state",
    "resolve_block_axes",
    "sai_momentum",
    "scale_by_gsnr",
    "scale_by_sai",
    "sgd_sai",
    "state_format",
    "state_shardings",
]
