"""The learned difficulty classifier: features, artifact safety, training, and the CLIs."""

from __future__ import annotations

import base64
import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from tokenyard.cli import main as cli_main
from tokenyard.routing.classifiers import DifficultyClassifier
from tokenyard.routing.features import extract_features
from tokenyard.routing.learned.features import FeatureSettings, Featurizer
from tokenyard.routing.learned.model import (
    ArtifactError,
    DifficultyModel,
    load_model,
    model_from_dict,
)
from tokenyard.routing.request import ParsedRequest, parse_request

pytest.importorskip("sklearn")

from tokenyard.routing.learned.train import candidates, cv_folds, fit, kfold_scores


def chat(text: str, **extra: object) -> ParsedRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    return parse_request(body, {}, "chat")


def test_features_are_pinned_case_insensitive_and_bounded() -> None:
    f = Featurizer()
    idx, val = f.sparse("Hello world")
    # Pinned: a change here silently invalidates every trained artifact.
    assert idx.tolist() == [57664, 79951, 134741]
    assert val == pytest.approx([3**-0.5] * 3)
    assert f.sparse("HELLO WORLD")[0].tolist() == idx.tolist()
    assert f.sparse("")[0].size == 0
    # A very long prompt reads only its head and tail.
    s = f.settings
    long_idx, _ = f.sparse("word " * 100_000)
    assert long_idx.size <= 2 * (s.head_bytes + s.tail_bytes)


def test_settings_round_trip_and_reject_bad_values() -> None:
    s = FeatureSettings(char_ngrams=(3,), hash_bits=12)
    assert FeatureSettings.from_dict(s.as_dict()) == s
    for bad in ({"hash_bits": 40}, {"char_ngrams": [0]}, {"head_bytes": 0}, {"nope": 1}):
        with pytest.raises(ValueError):
            FeatureSettings.from_dict(bad)


def synthetic(n: int = 240, seed: int = 0) -> tuple[list[ParsedRequest], np.ndarray, np.ndarray]:
    """Prompts about tides need the strong model; prompts about bread are easy for both."""
    rng = np.random.default_rng(seed)
    parsed, weak, strong = [], [], []
    for i in range(n):
        hard = i % 2 == 0
        topic = "ocean tides and lunar orbits" if hard else "baking bread at home"
        parsed.append(chat(f"Question {i}: tell me about {topic}, case {rng.integers(1000)}"))
        w = 0.0 if hard and rng.random() < 0.8 else 1.0
        weak.append(w)
        strong.append(1.0 if hard or rng.random() < 0.9 else 0.0)
    return parsed, np.array(weak), np.array(strong)


@pytest.fixture(scope="module")
def model() -> DifficultyModel:
    parsed, weak, strong = synthetic()
    return fit(parsed, weak, strong, settings=FeatureSettings(hash_bits=12))


def test_learns_the_hard_topic(model: DifficultyModel) -> None:
    assert isinstance(model, DifficultyClassifier)
    hard = model.score(chat("tell me about ocean tides and lunar orbits"))
    easy = model.score(chat("tell me about baking bread at home"))
    assert 0 <= easy < hard <= 1
    # The router's own feature extraction drives the same call.
    from tokenyard.api.policy import RoutingPolicySpec

    spec = RoutingPolicySpec.model_validate({"pool": "p", "targets": [{"model": "a"}]})
    feats = extract_features(chat("ocean tides?"), spec, "e", "t", classifier=model)
    assert feats.difficulty == model.score(chat("ocean tides?"))
    assert model.quality_table and model.training["prompts"] == 240
    thresholds = [p.threshold for p in model.quality_table]
    assert thresholds == sorted(set(thresholds))  # one row per distinct threshold
    point = model.threshold_for_quality(0.95)
    assert point is not None and point.quality_of_strong >= 0.95
    assert all(
        p.threshold <= point.threshold for p in model.quality_table if p.quality_of_strong >= 0.95
    )


