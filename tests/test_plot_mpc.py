"""The MPC cost figure says what it shows: per decode token and prefill apart, axes from zero,
a plaintext reference, legend entries a reader understands."""

from mpcache.eval.plot_mpc import plot_mpc


def _cost(mb, rounds, lan, wan, dealer_mb=0.0):
    return {"online_bytes": mb * 1e6, "rounds": rounds, "compute_s": lan, "dealer_bytes": dealer_mb * 1e6,
            "dealer_rounds": 0, "lan_s": lan, "wan_s": wan}


def _record(length, dealer, policy="full", budget=1.0):
    return {"kind": "mpc", "model": "random:tiny", "policy": policy, "budget": budget, "length": length,
            "dealer": dealer, "mask_reuse": True,
            "decode_per_token": _cost(10 + length / 10, 500, 2.0, 20.0, 3.0 if dealer == "ttp" else 0.0),
            "prefill": _cost(100 + length, 450, 10.0, 40.0), "plaintext_per_token_s": 0.01,
            "plaintext_prefill_s": 0.05}


def test_mpc_figure_has_titles_units_zero_axes_reference_and_readable_legend(tmp_path):
    records = [_record(n, d) for n in (64, 128) for d in ("tfp", "ttp")]
    records.append(_record(128, "tfp", "streaming", 0.1))
    out = tmp_path / "mpc.png"
    fig = plot_mpc(records, str(out))
    assert out.stat().st_size > 10_000
    axes = fig.axes
    assert len(axes) == 8
    assert all(ax.get_ylim()[0] == 0 and ax.get_xlim()[0] == 0 for ax in axes)
    titles = [ax.get_title() for ax in axes]
    assert sum("per decode token" in t for t in titles) == 4 and sum("prefill" in t for t in titles) == 4
    assert {ax.get_ylabel() for ax in axes} == {"MB", "rounds", "seconds"}
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "full cache, TTP dealer" in labels and "full cache, TFP (server deals)" in labels
    assert "streaming at 10%, TFP (server deals)" in labels
    assert "full cache, TTP dealer: dealer traffic" in labels
    assert "plaintext (exact, same machine)" in labels
    assert "per decode token" in fig._suptitle.get_text()
