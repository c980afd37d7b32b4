"""Publishing: the selection and student folders and their cards (offline), and uploads to a real HTTP test Hub."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import datasets
import pytest
from conftest import DEMO_POOL, build_model, build_tokenizer, read_jsonl
from huggingface_hub import DatasetCard, ModelCard

from hf_localnat import LocalnatError
from hf_localnat.cli import main
from hf_localnat.demo import demo_pool_path
from hf_localnat.hub import SelectionConfig, push_selection, push_student
from hf_localnat.selection import select_responses
from hf_localnat.trainer import ReselectConfig, ReselectingSFTTrainer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCORER = {
    "metrics": ["global", "local", "rsr"],
    "window": 4,
    "splitter": "sentence",
    "include_prompt": True,
    "step_aggregate": "step_mean",
    "drop_first_token": False,
}


def scored_pool(num_prompts: int = 8, teachers: str = "abc", seed: int = 0) -> datasets.Dataset:
    """A scored pool with random scores and the provenance score_dataset records."""
    rng = random.Random(seed)
    rows = [
        {
            "prompt_id": f"p{p}",
            "prompt": f"question {p}",
            "teacher": t,
            "response": f"answer {p} by {t}.",
            "global_naturalness": -rng.random(),
            "local_naturalness": -rng.random(),
            "rsr": 1 + rng.random(),
        }
        for p in range(num_prompts)
        for t in teachers
    ]
    ds = datasets.Dataset.from_list(rows)
    ds.info.description = json.dumps({"hf_localnat": {"scorer": SCORER, "student": "org/student", "revision": "abc"}})
    return ds


def rows_of(ds: datasets.Dataset) -> list[dict]:
    return [dict(sorted(row.items())) for row in ds]


# ---------------------------------------------------------------------------------------------------------
# Selections, offline
# ---------------------------------------------------------------------------------------------------------


def test_selection_folder_loads_back_and_its_card_says_how_it_was_made(tmp_path: Path) -> None:
    scored = scored_pool()
    selected = select_responses(scored, by="local_naturalness", k=1)
    out = tmp_path / "sel"
    assert push_selection(selected, to_dir=out, scored=scored, selection_config={"by": "local_naturalness"}) == str(out)

    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "score_histogram.png"]
    assert (out / "score_histogram.png").read_bytes().startswith(PNG_MAGIC)
    assert rows_of(datasets.load_dataset(str(out), split="train")) == rows_of(selected)

    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["tags"] == ["hf-localnat", "distillation", "data-selection"]
    block = meta["hf_localnat"]
    assert block["student"] == "org/student" and block["student_revision"] == "abc"
    assert block["scorer"]["window"] == 4 and block["scorer"]["metrics"] == ["global", "local", "rsr"]
    selection = {"by": "local_naturalness", "group_by": "prompt_id", "k": 1, "where": None, "higher_is_better": True}
    assert block["selection"] == selection
    assert (block["num_rows_before"], block["num_rows_after"]) == (24, 8)
    # The id hash, recomputed here from its documented definition.
    lines = "".join(f"{r['prompt_id']}\t{r['teacher']}\n" for r in selected)
    assert block["selected_ids_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert meta["source_datasets"] == [f"local-data@fingerprint:{scored._fingerprint}"]

    text = card.text
    winners = {t: sum(1 for r in selected if r["teacher"] == t) for t in "abc"}
    for teacher, n in winners.items():
        if n:
            assert f"| {teacher} | {n} | {100 * n / 8:.1f}% |" in text
    for metric in ("global_naturalness", "local_naturalness", "rsr"):
        assert f"### {metric} (" in text
    assert "![local_naturalness of selected and rejected rows](score_histogram.png)" in text
    assert "hf-localnat select scored.parquet --output selected.parquet" in text  # every option at its default
    assert "2510.03988" in text and "2601.14249" in text  # rsr was computed, so its paper is cited


def test_selection_without_scored_pool_still_gets_a_card(tmp_path: Path) -> None:
    selected = select_responses(scored_pool(), by="rsr")
    push_selection(selected, to_dir=tmp_path / "sel", selection_config=SelectionConfig(by="rsr"))
    card = DatasetCard.load(tmp_path / "sel" / "README.md")
    assert card.data.to_dict()["hf_localnat"]["num_rows_before"] is None
    assert "no teacher ranking" in card.text and not (tmp_path / "sel" / "score_histogram.png").exists()


def test_to_dir_refuses_a_non_empty_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    selected = select_responses(scored_pool(), by="local_naturalness")
    out = tmp_path / "sel"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LocalnatError, match="exists. Pass --overwrite"):
        push_selection(selected, to_dir=out)
    # Even with overwrite, a folder holding files hf_localnat does not write is never replaced.
    with pytest.raises(LocalnatError, match="holds keep.txt, which hf-localnat does not write"):
        push_selection(selected, to_dir=out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sel"]  # no temporary folder left

    (out / "keep.txt").unlink()
    push_selection(selected, to_dir=out)  # an empty folder is as good as none
    first = (out / "README.md").read_text()
    with pytest.raises(LocalnatError, match="exists. Pass --overwrite"):
        push_selection(selected, to_dir=out)
    push_selection(selected, to_dir=out, overwrite=True)  # an earlier selection of ours is replaced
    assert (out / "README.md").read_text() == first
    with pytest.raises(LocalnatError, match="exactly one"):
        push_selection(selected)


def test_cli_push_selection_checks_the_flags_against_the_scored_pool(tmp_path: Path, capsys) -> None:
    scored = scored_pool()
    scored.to_parquet(str(tmp_path / "scored.parquet"))
    select_responses(scored, by="rsr").to_json(str(tmp_path / "selected.jsonl"))
    args = ["push-selection", str(tmp_path / "selected.jsonl"), "--scored", str(tmp_path / "scored.parquet")]

    assert main([*args, "--to_dir", str(tmp_path / "wrong")]) == 2  # selected by rsr, but --by defaults to local
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("hf-localnat: error:") and "--by local_naturalness" in errors[0]
    assert not (tmp_path / "wrong").exists()

    assert main([*args, "--by", "rsr", "--to_dir", str(tmp_path / "ok")]) == 0
    block = DatasetCard.load(tmp_path / "ok" / "README.md").data.to_dict()["hf_localnat"]
    assert block["selection"]["by"] == "rsr" and block["num_rows_before"] == 24
    assert main([*args, "--by", "rsr", "--to_dir", str(tmp_path / "ok"), "--repo_id", "a/b"]) == 2


def test_demo_writes_a_published_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--limit_prompts", "2", "--metrics", "global,local", "--output_dir", str(out)]) == 0
    selection = out / "selection"
    loaded = datasets.load_dataset(str(selection), split="train")
    pool = read_jsonl(demo_pool_path())
    teachers = len({r["teacher"] for r in pool})
    assert len(loaded) == 2 and set(loaded["prompt_id"]) == {r["prompt_id"] for r in pool[: 2 * teachers]}
    block = DatasetCard.load(selection / "README.md").data.to_dict()["hf_localnat"]
    assert block["student"] == "embedded:SmolLM2-135M-Instruct" and block["num_rows_before"] == 2 * teachers
    assert (selection / "score_histogram.png").read_bytes().startswith(PNG_MAGIC)
    assert main(["demo", "--limit_prompts", "2", "--metrics", "global", "--output_dir", str(out)]) == 0  # reruns


# ---------------------------------------------------------------------------------------------------------
# Students, offline
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture()
def trained(tmp_path: Path) -> ReselectingSFTTrainer:
    """One step of reselecting SFT on a tiny model (the tokenizer of ``tiny_student_dir``)."""
    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    pool = datasets.Dataset.from_list(read_jsonl(DEMO_POOL)[:8])
    args = ReselectConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        max_steps=2,  # a round after step 1; none after the last step, which no training follows
        report_to=[],
        save_strategy="no",
        window=2,
        disable_tqdm=True,
        reselect_every_steps=1,
        selection_repo="tester/demo-selection",
    )
    trainer = ReselectingSFTTrainer(
        model=build_model(len(tokenizer)), args=args, candidate_dataset=pool, processing_class=tokenizer
    )
    trainer.train()
    return trainer


def check_student_card(card: ModelCard, history: list[dict]) -> None:
    meta = card.data.to_dict()
    assert meta["base_model"] == "org/tiny-base" and meta["datasets"] == ["tester/demo-selection"]
    assert meta["library_name"] == "transformers"
    assert {"hf-localnat", "distillation", "data-selection", "trl", "sft"} <= set(meta["tags"])
    assert [r["reason"] for r in history] == ["initial", "step"]  # selected before training, re-made at step 1
    assert meta["hf_localnat"]["reselection_rounds"] == 1
    assert "re-made with the\ncurrent student 1 time(s) during training" in card.text
    assert "## Training procedure" in card.text  # TRL's own card is kept ...
    assert "## Distillation data (hf_localnat)" in card.text  # ... and extended, once
    assert card.text.count("## Distillation data (hf_localnat)") == 1
    assert "| `learning_rate` |" in card.text and "| `window` | `2` |" in card.text
    assert "### Reselection history" in card.text and "| 0 | initial | 0 |" in card.text


def test_push_student_from_a_trainer_and_from_its_saved_folder(trained, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = push_student(
        trained, to_dir=tmp_path / "student", selection_repo="tester/demo-selection", base_model="org/tiny-base"
    )
    # The trainer's own card (written by TRL, then extended) plus the saved model and tokenizer.
    check_student_card(ModelCard.load(Path(out) / "README.md"), trained.selection_history)
    assert (Path(out) / "tokenizer_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.num_parameters() == trained.model.num_parameters()

    trained.create_model_card()
    trained.save_model(str(tmp_path / "saved"))
    (tmp_path / "saved" / "README.md").write_text((Path(trained.args.output_dir) / "README.md").read_text())
    command = ["push-student", str(tmp_path / "saved"), "--to_dir", str(tmp_path / "from-folder")]
    command += ["--selection_repo", "tester/demo-selection", "--base_model", "org/tiny-base"]
    assert main(command) == 0
    check_student_card(ModelCard.load(tmp_path / "from-folder" / "README.md"), trained.selection_history)


def test_to_dir_never_replaces_its_own_input(trained, tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    trained.save_model(str(saved))
    for bad, why in ((saved, "is the input"), (saved / "published", "inside the input"), (tmp_path, "holds the input")):
        with pytest.raises(LocalnatError, match=why):
            push_student(saved, to_dir=bad, overwrite=True)
    assert (saved / "config.json").is_file() and not (saved / "published").exists()
    with pytest.raises(LocalnatError, match="training folder"):  # a trainer's output_dir holds its checkpoints
        push_student(trained, to_dir=trained.args.output_dir, overwrite=True)


def test_selected_rows_must_come_from_the_scored_pool(tmp_path: Path) -> None:
    selected = select_responses(scored_pool(seed=1), by="local_naturalness")
    foreign = selected.map(lambda row: {"response": row["response"] + " (edited)"})
    with pytest.raises(LocalnatError, match="8 selected row"):
        push_selection(foreign, to_dir=tmp_path / "sel", scored=scored_pool(seed=1))
    assert not (tmp_path / "sel").exists()


def test_trainer_model_card_extends_trl_card(trained) -> None:
    trained.create_model_card()
    card = ModelCard.load(Path(trained.args.output_dir) / "README.md")
    meta = card.data.to_dict()
    assert meta["datasets"] == ["tester/demo-selection"] and "hf-localnat" in meta["tags"]
    assert "## Training procedure" in card.text and "### Reselection history" in card.text


# ---------------------------------------------------------------------------------------------------------
# Uploads, through the real huggingface_hub client to the HTTP test Hub (tests/hub_server.py)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture()
def no_wait(monkeypatch) -> None:
    monkeypatch.setattr("hf_localnat.hub.RETRY_WAIT_S", 0.0)


def test_push_selection_uploads_one_commit_that_loads_back(hub_server) -> None:
    from huggingface_hub import hf_hub_download

    scored = scored_pool()
    selected = select_responses(scored, by="local_naturalness")
    url = push_selection(selected, repo_id="tester/math-selection", scored=scored)
    assert url.endswith("/datasets/tester/math-selection")

    files = hub_server.files("tester/math-selection", "dataset")
    assert {"README.md", "score_histogram.png", "data/train-00000-of-00001.parquet"} <= set(files)
    assert files["score_histogram.png"].startswith(PNG_MAGIC)
    assert len(hub_server.commits("tester/math-selection", "dataset")) == 2  # the repo's initial commit + ours
    loaded = datasets.load_dataset("tester/math-selection", split="train")
    assert rows_of(loaded) == rows_of(selected)
    card = DatasetCard.load(hf_hub_download("tester/math-selection", "README.md", repo_type="dataset"))
    assert card.data.to_dict()["hf_localnat"]["num_rows_after"] == len(selected)
    # A second push replaces the first: files it no longer has (here the histogram) are deleted in that commit.
    push_selection(selected, repo_id="tester/math-selection")
    assert "score_histogram.png" not in hub_server.files("tester/math-selection", "dataset")
    assert rows_of(datasets.load_dataset("tester/math-selection", split="train", download_mode="force_redownload")) == (
        rows_of(selected)
    )
    assert not hub_server.blocked and not hub_server.errors


def test_upload_errors_are_one_line_and_leave_no_repo(hub_server, monkeypatch, no_wait) -> None:
    selected = select_responses(scored_pool(), by="local_naturalness")

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(LocalnatError, match="no Hugging Face token"):
        push_selection(selected, repo_id="tester/a")
    assert hub_server.requests == []  # refused before anything was built or sent
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    hub_server.add_foreign_repo("other-org/taken", "dataset", files={"README.md": "theirs"})
    with pytest.raises(LocalnatError, match="cannot write to namespace 'other-org'"):
        push_selection(selected, repo_id="other-org/taken")
    assert hub_server.files("other-org/taken", "dataset")["README.md"] == b"theirs"

    # The Hub refuses the write itself (403): the repo this call created is deleted again.
    hub_server.fail_next("POST", r"/api/datasets/tester/denied/(preupload|commit)/", times=5, status=403)
    with pytest.raises(LocalnatError, match="refused the upload"):
        push_selection(selected, repo_id="tester/denied")
    assert not hub_server.repo_exists("tester/denied", "dataset")

    # A network that keeps failing: three attempts, then one line, and no half-made repo.
    hub_server.fail_next("POST", r"/api/datasets/tester/flaky/commit/", times=3, status=503)
    with pytest.raises(LocalnatError, match="failed after 3 attempts"):
        push_selection(selected, repo_id="tester/flaky")
    assert not hub_server.repo_exists("tester/flaky", "dataset")
    assert not hub_server.blocked and not hub_server.errors


@pytest.mark.parametrize("drop", [False, True], ids=["http-500", "dropped-connection"])
def test_a_failure_mid_upload_is_retried(hub_server, no_wait, drop: bool) -> None:
    selected = select_responses(scored_pool(), by="local_naturalness")
    hub_server.fail_next("POST", r"/api/datasets/tester/retry/commit/", times=1, status=500, drop=drop)
    push_selection(selected, repo_id="tester/retry")
    commits = [r for r in hub_server.requests if r[0] == "POST" and "/commit/" in r[1]]
    assert len(commits) == 2
    assert rows_of(datasets.load_dataset("tester/retry", split="train")) == rows_of(selected)


def test_push_student_uploads_model_and_card(hub_server, trained, tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM

    push_student(trained, repo_id="tester/student", selection_repo="tester/demo-selection", base_model="org/tiny-base")
    folder = Path(snapshot_download("tester/student", local_dir=tmp_path / "download"))
    check_student_card(ModelCard.load(folder / "README.md"), trained.selection_history)
    assert AutoModelForCausalLM.from_pretrained(folder).num_parameters() == trained.model.num_parameters()


def test_cli_push_selection_to_the_hub(hub_server, tmp_path: Path, capsys) -> None:
    scored = scored_pool()
    scored.to_parquet(str(tmp_path / "scored.parquet"))
    select_responses(scored, by="rsr").to_json(str(tmp_path / "selected.jsonl"))
    args = ["push-selection", str(tmp_path / "selected.jsonl"), "--scored", str(tmp_path / "scored.parquet")]
    assert main([*args, "--by", "rsr", "--repo_id", "tester/cli-selection"]) == 0
    assert "tester/cli-selection" in capsys.readouterr().out
    assert len(datasets.load_dataset("tester/cli-selection", split="train")) == 8