def test_artifact_round_trip(model: DifficultyModel, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    size = model.save(path)
    assert size < 1 << 20
    loaded = load_model(path)
    assert loaded.version == model.version
    for text in ("ocean tides", "bread", "x" * 50_000, ""):
        assert loaded.score(chat(text or " ")) == model.score(chat(text or " "))
    assert load_model(path.read_bytes()).version == model.version


def _doc(model: DifficultyModel) -> dict[str, object]:
    return json.loads(model.to_json())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(kind="Pickle"), "not a difficulty model"),
        (lambda d: d.update(formatVersion=2), "formatVersion 2"),
        (lambda d: d["heads"]["better"].update(bias=5.0), "does not match"),
        (lambda d: d["heads"]["better"].update(ngrams="!!"), "malformed"),
        (lambda d: d["heads"]["worse"].update(encoding="pickle"), "encoding"),
        (lambda d: d.update(calibration={"raw": [1, 0], "probability": [0, 1]}), "non-decreasing"),
        (lambda d: d.update(calibration={"raw": [0, 1], "probability": [0, 2]}), "in \\[0, 1\\]"),
        (lambda d: d.update(calibration={"raw": [0], "probability": [0]}), "at least 2"),
        (lambda d: d["calibration"].update(probability=["a", "b"]), "list of numbers"),
        (lambda d: d.pop("heads"), "malformed"),
    ],
)
def test_rejects_tampered_artifacts(model: DifficultyModel, edit: object, message: str) -> None:
    doc = _doc(model)
    edit(doc)  # type: ignore[operator]
    with pytest.raises(ArtifactError, match=message):
        model_from_dict(doc)


def test_rejects_a_decompression_bomb(model: DifficultyModel) -> None:
    doc = _doc(model)
    bomb = base64.b64encode(zlib.compress(b"\0" * (64 << 20))).decode()
    doc["heads"]["better"]["ngrams"] = bomb  # type: ignore[index]
    with pytest.raises(ArtifactError):
        model_from_dict(doc)


