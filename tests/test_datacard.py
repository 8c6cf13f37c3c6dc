"""The data card: counts before and after cleaning, leakage on planted duplicates (checked against
brute force), the tokenizer-coverage warning on Cyrillic with MiniLM's tokenizer, the CLI and the
report section."""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lora_bench import data, datacard
from lora_bench.datacard_cli import add_data_parser, run_data

from .conftest import write_csv_task

EXAMPLE = data.FIXTURES / "tasks" / "examples" / "russian-headlines.yaml"

RUBRICS = {
    "1": (["Сборная России", "«Спартак»", "ЦСКА", "«Зенит»", "Хоккеисты «Динамо»", "Теннисистка Иванова",
           "Лыжник Петров"],
          ["выиграл матч против", "уступил команде", "сыграл вничью с", "обыграл в финале", "проиграл в полуфинале",
           "встретится в Кубке с"],
          ["сборной Бразилии", "«Локомотива»", "чемпиона Европы", "команды из Казани", "соперника из Сочи",
           "лидера лиги"]),
    "2": (["Центробанк", "Минфин", "Сбербанк", "Правительство", "Газпром", "Росстат"],
          ["повысил прогноз", "снизил оценку", "сохранил ставку", "пересмотрел план", "объявил рост",
           "отчитался о снижении"],
          ["инфляции на год", "цен на нефть", "ВВП страны", "курса рубля", "доходов бюджета", "кредитов бизнесу"]),
    "3": (["Большой театр", "Эрмитаж", "Режиссёр Михалков", "Третьяковская галерея", "Писатель Пелевин",
           "Музей Пушкина"],
          ["представил новую", "открыл большую", "показал редкую", "анонсировал летнюю", "перенёс громкую",
           "отменил зимнюю"],
          ["выставку", "премьеру", "постановку", "ретроспективу", "экспозицию", "программу"]),
}
PER_RUBRIC = {"1": 120, "2": 90, "3": 70}


def write_russian_csv(folder: Path) -> Path:
    """Synthetic Russian headlines in three rubrics (imbalanced), with what real exports carry: an agency
    suffix and a photo prefix to strip, adverts (rubric 9 and 'реклама' in the text), bare numbers,
    two-word stubs and repeats."""
    rng = random.Random(0)
    rows = []
    for rubric, parts in RUBRICS.items():
        combos = list(itertools.product(*parts))
        rng.shuffle(combos)
        for subject, verb, obj in combos[:PER_RUBRIC[rubric]]:
            text = f"{subject} {verb} {obj}"
            roll = rng.random()
            text = f"{text} - РИА Новости" if roll < 0.25 else f"ФОТО: {text}" if roll < 0.35 else text
            rows.append((text, rubric))
    rows += [(f"Реклама: кредит под {p}% годовых", "9") for p in range(3, 9)]
    rows += [(f"Спонсорская реклама на матче ЦСКА №{i}", "1") for i in range(4)]
    rows += [(str(12345 + i), "2") for i in range(3)]
    rows += [("Коротко: спорт", "1"), ("Главное: экономика", "2"), ("Итоги дня", "3")]
    rows += [(rows[i][0].replace(" - РИА Новости", "").replace("ФОТО: ", ""), rows[i][1]) for i in range(0, 50, 10)]
    path = folder / "russian-headlines.csv"
    pd.DataFrame(rows, columns=["заголовок", "рубрика"]).to_csv(path, index=False)
    return path


