"""prepare_librispeech on a fixture tree: counts, reader = speaker, gender incl. a NAME with '|', exclusions."""
import json

import pytest
from fixtures_librispeech import make_librispeech

from spkcausal.corpora.librispeech import prepare_librispeech, read_speakers_txt
from spkcausal.data.datadir import DataDir
from spkcausal.data.trialio import write_trials
from spkcausal.data.trials import make_trials
from spkcausal.data.validate import validate_datadir
from spkcausal.utils import DataError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("libri")
    exp = make_librispeech(tmp)
    summaries = prepare_librispeech(tmp, tmp / "data", nj=2)  # the unpack folder, not LibriSpeech/ itself
    return exp, summaries, tmp / "data"


def test_counts_speakers_and_exclusions(prepared):
    exp, summaries, out = prepared
    assert set(summaries) == {"train-clean-100", "dev-clean"}  # train-other-500 is listed but absent
    for subset, e in exp["subsets"].items():
        d = DataDir.load(out / subset)
        assert d.utts == e["utts"]
        assert d.speakers == sorted(e["speakers"])
        assert all(d.utt2spk[u] == u.split("-")[0] for u in d.utts)  # reader, not reader-chapter
        assert all(d.utt2sess[u] == u.split("-")[1] for u in d.utts)
        for u in d.utts:
            assert d.utt2dur[u] == pytest.approx(exp["durations"][u], abs=1e-3)  # utt2dur keeps ms
        excluded = (out / subset / "excluded.txt").read_text().split("\n")[:-1]
        assert [line.split()[0] for line in excluded] == sorted(e["excluded"])
        assert summaries[subset]["excluded"] == len(e["excluded"])
        assert json.loads((out / subset / "summary.json").read_text())["utterances"] == len(e["utts"])
        assert validate_datadir(out / subset) == []
    tc = exp["subsets"]["train-clean-100"]
    assert (len(tc["speakers"]), len(tc["utts"]), len(tc["excluded"])) == (3, 16, 2)
    reasons = dict(line.split(" ", 1) for line in (out / "train-clean-100" / "excluded.txt").read_text().splitlines())
    assert reasons["103-2241-0000"] == "missing file"
    assert "unreadable" in reasons["1034-3240-0001"]


def test_gender_from_speakers_txt_including_name_with_bars(prepared):
    exp, _, out = prepared
    assert read_speakers_txt(exp["root"] / "SPEAKERS.TXT") == {"60": "m", "103": "f", "1034": "m", "84": "f",
                                                               "174": "m", "7": "f"}
    assert "| |CBW|Simon\n" in (exp["root"] / "SPEAKERS.TXT").read_text()
    assert DataDir.load(out / "train-clean-100").spk2gender == {"60": "m", "103": "f", "1034": "m"}
    assert DataDir.load(out / "dev-clean").spk2gender == {"84": "f", "174": "m"}


def test_sort_order_of_prefix_readers(prepared):
    _, _, out = prepared
    keys = [line.split()[0] for line in (out / "train-clean-100" / "utt2spk").read_text().splitlines()]
    spks = [line.split()[1] for line in (out / "train-clean-100" / "utt2spk").read_text().splitlines()]
    assert keys == sorted(keys, key=str.encode)
    # reader 103 sorts before 1034 both as speakers and through their utterance keys
    assert spks == sorted(spks, key=str.encode) and spks.index("1034") > max(i for i, s in enumerate(spks)
                                                                                if s == "103")


def test_subset_choice_union_and_trials(tmp_path):
    exp = make_librispeech(tmp_path, chapters=2, utts_per_chapter=2, corrupt=False, missing=False)
    (exp["root"] / "train-clean-360").mkdir()
    (exp["root"] / "dev-clean").rename(exp["root"] / "train-clean-360" / "x")  # move readers 84/174 over
    for reader_dir in (exp["root"] / "train-clean-360" / "x").iterdir():
        reader_dir.rename(exp["root"] / "train-clean-360" / reader_dir.name)
    (exp["root"] / "train-clean-360" / "x").rmdir()
    s = prepare_librispeech(exp["root"], tmp_path / "d", subsets=["train-clean-100"], nj=1)
    assert set(s) == {"train-clean-100"} and s["train-clean-100"]["utterances"] == 3 * 2 * 2
    s = prepare_librispeech(exp["root"], tmp_path / "d", nj=1)
    assert s["train_all"]["speakers"] == 5 and s["train_all"]["utterances"] == 5 * 2 * 2
    assert validate_datadir(tmp_path / "d" / "train_all") == []
    all_dir = DataDir.load(tmp_path / "d" / "train_all")
    tr = make_trials(all_dir, 30, seed=1)
    write_trials(tmp_path / "trials", tr)
    assert validate_datadir(tmp_path / "d" / "train_all", trials=[tmp_path / "trials"]) == []
    assert all(all_dir.utt2sess[e] != all_dir.utt2sess[t] for e, t, lab in zip(tr.enroll, tr.test, tr.labels)
               if lab == 1)
    with pytest.raises(DataError, match="subset 'test-other' not found"):
        prepare_librispeech(exp["root"], tmp_path / "d", subsets=["test-other"])


def test_bad_speakers_txt_names_line(tmp_path):
    p = tmp_path / "SPEAKERS.TXT"
    p.write_text(";ID |SEX| SUBSET | MINUTES | NAME\n19 | F | train-clean-100 | 25.19 | Kara Shallenberg\n"
                 "20 | X | dev-clean | 1.0 | Someone\n")
    with pytest.raises(DataError, match=r"SPEAKERS.TXT:3: sex 'X'"):
        read_speakers_txt(p)
    p.write_text("19 | F | train-clean-100\n")
    with pytest.raises(DataError, match=r"SPEAKERS.TXT:1: 3 '\|'-separated fields"):
        read_speakers_txt(p)
