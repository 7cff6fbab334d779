"""The long-tail protocol: the balanced control of a long-tailed subset (water-filling, matched hours), the
tail cost and recovered share of the report against a direct numpy computation from per-seed results, and the
profile's recommendation rules."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from spkcausal.cli import main
from spkcausal.data.advice import BENCHMARK, RULES, recommend
from spkcausal.data.datadir import DataDir
from spkcausal.data.subsets import balanced_control, longtail_subset, water_fill
from spkcausal.report.results import collect_rows, format_markdown, update_results, write_report
from spkcausal.report.tailcost import fieller_ratio
from spkcausal.utils import DataError


def _data(counts: dict[str, int], seed: int = 0, dur=None) -> DataDir:
    rng = np.random.default_rng(seed)
    utts = {f"{s}-{j:04d}": s for s, c in counts.items() for j in range(c)}
    durs = {u: float(dur(u) if dur else np.round(rng.uniform(1, 10), 3)) for u in utts}
    return DataDir(wav={u: f"/x/{u}.wav" for u in utts}, utt2spk=utts, utt2dur=durs)


def _level_direct(avail: np.ndarray, total: int) -> int:
    return max(L for L in range(int(avail.max()) + 1) if np.minimum(avail, L).sum() <= total)


@pytest.mark.parametrize("avail,total", [([10, 10, 10, 10], 20), ([10, 10, 10, 10], 23), ([2, 3, 50, 60, 70], 100),
                                         ([1, 1, 1], 3), ([5, 9, 40], 41)])
def test_water_fill_against_the_level_found_by_search(avail, total):
    avail = np.array(avail)
    counts, level = water_fill(avail, total, np.random.default_rng(1))
    assert level == _level_direct(avail, total)
    assert counts.sum() == total and (counts <= avail).all()
    capped = avail < level
    assert (counts[capped] == avail[capped]).all()  # the speakers below the level give all they have
    assert set(counts[~capped].tolist()) <= {level, level + 1}
    with pytest.raises(DataError, match="asked for"):
        water_fill(avail, int(avail.sum()) + 1, np.random.default_rng(0))


def test_balanced_control_same_speakers_count_and_hours():
    data = _data({f"s{i:02d}": c for i, c in enumerate([80, 70, 60, 50, 45, 40, 30, 30, 25, 22, 20, 18])})
    lt, held = longtail_subset(data, imbalance=10, heldout_per_spk=5, seed=2)
    ctrl, info = balanced_control(data, lt, seed=2, exclude=set(held.utt2spk))
    assert ctrl.speakers == lt.speakers and len(ctrl) == len(lt)
    assert not set(ctrl.utt2spk) & set(held.utt2spk)  # never the held-out utterances
    n = np.array([len(v) for _, v in sorted(ctrl.spk2utt.items())])
    avail = np.array([len(v) - 5 for _, v in sorted(data.spk2utt.items())])
    assert info["level"] == _level_direct(avail, len(lt)) and n.max() - n.min() <= max(1, n.max() - avail.min())
    hours_lt = sum(lt.utt2dur.values()) / 3600
    hours_ctrl = sum(ctrl.utt2dur.values()) / 3600
    assert abs(hours_ctrl / hours_lt - 1) <= 0.05
    assert info["hours_ratio"] == pytest.approx(hours_ctrl / hours_lt)  # float64 sums of durations


def test_balanced_control_swaps_to_match_hours_and_fails_when_it_cannot():
    # the long-tailed subset holds the long utterances: a random draw falls short and needs swaps
    data = _data({f"s{i}": 40 for i in range(6)}, dur=lambda u: 1 + 9 * (int(u[-4:]) % 2))
    long_utts = [u for u in data.utt2spk if data.utt2dur[u] > 5]
    lt = data.subset(long_utts[:20] + long_utts[20:60:4])
    ctrl, info = balanced_control(data, lt, seed=0, tolerance=0.02)
    assert info["swaps"] > 0 and abs(info["hours_ratio"] - 1) <= 0.02
    assert ctrl.speakers == lt.speakers and len(ctrl) == len(lt)
    # durations fixed per speaker: the same counts spread evenly cannot reach the subset's hours
    data = _data({"a": 10, "b": 10}, dur=lambda u: 10.0 if u[0] == "a" else 1.0)
    lt = data.subset([u for u in data.utt2spk if u[0] == "a"][:8] + ["b-0000", "b-0001"])
    with pytest.raises(DataError, match="cannot match"):
        balanced_control(data, lt)


def test_cli_subset_writes_the_control(tmp_path):
    data = _data({f"id{i:03d}": 20 + 6 * i for i in range(10)})
    data.write(tmp_path / "data")
    rc = main(["longtail-subset", str(tmp_path / "data"), "--out-train", str(tmp_path / "tr"), "--out-heldout",
               str(tmp_path / "ho"), "--imbalance", "5", "--heldout-per-spk", "4", "--control", str(tmp_path / "ct")])
    assert rc == 0
    tr, ho, ct = (DataDir.load(tmp_path / d) for d in ("tr", "ho", "ct"))
    assert ct.speakers == tr.speakers and len(ct) == len(tr) and not set(ct.utt2spk) & set(ho.utt2spk)
    info = json.loads((tmp_path / "ct" / "balanced_control.json").read_text())
    assert abs(info["hours_ratio"] - 1) <= 0.05 and info["utterances"] == len(tr)


# ---------------------------------------------------------------- tail cost in the report


def _exp(tmp: Path, name: str, head: str) -> Path:
    e = tmp / name
    e.mkdir(parents=True)
    (e / "config.yaml").write_text(yaml.safe_dump({"head": {"name": head}, "sampler": {"name": "natural"},
                                                   "loss": {"name": "ce"}}))
    return e


def _row(eer: float, few: float) -> dict:
    ver = {"eer": eer, "min_dcf": {"0.01": 0.5}}
    seen = {"thresholds": {"many": 30, "few": 10},
            "groups": {"many": {"eer": 0.05, "min_dcf": {"0.01": 0.3}}, "medium": None,
                       "few": {"eer": few, "min_dcf": {"0.01": 0.6}}}}
    return {"verification": ver, "seen": seen}


def test_tail_cost_and_recovered_share_match_numpy(tmp_path):
    eer = {"aam": [0.12, 0.13, 0.115], "aam_control": [0.10, 0.105, 0.1], "cnaam": [0.11, 0.12, 0.111]}
    few = {"aam": [0.30, 0.34, 0.31], "aam_control": [0.20, 0.22, 0.19], "cnaam": [0.25, 0.27, 0.26]}
    heads = {"aam": "aam", "aam_control": "aam", "cnaam": "causal_norm_aam"}
    exps = []
    for name in ("aam", "cnaam", "aam_control"):
        for k in range(3):
            e = _exp(tmp_path / "exp", f"{name}_seed{k}", heads[name])
            update_results(e, "cosine", **_row(eer[name][k], few[name][k]))
            exps.append(e)
    text, out = write_report(exps)
    tail = json.loads((out / "report.json").read_text())["tail_cost"]
    assert tail["control"] == str(tmp_path / "exp" / "aam_control")
    tq = stats.t.ppf(0.975, 2)
    for col, x in (("eer", eer), ("seen_eer_few", few)):
        c = np.array(x["aam"]) - np.array(x["aam_control"])
        got = tail["costs"]["cosine"][col]
        half = tq * c.std(ddof=1) / np.sqrt(3)
        # float64 mean and t interval
        assert got["cost"] == pytest.approx(c.mean()) and got["ci"] == pytest.approx([c.mean() - half,
                                                                                      c.mean() + half])
        g = np.array(x["aam"]) - np.array(x["cnaam"])
        share = tail["shares"][0]["columns"][col]
        assert share["share"] == pytest.approx(g.mean() / c.mean())  # float64 ratio
        # Fieller's ends: the per-seed g - r c has a t-statistic of exactly -+ t_0.975 there
        for r, sign in zip(share["ci"], (1, -1)):
            z = g - r * c
            # float64 t statistic vs scipy's t quantile
            assert z.mean() / (z.std(ddof=1) / np.sqrt(3)) == pytest.approx(sign * tq, rel=1e-6)
    table = [ln for ln in text.splitlines() if ln.startswith("| Tail cost") or ln.startswith("| Share")]
    c = np.array(eer["aam"]) - np.array(eer["aam_control"])
    assert f"+{100 * c.mean():.2f}" in table[0] and "balanced control" in table[0]
    g = np.array(eer["aam"]) - np.array(eer["cnaam"])
    assert table[1].startswith("| Share recovered: De-confound") and f"{100 * g.mean() / c.mean():.0f}%" in table[1]
    # without the control there is no tail-cost table
    plain = format_markdown(collect_rows([e for e in exps if "control" not in e.name]))
    assert "Tail cost" not in plain


def test_fieller_reduces_to_a_t_interval_and_is_unbounded_for_a_noisy_cost():
    g, c = [0.02, 0.03, 0.025, 0.01], [0.04] * 4
    lo_hi = fieller_ratio(g, c)["ci"]
    half = stats.t.ppf(0.975, 3) * np.std(g, ddof=1) / 2
    assert lo_hi == pytest.approx([(np.mean(g) - half) / 0.04, (np.mean(g) + half) / 0.04])  # float64
    noisy = fieller_ratio([0.01, 0.02, 0.0], [0.05, -0.04, 0.01])
    assert noisy["ci"] is None and noisy["bounded"] is False
    one = fieller_ratio([0.01], [0.04])
    assert one["ratio"] == pytest.approx(0.25) and one["ci"] is None  # ratio of counts


# ---------------------------------------------------------------- recommendation


def _summary(imbalance: float, few: int, speakers: int = 100) -> dict:
    return {"speakers": speakers, "utterances_per_speaker": {"imbalance": imbalance},
            "groups": {"few": {"speakers": few}}}


@pytest.mark.parametrize("imbalance,few,rule", [(1.0, 0, "balanced"), (3.0, 50, "balanced"),
                                                (30.0, 30, "many_few"), (30.0, 29, "long_tail"),
                                                (3.01, 80, "many_few")])
def test_recommendation_rules(imbalance, few, rule):
    rec = recommend(_summary(imbalance, few))
    assert rec["rule"] == rule and rec["few_share"] == few / 100 and "demo.md" in rec["benchmark"]
    assert rec["advice"] == {r[0]: r[3] for r in RULES}[rule]


def test_recommendation_follows_an_edited_table_and_profile_prints_it(tmp_path, capsys):
    rules = (("strict", 10.0, 0.5, "A"), ("rest", None, None, "B"))
    assert recommend(_summary(5, 60), rules)["advice"] == "A" and recommend(_summary(5, 40), rules)["advice"] == "B"
    with pytest.raises(DataError, match="no recommendation"):
        recommend(_summary(50, 0), rules[:1])
    _data({"a": 40, "b": 4, "c": 30}).write(tmp_path / "d")
    assert main(["profile", str(tmp_path / "d"), "--many", "30", "--few", "10"]) == 0
    out = capsys.readouterr().out
    assert "recommendation (imbalance 10, Few speakers 33.3%)" in out and BENCHMARK in out
    assert BENCHMARK == "docs/demo.md#the-tails-cost-with-power-and-the-encoder-side-methods"


# ---------------------------------------------------------------- recipe plumbing (bash only, no training)


@pytest.mark.slow
def test_run_stages_puts_the_control_in_the_plan_and_passes_its_dir(tmp_path):
    """run_stages.sh (stages 3-8 of every recipe) adds the baseline's control system to the systems and passes
    --control_dir: the plan marks the control's runs, and the stages (spkcausal.pipeline for 4-7) give them the
    control dir and keep the long-tailed dir's shot groups; stage functions are replaced by an echo here."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    stubs = "".join(f'{f}() {{ echo "CALL {f} $*"; }}; ' for f in ("stage_train", "stage_extract", "stage_score",
                                                                    "stage_tde", "stage_identify", "stage_report"))
    script = f"""set -euo pipefail
. {root}/recipes/common/stages.sh; . {root}/recipes/common/protocol.sh
{stubs}
protocol_setup lt 30 {tmp_path}/exp "aam cnaam" {root}/recipes/mini/conf {tmp_path}/ctl
stage=3 stop_stage=8 exp=X systems="aam cnaam" seeds=0 train_dir=T val_dir=V test_dir=E eval_dir=D trials=L
conf_dir=C overrides="" lm_conf=lm.yaml num_avg=2 lm_num_avg=1 extract_mode=pad extract_workers=0 seen_test=ST
seen_dev=SD asnorm_top=dev alphas="" alpha_on=iden_val many=30 few=10 caption="" baseline="" per_seed=false
. {root}/recipes/common/run_stages.sh
"""
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    calls = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln.startswith("CALL ")}
    assert list(calls) == ["stage_train", "stage_extract", "stage_score", "stage_tde", "stage_identify",
                           "stage_report"]
    for f in list(calls)[:5]:
        assert f"--systems aam cnaam aam+control --seeds 0 --train_dir T --control_dir {tmp_path}/ctl" in calls[f]
    assert "--systems aam cnaam aam+control --trials L" in calls["stage_report"]
    assert "--dirs T V E D " in calls["stage_extract"]  # the control run's T: stage_extract's --control_dir
    assert not (tmp_path / "exp" / "protocol").exists()  # no copied YAML named for the report: run.json marks it
    bad = subprocess.run(["bash", "-c", f". {root}/recipes/common/stages.sh; . {root}/recipes/common/protocol.sh; "
                          f"protocol_setup lt 1 {tmp_path}/e aam {root}/recipes/mini/conf d"], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "needs --imbalance R > 1" in bad.stderr