def test_rejects_non_json_and_oversized(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not JSON"):
        load_model(b"\x80\x04pickle")
    with pytest.raises(ArtifactError, match="over 1 MiB"):
        load_model(b" " * ((1 << 20) + 1))


def test_kfold_scores_are_held_out() -> None:
    parsed, weak, strong = synthetic(120)
    scores = kfold_scores(parsed, weak, strong, k=3, settings=FeatureSettings(hash_bits=12))
    assert scores.shape == (120,)
    assert scores[0::2].mean() > scores[1::2].mean()
    with pytest.raises(ValueError, match="kfold"):
        kfold_scores(parsed, weak, strong, k=1)


def test_training_needs_both_outcomes() -> None:
    parsed = [chat(f"q{i}") for i in range(40)]
    with pytest.raises(ValueError, match="did better"):
        fit(parsed, np.ones(40), np.ones(40))
    for form in ("two-heads", "ordinal"):  # a fixed form says the same
        with pytest.raises(ValueError, match="did better"):
            fit(parsed, np.ones(40), np.ones(40), form=form)


def test_ordinal_form_shares_one_direction() -> None:
    parsed, weak, strong = synthetic()
    m = fit(parsed, weak, strong, settings=FeatureSettings(hash_bits=12), form="ordinal")
    assert m.training["form"] == "ordinal" and "selection" not in m.training
    # P(better) = s(w.x + t2) and P(worse) = s(-w.x - t1): the heads mirror each other.
    np.testing.assert_array_equal(m.better.weights, -m.worse.weights)
    np.testing.assert_allclose(m.better.dense, -m.worse.dense)
    assert m.better.scale == pytest.approx(m.worse.scale)
    hard = m.score(chat("tell me about ocean tides and lunar orbits"))
    easy = m.score(chat("tell me about baking bread at home"))
    assert easy < hard
    # The artifact format is the same for both forms: it loads and scores alike.
    again = model_from_dict(json.loads(m.to_json()))
    assert again.version == m.version and again.score(chat("ocean tides")) == m.score(
        chat("ocean tides")
    )


def repeated_word(
    n: int = 300, seed: int = 1
) -> tuple[list[ParsedRequest], np.ndarray, np.ndarray]:
    """Hard prompts use the word "carry" six times, easy ones once (and a random filler
    five times), among random fillers: only n-gram counts tell them apart (presence sees
    "carry", and as many distinct words, in both)."""
    rng = np.random.default_rng(seed)
    parsed, weak, strong = [], [], []
    for i in range(n):
        hard = i % 2 == 0
        words = [f"p{i}w{j}" for j in range(24)]  # no filler (or bigram) seen twice
        # Easy prompts repeat a random five-letter word instead, so both kinds have as
        # many distinct words (presence weights each by one over their number), bytes and
        # digits.
        other = "".join(rng.choice(list("abdefghijklmnosuvwxz"), 5))
        for j in range(6):
            words[4 * j + 1] = "carry" if hard or j == 0 else other
        parsed.append(chat(" ".join(words)))
        weak.append(0.0 if hard and rng.random() < 0.8 else 1.0)
        strong.append(0.0 if rng.random() < 0.1 else 1.0)
    return parsed, np.array(weak), np.array(strong)


def test_selection_picks_the_weighting_and_form_by_held_out_apgr() -> None:
    parsed, weak, strong = repeated_word()
    m = fit(parsed, weak, strong)
    sel = m.training["selection"]
    assert sel["by"] == "5-fold out-of-fold APGR"
    tried = sel["candidates"]
    assert [(c["features"], c["form"]) for c in tried] == [
        ("presence", "two-heads"),
        ("presence", "ordinal"),
        ("counts", "two-heads"),
        ("counts", "ordinal"),
    ]
    best = max(tried, key=lambda c: c["apgr"])
    assert (m.training["features"], m.training["form"]) == (best["features"], best["form"])
    assert m.training["features"] == "counts" and m.settings.binary is False
    assert best["apgr"] > max(c["apgr"] for c in tried if c["features"] == "presence") + 0.1
    assert m.training["calibration"] == "isotonic on 5-fold out-of-fold predictions"
    hard = m.score(chat("a carry b carry c carry d carry e carry f carry"))
    easy = m.score(chat("a carry b x1 c x2 d x3 e x4 f x5"))
    assert easy < hard
    # Fixed choices are not selected.
    fixed = fit(parsed, weak, strong, settings=FeatureSettings(), form="two-heads")
    assert "selection" not in fixed.training and fixed.settings.binary is True


def test_selection_folds_and_candidates() -> None:
    assert [cv_folds(n) for n in (29, 30, 49, 50, 5000)] == [0, 3, 3, 5, 5]
    assert len(candidates(None, None)) == 4
    assert [c.form for c in candidates(FeatureSettings(), None)] == ["two-heads", "ordinal"]
    assert [c.weighting for c in candidates(None, "ordinal")] == ["presence", "counts"]
    with pytest.raises(ValueError, match="form must be"):
        candidates(None, "three-heads")  # type: ignore[arg-type]
    # Too few prompts to cross-validate: the defaults, said so in the metadata.
    parsed, weak, strong = synthetic(24)
    m = fit(parsed, weak, strong)
    assert m.training["selection"]["by"] == "too few prompts: the first that fits"
    assert (m.training["features"], m.training["form"]) == ("presence", "two-heads")
    assert m.training["calibration"] == "none" and m.quality_table == ()
    # The strong model never does worse: two heads cannot fit, the ordinal form can.
    never_worse = np.maximum(strong, weak)
    m = fit(parsed, weak, never_worse)
    assert (m.training["features"], m.training["form"]) == ("presence", "ordinal")
    with pytest.raises(ValueError, match="did better"):
        fit(parsed, weak, never_worse, form="two-heads")
    # Nothing to learn at all: the error says what the ordinal form would need.
    with pytest.raises(ValueError, match="did better than the weak one and prompts where"):
        fit(parsed, weak, weak)


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def labelled_rows(n: int = 200) -> list[dict[str, object]]:
    parsed, weak, strong = synthetic(n)
    return [
        {
            "dataset": "toy",
            "prompt": p.prompt_text,
            "weak_correct": int(w),
            "strong_correct": int(s),
        }
        for p, w, s in zip(parsed, weak, strong, strict=True)
    ]


def test_eval_routing_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "toy.csv", labelled_rows())
    plot = tmp_path / "curves.png"
    code = cli_main(
        ["eval-routing", "--data", str(data), "--kfold", "3", "--draws", "20", "--json",
         "--plot", str(plot)]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    (toy,) = doc["sets"]
    routers = {r["router"]: r for r in toy["routers"]}
    assert set(routers) == {"heuristic", "length", "random", "oracle", "learned"}
    assert routers["learned"]["trained_on"] == "3-fold"
    assert routers["oracle"]["apgr"] >= routers["learned"]["apgr"] > toy["random_95"]["apgr"][1]
    assert plot.stat().st_size > 0


def test_train_router_then_eval_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_csv(tmp_path / "toy.csv", labelled_rows())
    out = tmp_path / "model.json"
    assert (
        cli_main(["train-router", "--data", str(data), "--out", str(out), "--configmap", "m"]) == 0
    )
    model = load_model(out)
    assert model.training["data"][0]["prompts"] == 200
    assert (tmp_path / "model.configmap.yaml").exists()
    capsys.readouterr()
    code = cli_main(
        ["eval-routing", "--data", str(data), "--kfold", "0", "--artifact", str(out),
         "--train", str(data), "--routers", "random", "--draws", "10"]
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "artifact:model" in table
    assert "toy, in-sample" in table  # trained and scored on the same prompts: marked


def test_form_and_features_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "toy.csv", labelled_rows())
    out = tmp_path / "model.json"
    args = ["--form", "ordinal", "--features", "counts"]
    assert cli_main(["train-router", "--data", str(data), "--out", str(out), *args]) == 0
    model = load_model(out)
    assert (model.training["form"], model.training["features"]) == ("ordinal", "counts")
    assert "selection" not in model.training and model.settings.binary is False
    printed = capsys.readouterr().out
    assert "by 5-fold" not in printed
    # Left to the selection, train-router prints what it tried and chose.
    assert cli_main(["train-router", "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    chosen = load_model(out).training
    assert f"{chosen['features']}, {chosen['form']} (by 5-fold out-of-fold APGR:" in printed
    # eval-routing's learned rows take the same options.
    code = cli_main(
        ["eval-routing", "--data", str(data), "--kfold", "3", "--train", str(data),
         "--routers", "random", "--draws", "10", "--json", *args]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    learned = [r for r in doc["sets"][0]["routers"] if r["router"] == "learned"]
    assert len(learned) == 2 and all(r["apgr"] > 0.5 for r in learned)
    with pytest.raises(SystemExit):
        cli_main(["train-router", "--data", str(data), "--out", str(out), "--form", "three"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "a", "weak_correct": 2, "strong_correct": 1}], "weak_correct must be"),
        ([{"prompt": "a", "strong_correct": 1}], "missing column"),
        ([{"messages": "[{", "weak_correct": 0, "strong_correct": 1}], "not JSON"),
        ([{"messages": "[]", "weak_correct": 0, "strong_correct": 1}], "non-empty list"),
        # What the router answers with a 400 (strict JSON) stops the run, row named.
        (
            [
                {
                    "messages": '[{"role": "user", "content": "\\ud800"}]',
                    "weak_correct": 0,
                    "strong_correct": 1,
                }
            ],
            "csv:2: messages: the request body contains an unpaired",
        ),
        (
            [
                {
                    "messages": '[{"role": "user", "content": NaN}]',
                    "weak_correct": 0,
                    "strong_correct": 1,
                }
            ],
            "contains NaN",
        ),
    ],
)
def test_eval_routing_bad_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: list[dict[str, object]], message: str
) -> None:
    data = write_csv(tmp_path / "bad.csv", rows)
    assert cli_main(["eval-routing", "--data", str(data), "--kfold", "0"]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--routers", "magic"],
        ["--kfold", "1"],
        ["--quality-target", "1.5"],
        ["--plot", "/no-such-tokenyard-dir/curves.png"],  # said before the run, not after
    ],
)
def test_eval_routing_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    data = write_csv(tmp_path / "toy.csv", labelled_rows(20))
    assert cli_main(["eval-routing", "--data", str(data), *args]) == 2
    assert "eval-routing:" in capsys.readouterr().err


