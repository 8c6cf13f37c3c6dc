"""A user CSV in Russian, with a label mapping, cleaning rules and balancing, runs through the bench on
MiniLM, and the run's report carries its data card, which warns that MiniLM cannot really read it."""

from __future__ import annotations

import json
import re

from .conftest import bench, records, run, write_grid
from .test_datacard import russian_task


def test_a_russian_csv_runs_through_the_bench_with_its_data_card(tmp_path):
    task = russian_task(tmp_path / "data")
    grid = write_grid(tmp_path, f"""
        name: russian
        axes:
          model: minilm-l6
          task: {task}
          method: [head, lora]
          n: 10
          epochs: 2
          latency_rounds: 3
        """)
    out = tmp_path / "reports"
    result = run(bench(grid, out))
    assert result.returncode == 0, result.stdout[-3000:]
    found = records(out)
    assert len(found) == 2 and all(r["status"] == "ok" for r in found)
    data = found[0]["meta_info"]["data"]
    assert data["labels"] == ["спорт", "экономика", "культура"] and data["n_train"] == 30
    assert data["dedup"]["cleaning"]["unmapped_labels"] == {"9": 6}
    html = next(out.glob("*/index.html")).read_text()
    assert 'id="data-russian-headlines"' in html
    warning = re.search(r"minilm-l6 cannot really read Cyrillic text: its tokenizer makes ([\d.]+) tokens per word",
                        html)
    assert warning and float(warning.group(1)) > 3
    (card,) = json.loads(next(out.glob("*/datacards.json")).read_text())
    (minilm,) = card["tokenizers"]
    assert minilm["cannot_read"] and minilm["unknown_share"] < 0.02
