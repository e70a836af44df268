"""profile: parameter and multiply-add counts against the published figures, and the
depthwise-separable arithmetic on hand-made layers."""

from __future__ import annotations

import json

import pytest
from torch import nn
from typer.testing import CliRunner

from mobiletune.config.schema import ARCHS
from mobiletune.model.profile import (
    PUBLISHED,
    measure_latency,
    profile_arch,
    profile_model,
)


@pytest.mark.parametrize("arch", ARCHS)
def test_totals_match_published_figures(arch):
    prof = profile_arch(arch, 224)
    params, macs = PUBLISHED[arch]
    assert abs(prof["params"] - params) / params <= 0.03, prof["params"]
    assert abs(prof["macs"] - macs) / macs <= 0.06, prof["macs"]
    # the blocks partition the model: their sums are the totals
    assert sum(b["params"] for b in prof["blocks"]) == prof["params"]
    assert sum(b["macs"] for b in prof["blocks"]) == prof["macs"]
    assert sum(prof["macs_by_role"].values()) == prof["macs"]


class _Separable(nn.Module):
    """features = [depthwise f x f (+BN, ReLU)] then [pointwise 1x1]: one separable pair."""

    def __init__(self, n_c: int, n_c2: int, f: int, stride: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(n_c, n_c, f, stride, f // 2, groups=n_c, bias=False),
                          nn.BatchNorm2d(n_c), nn.ReLU()),
            nn.Conv2d(n_c, n_c2, 1, bias=False))

    def forward(self, x):
        return self.features(x)


@pytest.mark.parametrize("n_c,n_c2,f,stride,side", [(8, 16, 3, 1, 12), (6, 40, 5, 2, 20)])
def test_separable_ratio_is_one_over_nc_plus_one_over_f2(n_c, n_c2, f, stride, side):
    prof = profile_model(_Separable(n_c, n_c2, f, stride), (n_c, side, side))
    (pair,) = prof["blocks"][0]["separable"]
    n_out = side // stride
    assert (pair["f"], pair["n_c"], pair["n_c_out"], pair["n_out"]) == (f, n_c, n_c2, n_out)
    assert pair["standard_macs"] == f * f * n_c * n_out * n_out * n_c2
    assert pair["ratio"] == pytest.approx(1 / n_c2 + 1 / f ** 2, rel=1e-12)
    # the pair's own cost is what the hooks measured on the two convolutions
    assert pair["separable_macs"] == prof["macs"]
    assert prof["macs_by_role"]["depthwise"] == f * f * n_c * n_out * n_out
    assert prof["macs_by_role"]["pointwise"] == n_c * n_out * n_out * n_c2


def test_v3_small_block_shows_expansion_and_squeeze_excitation():
    block = profile_arch("mobilenet_v3_small", 224)["blocks"][4]
    # features.4: 24 -> expand 96 (1x1 at 28x28), 5x5 depthwise stride 2 -> 14x14,
    # SE 96 -> 24 -> 96 on a 1x1 map, project 96 -> 40
    assert block["out_shape"] == [40, 14, 14]
    assert block["macs_by_role"] == {"expand": 24 * 96 * 28 * 28, "depthwise": 25 * 96 * 14 * 14,
                                     "se": 96 * 24 * 2, "pointwise": 96 * 40 * 14 * 14}
    (pair,) = block["separable"]
    assert pair["ratio"] == pytest.approx(1 / 40 + 1 / 25)


def test_v2_first_bottleneck_has_no_expansion_and_last_block_shape():
    blocks = profile_arch("mobilenet_v2", 224)["blocks"]
    assert set(blocks[1]["macs_by_role"]) == {"depthwise", "pointwise"}
    assert blocks[0]["macs_by_role"] == {"conv": 3 * 3 * 3 * 32 * 112 * 112}
    assert blocks[18]["out_shape"] == [1280, 7, 7]
    assert blocks[-1]["name"] == "classifier" and blocks[-1]["out_shape"] == [1000]


def test_image_size_scales_macs_but_not_params():
    small, large = profile_arch("mobilenet_v3_small", 112), profile_arch("mobilenet_v3_small", 224)
    assert small["params"] == large["params"]
    assert small["macs"] < 0.35 * large["macs"]
    assert small["published"] is None and large["published"] is not None


def test_latency_is_measured_for_both_engines():
    from mobiletune.model.backbone import build_model

    lat = measure_latency(build_model("mobilenet_v3_small", "none", 3), 32, (1, 2), budget_s=0.0)
    assert set(lat) == {"pytorch", "onnxruntime"}
    for per in lat.values():
        assert set(per) == {1, 2} and all(ms > 0 for ms in per.values())


def test_cli_profile_json_prints_one_object():
    from mobiletune.cli import app

    res = CliRunner().invoke(app, ["profile", "--arch", "mobilenet_v3_small", "--json",
                                   "--no-latency", "--image-size", "224"])
    assert res.exit_code == 0, res.output
    prof = json.loads(res.stdout)
    assert prof["params"] == 2542856 and isinstance(prof["blocks"], list)
    assert abs(prof["macs"] - 56e6) / 56e6 <= 0.06
    assert "latency_ms" not in prof


def test_cli_profile_unknown_arch_is_a_user_error():
    from mobiletune.cli import app

    res = CliRunner().invoke(app, ["profile", "--arch", "mobilenet_v4", "--no-latency"])
    assert res.exit_code == 2
    assert "mobilenet_v4" in res.output and "mobilenet_v3_large" in res.output