def test_data_files_as_people_write_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data frame's booleans and padded header names load; a file in another encoding
    is refused with its name and what to do, not a codec traceback."""
    from tokenyard.routing.quality.data import load_csv

    path = tmp_path / "frame.csv"
    path.write_text("prompt, weak_correct ,strong_correct\nq1,False,TRUE\nq2,true,0.5\n")
    (labelled,) = load_csv(path)
    assert [(p.weak, p.strong) for p in labelled.prompts] == [(0.0, 1.0), (1.0, 0.5)]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt,weak_correct,strong_correct\ncaf\u00e9,0,1\n".encode("latin-1"))
    assert cli_main(["eval-routing", "--data", str(latin), "--kfold", "0"]) == 1
    err = capsys.readouterr().err
    assert "latin.csv: not UTF-8 text (byte 0xe9" in err
    assert "save the file as UTF-8" in err
    yes = write_csv(
        tmp_path / "yes.csv", [{"prompt": "a", "weak_correct": "yes", "strong_correct": 1}]
    )
    assert cli_main(["eval-routing", "--data", str(yes), "--kfold", "0"]) == 1
    assert (
        "weak_correct must be a number in [0, 1] (or true/false), got 'yes'"
        in capsys.readouterr().err
    )


def test_eval_routing_says_why_a_figure_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One set the learned row cannot train on (the strong model never loses, never
    wins) does not stop the others; the set says why its figures are missing."""
    flat = [
        {"dataset": "flat", "prompt": f"q{i}", "weak_correct": 1, "strong_correct": 1}
        for i in range(40)
    ]
    data = write_csv(tmp_path / "two.csv", [*labelled_rows(), *flat])
    code = cli_main(
        ["eval-routing", "--data", str(data), "--kfold", "3", "--draws", "20", "--json"]
    )
    assert code == 0
    toy, flat_set = json.loads(capsys.readouterr().out)["sets"]
    assert "learned" in {r["router"] for r in toy["routers"]}
    assert toy["notes"] == []
    assert "learned" not in {r["router"] for r in flat_set["routers"]}
    assert flat_set["routers"][0]["apgr"] is None
    (gap, untrained) = flat_set["notes"]
    assert "does no better than the weak one here (1.000 against 1.000)" in gap
    assert untrained.startswith("learned: not trained on this set: training needs prompts")
    assert cli_main(["eval-routing", "--data", str(data), "--kfold", "3", "--draws", "20"]) == 0
    table = capsys.readouterr().out
    assert table.count("  note: ") == 2
    assert "note: learned: not trained on this set" in table