def russian_task(folder: Path) -> Path:
    """The shipped example task, copied beside a generated CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    write_russian_csv(folder)
    return Path(shutil.copy(EXAMPLE, folder / EXAMPLE.name))


@pytest.fixture(scope="module")
def russian_card(tmp_path_factory) -> dict:
    task = russian_task(tmp_path_factory.mktemp("ru"))
    return datacard.data_card(str(task), ["minilm-l6"], max_lengths=[64])


# ------------------------------------------------------------------------------------------------ the card

def test_bbc_card_shows_the_duplicates_removed_and_no_leakage():
    card = datacard.data_card("bbc-topic", ["minilm-l6"])
    assert card["rows"]["read"] == 2225 and card["rows"]["duplicates_removed"] == 129
    assert card["leakage"]["exact"] == 0 and card["leakage"]["near"] == 0
    assert card["max_n_per_class"] == 253 and card["smallest_class"] == "tech"
    tech = next(c for c in card["per_class"] if c["label"] == "tech")
    assert tech["before_cleaning"] == 401 and tech["duplicates"] == 68 and tech["kept"] == 333
    assert sum(c["duplicates"] for c in card["per_class"]) == 129
    (minilm,) = card["tokenizers"]
    assert minilm["status"] == "ok" and not minilm["cannot_read"] and 1.0 < minilm["fertility"] < 1.6
    assert all(len(v) == 3 for v in card["examples"].values())
    assert card["warnings"] == []
    assert json.loads(json.dumps(card)) == card           # JSON-ready
    assert "129 duplicates removed" in datacard.render_text(card)


def test_russian_card_counts_the_cleaning(russian_card):
    card = russian_card
    assert card["labels"] == ["спорт", "экономика", "культура"]
    cleaning = card["cleaning"]
    assert cleaning["unmapped_labels"] == {"9": 6}
    assert cleaning["dropped"] == {"drop_if_contains 'реклама'": 4, "drop_regex '^\\d+$'": 3, "min_words 3": 3}
    assert cleaning["texts_stripped"] > 60
    assert card["rows"]["duplicates_removed"] == 5
    assert {c["label"]: c["before_cleaning"] for c in card["per_class"]} == {"спорт": 130, "экономика": 94,
                                                                           "культура": 71}
    assert {c["label"]: c["after_cleaning"] for c in card["per_class"]} == {"спорт": 125, "экономика": 90,
                                                                          "культура": 70}
    assert {c["label"]: c["kept"] for c in card["per_class"]} == {"спорт": 70, "экономика": 70, "культура": 70}
    assert card["rows"]["balanced_out"] == 50 + 20
    assert card["lengths"]["scripts"].get("CYRILLIC", 0) > 0.9


def test_minilm_cannot_really_read_cyrillic(russian_card):
    (minilm,) = russian_card["tokenizers"]
    assert minilm["cannot_read"] and minilm["fertility"] > 3 and minilm["chars_per_token"] < 2
    assert minilm["unknown_share"] < 0.02                 # it has the letters, one at a time
    warning = next(w for w in russian_card["warnings"] if w.startswith("minilm-l6 cannot really read"))
    assert "Cyrillic text" in warning and "near single characters" in warning and "tokens per word" in warning


def test_tokenizer_coverage_on_a_cyrillic_sample():
    russian = ["Правительство утвердило новый бюджет на следующий год",
               "Сборная России выиграла чемпионат мира по хоккею",
               "В Москве открылась выставка современного искусства"]
    english = ["Ad sales boost Time Warner profit", "Dollar gains on Greenspan speech",
               "Yukos unit buyer faces loan claim"]
    ru = datacard.tokenizer_report("minilm-l6", russian)
    en = datacard.tokenizer_report("minilm-l6", english)
    assert ru["cannot_read"] and ru["fertility"] > 4 and ru["chars_per_token"] < 1.5
    assert not en["cannot_read"] and en["fertility"] < 1.5 and en["chars_per_token"] > 3.5
    assert ru["tokens"]["median"] > 3 * en["tokens"]["median"]


def test_unknown_tokens_are_counted(tiny_bert):
    # MiniLM's WordPiece has no entry for these symbols: every one is [UNK]
    report = datacard.tokenizer_report(str(tiny_bert), ["☃ ☃ ☃ snow", "☄ comet ☄"])
    assert report["unknown_share"] == pytest.approx(5 / 7, abs=1e-4)
    assert report["cannot_read"]


def test_a_hub_tokenizer_offline_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datacard.load_tokenizer.cache_clear()
    report = datacard.tokenizer_report("someone/not-cached-model", ["a text"])
    assert report["status"] == "skipped" and "HF_HUB_OFFLINE" in report["note"]


# ------------------------------------------------------------------------------------------------ leakage

def brute_force_pairs(sets, threshold):
    out = set()
    for i, j in itertools.combinations(range(len(sets)), 2):
        union = len(sets[i] | sets[j])
        if union and len(sets[i] & sets[j]) / union >= threshold:
            out.add((min(i, j), max(i, j)))
    return out


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9, 1.0])
def test_similarity_join_matches_brute_force(threshold):
    rng = random.Random(threshold)
    vocab = [f"w{i}" for i in range(30)]
    sets = list(dict.fromkeys(frozenset(rng.sample(vocab, rng.randint(1, 9))) for _ in range(300)))
    base = sets[:40]
    seen = set(sets)
    sets += [s for s in dict.fromkeys(s | {rng.choice(vocab)} for s in base) if s not in seen]   # near twins
    found = {(min(a, b), max(a, b)) for a, b, _ in data.similar_sets(sets, threshold)}
    assert found == brute_force_pairs(sets, threshold)


def test_leakage_on_planted_duplicates(tmp_path):
    path = write_csv_task(tmp_path, per_class=40)
    frame = pd.read_csv(tmp_path / "toy.csv")
    exact = frame.head(12).assign(text=lambda f: f.text.str.upper() + "!")       # same normalised text
    near = frame.iloc[40:52].assign(text=lambda f: f.text + " today")            # one word more
    pd.concat([frame, exact, near]).to_csv(tmp_path / "toy.csv", index=False)
    path.write_text(path.read_text().replace("type: classification", "type: classification\ndedupe: false"))
    loaded = data.load_task(str(path))
    leak = datacard.leakage(loaded, threshold=0.8)
    splits = {"train": [e for p in loaded.train_pool.values() for e in p], "val": loaded.val, "test": loaded.test}
    for pair, counts in leak["pairs"].items():
        later, earlier = pair.split("-")
        keys = {data.normalise(e.text) for e in splits[earlier]}
        sets = [(data.normalise(e.text), data.word_set(e.text)) for e in splits[earlier]]
        want_exact = sum(data.normalise(e.text) in keys for e in splits[later])
        want_near = 0
        for e in splits[later]:
            key, ws = data.normalise(e.text), data.word_set(e.text)
            if key in keys:
                continue
            want_near += any(k != key and len(ws & s) / len(ws | s) >= 0.8 for k, s in sets)
        assert (counts["exact"], counts["near"]) == (want_exact, want_near), pair
    assert leak["exact"] > 0 and leak["near"] > 0
    card = datacard.data_card(str(path), [])
    assert any(w.startswith("leakage:") and "dedupe: false" in w for w in card["warnings"])


def test_deduplicated_tasks_have_no_exact_leakage(csv_task):
    leak = datacard.leakage(data.load_task(str(csv_task)))
    assert leak["exact"] == 0


# ------------------------------------------------------------------------------------------------ CLI

def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_data_parser(parser.add_subparsers(dest="command"))
    return run_data(parser.parse_args(["data", *argv]))


def test_cli_text_and_json(tmp_path, capsys):
    task = russian_task(tmp_path)
    assert cli(str(task), "--models", "minilm-l6", "--max-length", "32") == 0
    text = capsys.readouterr().out
    assert "data card: russian-headlines" in text and "WARNINGS:" in text
    assert "minilm-l6 cannot really read Cyrillic text" in text and "cut at 32" in text
    assert cli(str(task), "--models", "minilm-l6", "--format", "json", "--examples", "1") == 0
    card = json.loads(capsys.readouterr().out)
    assert card["tokenizers"][0]["cannot_read"] and all(len(v) == 1 for v in card["examples"].values())
    assert cli(str(task), "--models", "minilm-l6", "--strict") == 1
    capsys.readouterr()
    assert cli("no-such-task") == 2
    assert "lora-bench data: task: 'no-such-task' is not allowed; known tasks:" in capsys.readouterr().err


def test_cli_takes_models_and_lengths_from_a_grid(tmp_path, capsys, csv_task, tiny_bert):
    grid = tmp_path / "g.yaml"
    grid.write_text(f"axes: {{model: {tiny_bert}, task: {csv_task}, method: head, n: 10, max_length: 16}}\n")
    assert cli(str(csv_task), "--grid", str(grid), "--format", "json") == 0
    card = json.loads(capsys.readouterr().out)
    assert [t["model"] for t in card["tokenizers"]] == [str(tiny_bert)]
    assert list(card["tokenizers"][0]["truncated"]) == ["16"]


# ------------------------------------------------------------------------------------------------ report

def test_report_section_for_a_task_given_by_a_relative_path(tmp_path, monkeypatch):
    from lora_bench.report import render_report
    from tests.test_report import make_record, write_run

    task = russian_task(tmp_path / "data")
    loaded = data.load_task(str(task))
    records = []
    for seed in (0, 1):
        record = make_record("ru", seed=seed)
        record["run_info"]["spec"]["task"] = "data/russian-headlines.yaml"     # as the grid named it
        record["meta_info"]["data"].update(task="russian-headlines", task_file=str(task),
                                           test_hash=data.examples_hash(loaded.test))
        records.append(record)
    run = write_run(tmp_path / "reports", "ru", records)
    monkeypatch.chdir(tmp_path / "reports")            # elsewhere: the relative path no longer resolves
    html = render_report([run], tmp_path / "out").read_text()
    assert 'id="data-russian-headlines"' in html and "Data: russian-headlines" in html
    assert "minilm-l6 cannot really read Cyrillic text" in html
    assert "different test set" not in html
    cards = json.loads((tmp_path / "out" / "datacards.json").read_text())
    assert cards[0]["task"] == "russian-headlines" and cards[0]["tokenizers"][0]["model"] == "minilm-l6"


def test_report_section_notes_a_task_it_cannot_find(tmp_path):
    from lora_bench.report.datacard_section import build_datacards
    from lora_bench.report.load import load_runs
    from tests.test_report import make_record, write_run

    record = make_record("gone")
    record["run_info"]["spec"]["task"] = "/nowhere/task.yaml"
    views = build_datacards(load_runs([write_run(tmp_path, "gone", [record])]))
    assert len(views) == 1 and views[0].summary.startswith("No data card:") and views[0].card is None


def test_preflight_lines_for_a_grid(tmp_path):
    from types import SimpleNamespace

    task = russian_task(tmp_path)
    specs = [SimpleNamespace(task=str(task), model="minilm-l6", max_length=64),
             SimpleNamespace(task="/nowhere/task.yaml", model="minilm-l6", max_length=64)]
    lines = datacard.preflight_lines(specs)
    assert lines[0].startswith("data russian-headlines: 301 rows read;") and "no leakage left" in lines[0]
    assert any(line.startswith("  ! minilm-l6 cannot really read Cyrillic text") for line in lines)
    assert lines[-1].startswith("data /nowhere/task.yaml: no data card (SpecError")
