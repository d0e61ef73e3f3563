"""rate-report on restored variants (restore-shards output): each row names its codec and parameter,
and the restored variants draw their own RD curve beside their codec's (paper 2 Fig. 6), with
BD deltas of restored vs its codec."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from lossyvision.cli import main
from lossyvision.pipelines.prepare import CodecSetting, PrepareConfig, prepare_shards

TINY = dict(width=8, n_blocks=2, disc_width=8, vgg_weights="random", num_workers=0)


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """samples photos: a tiny GAN trained one step on train_extra, restoring val's bpg-qp41 and qp46."""
    from lossyvision.pipelines.restore import RestoreConfig, restore_shards
    from lossyvision.train.restoration import RestorationConfig, train_restoration

    out = tmp_path_factory.mktemp("restored")
    shards = out / "shards"
    common = dict(dataset="samples", out=str(shards), executor="local", progress=False)
    prepare_shards(PrepareConfig(split="train_extra", limit=2, codecs=[CodecSetting("bpg", 41)], **common))
    prepare_shards(PrepareConfig(split="val", limit=4, shard_size=2, codecs=[CodecSetting("bpg", q) for q in (41, 46)],
                                 **common))
    root = shards / "samples"
    run = out / "gan"
    train_restoration(RestorationConfig(shards=str(root), variant="bpg-qp41", split="train_extra", out_dir=str(run),
                                        steps=1, patch_size=128, **TINY))
    for q in (41, 46):  # the photos are the same in both splits: overlap is allowed on purpose here
        restore_shards(RestoreConfig(shards=str(root), split="val", variant=f"bpg-qp{q}",
                                     generator=str(run / "generator.pt"), allow_overlap=True), progress=False)
    return root


def test_a_restored_row_names_its_codec_and_parameter(restored, tmp_path):
    from lossyvision.eval.rates import rate_table

    rows = {r["variant"]: r for r in rate_table(str(restored / "val"))}
    r = rows["bpg-qp41+restored"]
    assert (r["codec"], r["q"], r["restored"], r["source_variant"]) == ("bpg", 41, True, "bpg-qp41")
    assert (rows["bpg-qp41"]["restored"], rows["orig"]["codec"], rows["orig"]["restored"]) == (False, "lossless", False)
    assert r["bpp"] == pytest.approx(rows["bpg-qp41"]["bpp"])  # the rate is the transmitted bitstream's

    rep = CliRunner().invoke(main, ["rate-report", str(restored / "val"), "--out", str(tmp_path), "--no-plot"])
    assert rep.exit_code == 0, rep.output
    assert "| samples | val | bpg-qp41+restored | bpg | 41 | yes | 4 | 0 |" in rep.output
    assert "| samples | val | bpg-qp41 | bpg | 41 | no | 4 | 0 |" in rep.output
    df = pd.read_csv(tmp_path / "rates.csv").set_index("variant")
    assert df.loc["bpg-qp46+restored", "codec"] == "bpg" and df.loc["bpg-qp46+restored", "q"] == 46
    assert bool(df.loc["bpg-qp46+restored", "restored"]) and not bool(df.loc["bpg-qp46", "restored"])
    js = {x["variant"]: x for x in json.loads((tmp_path / "rates.json").read_text())}
    assert (js["bpg-qp41+restored"]["codec"], js["bpg-qp41+restored"]["q"], js["bpg-qp41+restored"]["restored"]) == \
        ("bpg", 41, True)
    # BD of restored against its own codec, on PSNR and MS-SSIM, each from 2 + 2 points
    bd = pd.read_csv(tmp_path / "bd_rate.csv")
    rest = bd[bd["comparison"] == "restoration"]
    assert sorted(rest["metric"]) == ["ms_ssim_db", "psnr"]
    assert (rest["reference"] == "bpg").all() and (rest["test"] == "bpg+restored").all()
    assert (rest["reference_points"] == 2).all() and (rest["test_points"] == 2).all()
    assert "| restoration | PSNR | bpg | bpg+restored | 2/2 |" in rep.output
    cai = json.loads((tmp_path / "compressai" / "samples-val-bpg+restored.json").read_text())
    assert cai["results"]["q"] == [46, 41]


def test_the_rd_plot_draws_restored_variants_as_their_own_curve(restored):
    from lossyvision.eval.rates import rate_table
    from lossyvision.reports.curves import groups
    from lossyvision.reports.plots import rd_figure

    (g,) = groups(rate_table(str(restored / "val")))
    fig = rd_figure(g)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert {"bpg", "bpg+restored"} <= set(lines)
    plain, rest = lines["bpg"], lines["bpg+restored"]
    assert len(rest.get_xdata()) == 2 and list(rest.get_xdata()) == pytest.approx(list(plain.get_xdata()))
    assert rest.get_color() == plain.get_color() and rest.get_linestyle() == "--" and plain.get_linestyle() == "-"
    assert {"qp41", "qp46"} <= {t.get_text() for t in ax.texts}