def test_messages_column_is_parsed_as_the_router_parses(tmp_path: Path) -> None:
    from tokenyard.routing.quality.data import load_csv

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times 3?"},
    ]
    data = write_csv(
        tmp_path / "chat.csv",
        [{"messages": json.dumps(messages), "weak_correct": 0.25, "strong_correct": 1}],
    )
    (labelled,) = load_csv(data)
    (item,) = labelled.prompts
    expected = parse_request({"model": "x", "messages": messages}, {}, "chat")
    assert item.parsed.prompt_tokens == expected.prompt_tokens
    assert item.parsed.roles == expected.roles
    assert labelled.name == "chat"  # no dataset column: the file's name
    assert (item.weak, item.strong) == (0.25, 1.0)


def test_train_router_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "m.json")
    assert cli_main(["train-router", "--data", str(tmp_path / "nope.csv"), "--out", out]) == 1
    assert "train-router:" in capsys.readouterr().err
    data = write_csv(tmp_path / "toy.csv", labelled_rows(20))
    assert cli_main(["train-router", "--data", str(data), "--out", out, "--c", "0"]) == 2
    for name in ("Bad_Name", "-x", "a" * 254):  # refused before training, as kubectl would
        assert (
            cli_main(["train-router", "--data", str(data), "--out", out, f"--configmap={name}"])
            == 2
        )
        assert "is not a ConfigMap name" in capsys.readouterr().err
    nowhere = str(tmp_path / "no" / "m.json")
    assert cli_main(["train-router", "--data", str(data), "--out", nowhere]) == 2
    assert f"--out: no directory {tmp_path / 'no'}" in capsys.readouterr().err
    same = write_csv(
        tmp_path / "same.csv", [{"prompt": f"q{i}", "weak_correct": 1, "strong_correct": 1}
                                for i in range(30)]
    )  # fmt: skip
    assert cli_main(["train-router", "--data", str(same), "--out", out]) == 1
    assert "did better" in capsys.readouterr().err
