"""``hf-localnat demo`` end to end on a tiny random student: what it prints, what it writes, and its output rule."""

from __future__ import annotations

import contextlib
import io
import json

import datasets
import pytest
from huggingface_hub import DatasetCard

from hf_localnat import LocalnatError
from hf_localnat.cli import main
from hf_localnat.demo import DEMO_SOURCE, _example, check_demo_output, demo_pool_path

PROMPTS = 3


def pool_rows() -> list[dict]:
    return [json.loads(line) for line in demo_pool_path().read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def demo_run(tiny_student_dir, tmp_path_factory):
    """One demo run on the first prompts, with what it printed."""
    out = tmp_path_factory.mktemp("demo") / "localnat-demo"
    printed = io.StringIO()
    args = ["demo", "--student", str(tiny_student_dir), "--limit_prompts", str(PROMPTS), "--output_dir", str(out)]
    with contextlib.redirect_stdout(printed):
        code = main(args)
    assert code == 0
    return out, printed.getvalue()


def test_demo_prints_rankings_selection_accuracy_and_changes(demo_run):
    _, text = demo_run
    teachers = list(dict.fromkeys(r["teacher"] for r in pool_rows()))
    assert f"{PROMPTS * len(teachers)} responses to {PROMPTS} MATH level-5 problems from {len(teachers)}" in text
    ranking = text.split("Teacher ranking", 1)[1].split("One response per prompt", 1)[0]
    for teacher in teachers:
        assert teacher in ranking
    for metric in ("global_naturalness", "local_naturalness", "rsr"):  # the demo's default metrics
        assert metric in ranking
        assert f"  {metric}" in text.split("One response per prompt", 1)[1]
    assert "random" in text and "best possible" in text and "P(top)" in text
    for pair in ("global_naturalness vs local_naturalness", "global_naturalness vs rsr", "local_naturalness vs rsr"):
        assert f"{pair}: " in text and f" of {PROMPTS}" in text
    assert "Example: " in text or "no example to show" in text
    assert "Done in " in text


def test_demo_writes_report_selection_and_scored_rows(demo_run):
    out, _ = demo_run
    assert sorted(p.name for p in out.iterdir()) == ["report", "scored.parquet", "selection"]
    assert (out / "report" / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["sections"]["ranking"]["status"] == "ok"
    selected = datasets.load_dataset(str(out / "selection"), split="train")
    first = list(dict.fromkeys(r["prompt_id"] for r in pool_rows()))[:PROMPTS]
    assert len(selected) == PROMPTS and sorted(selected["prompt_id"]) == sorted(first)
    block = DatasetCard.load(out / "selection" / "README.md").data.to_dict()["hf_localnat"]
    assert block["selection"]["by"] == "local_naturalness" and block["num_rows_before"] == PROMPTS * 5
    scored = datasets.load_dataset("parquet", data_files=str(out / "scored.parquet"), split="train")
    assert len(scored) == PROMPTS * 5 and "step_logprobs" in scored.column_names


def test_demo_reruns_over_its_own_output(demo_run, tiny_student_dir):
    out, _ = demo_run
    args = ["demo", "--student", str(tiny_student_dir), "--limit_prompts", "1", "--metrics", "global,local"]
    assert main([*args, "--output_dir", str(out)]) == 0
    assert len(datasets.load_dataset(str(out / "selection"), split="train")) == 1


def test_demo_output_rule(tmp_path):
    assert check_demo_output(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_demo_output(tmp_path / "empty")

    mine = tmp_path / "mine"  # unrelated files: never replaced, even with --overwrite
    (mine / "report").mkdir(parents=True)
    (mine / "report" / "report.json").write_text("{}")
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(LocalnatError, match="notes.txt, which the demo does not write"):
            check_demo_output(mine, overwrite)

    report_only = tmp_path / "report-only"  # only hf_localnat's files, but no demo card: --overwrite replaces it
    (report_only / "report").mkdir(parents=True)
    (report_only / "report" / "report.json").write_text("{}")
    with pytest.raises(LocalnatError, match="no earlier demo wrote it"):
        check_demo_output(report_only)
    check_demo_output(report_only, overwrite=True)

    old = tmp_path / "old-layout"  # the demo's earlier layout: the selection at the top
    (old / "data").mkdir(parents=True)
    (old / "data" / "train-00000-of-00001.parquet").write_bytes(b"")
    (old / "README.md").write_text(f"---\nhf_localnat:\n  source: {DEMO_SOURCE} (embedded demo pool)\n---\n")
    check_demo_output(old)

    pictures = tmp_path / "pictures"  # what a selection folder may hold, but no card of hf_localnat: not ours
    pictures.mkdir()
    (pictures / "cat.png").write_bytes(b"")
    (pictures / "README.md").write_text("my cats\n")
    with pytest.raises(LocalnatError, match="README.md/?, cat.png, which the demo does not write"):
        check_demo_output(pictures, overwrite=True)

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(LocalnatError, match="which the demo does not write"):
        check_demo_output(tmp_path / "a-file", overwrite=True)


def test_demo_refuses_an_unrelated_folder_before_loading_anything(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["demo", "--student", str(tmp_path / "no-such-model"), "--output_dir", str(out), "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_the_example_is_the_first_prompt_where_local_and_global_disagree():
    scored = datasets.Dataset.from_dict(
        {
            "prompt_id": ["p1", "p1", "p2", "p2"],
            "prompt": ["Q1", "Q1", "Q2 first line\nmore", "Q2 first line\nmore"],
            "teacher": ["a", "b", "a", "b"],
            "response": ["x", "y", "\nAlpha line.\nrest", "Beta line."],
            "correct": [True, False, False, True],
            "global_naturalness": [-1.0, -2.0, -0.5, -0.9],
            "local_naturalness": [-1.5, -2.5, -1.2, -0.8],
            "num_response_tokens": [3, 3, 5, 4],
            "step_logprobs": [[-1.5], [-2.5], [-1.0, -1.4], [-0.2, None, -1.4]],
        }
    )
    picks = {"global_naturalness": {"p1": 0, "p2": 2}, "local_naturalness": {"p1": 0, "p2": 3}}
    lines, rows = _example(scored, picks, ["p1", "p2"])
    text = "\n".join(lines)
    assert rows == [2, 3]
    assert "Example: p2" in text and "Prompt: Q2 first line" in text
    assert "global picks a (correct: False" in text and "local picks b (correct: True" in text
    assert "first line: Alpha line." in text and "first line: Beta line." in text
    assert "▃▁  -1.00 -1.40" in text and "█·▁  -0.20   n/a -1.40" in text  # one scale for both responses
    same = {"global_naturalness": {"p1": 0}, "local_naturalness": {"p1": 0}}
    assert _example(scored, same, ["p1"])[1] == []
