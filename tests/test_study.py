"""``hf-localnat study``: equal training sets, the contamination guard, the paired statistics against a slow
reference, and the command end to end on a tiny random student (a couple of training steps per arm), resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import DEMO_POOL, build_model, build_tokenizer, read_jsonl

import hf_localnat.evaluation as evaluation
import hf_localnat.study as study
from hf_localnat.cli import main
from hf_localnat.errors import LocalnatError
from hf_localnat.selection import SelectionConfig, select_responses
from hf_localnat.statistics import BOOTSTRAP_CHUNK_VALUES
from hf_localnat.study import (
    Arm,
    accuracy_row,
    arm_picks,
    check_overlap,
    normalise_text,
    paired_differences,
    parse_arms,
    plan_study,
)

# Renders every role, so the prompt alone is a prefix of prompt + completion (what TRL's completion mask needs).
ROLE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def synthetic_pool() -> datasets.Dataset:
    """6 prompts x 3 teachers, scored at random, with filter failures chosen to exercise every count.

    p0..p3: every row correct; p0 has one rsr score (short under rsr with k=2).
    p4: only teacher c correct (the top teacher's response fails the filter).
    p5: no correct row (left without candidates by the filter).
    """
    rng = np.random.default_rng(1)
    rows = []
    for p in range(6):
        for t in "abc":
            correct = p < 4 or (p == 4 and t == "c")
            rows.append(
                {
                    "prompt_id": f"p{p}",
                    "prompt": f"Problem {p}?",
                    "teacher": t,
                    "response": f"{t} answers {p}.",
                    "correct": correct,
                    "rsr": float(rng.uniform(1, 3)),
                    # teacher a is the most natural everywhere, so best_teacher ranks it first
                    "local_naturalness": {"a": -0.5, "b": -1.5, "c": -2.5}[t] + float(rng.normal(0, 0.1)),
                }
            )
    rows[1]["rsr"] = rows[2]["rsr"] = None  # p0, teachers b and c: unscored under rsr
    return datasets.Dataset.from_list(rows)


ARMS = "rsr,local_naturalness,random,best_teacher,oracle"


@pytest.mark.parametrize("k", [1, 2])
def test_every_arm_gets_the_same_number_of_rows_and_the_left_out_prompts_are_counted(k):
    pool = synthetic_pool()
    selection = SelectionConfig(k=k, where="correct == True")
    plan = plan_study(pool, parse_arms(ARMS, pool.column_names), selection, seed=3, best_teacher_by="local_naturalness")
    keys = pool["prompt_id"]
    used = {"p0", "p1", "p2", "p3", "p4"} if k == 1 else {"p1", "p2", "p3"}  # k=2: p0 has 1 rsr pick, p4 1 row
    assert {len(rows) for rows in plan.rows.values()} == {len(used) * k}
    for name, rows in plan.rows.items():
        assert [keys[r] for r in rows] == [p for p in sorted(used) for _ in range(k)], name
        assert all(pool["correct"][r] for r in rows), name  # the filter holds in every arm
    assert plan.prompts == {
        "in_pool": 6, "used": len(used), "without_candidates": 1, "short": 5 - len(used),
        "per_arm": plan.prompts["per_arm"],
    }  # fmt: skip
    assert plan.prompts["per_arm"]["rsr"]["none"] == 1  # p5
    # A metric arm is select_responses' selection on the prompts kept (the one core, top_k_per_group).
    for metric in ("rsr", "local_naturalness"):
        reference = select_responses(pool, by=metric, k=k, where="correct == True")
        expected = [(row["prompt_id"], row["teacher"]) for row in reference if row["prompt_id"] in used]
        assert [(keys[r], pool["teacher"][r]) for r in plan.rows[metric]] == expected
    # best_teacher: teacher a where its response passes; on p4 (a fails) the next-ranked passing teacher.
    teachers = [pool["teacher"][r] for r in plan.rows["best_teacher"]]
    notes = plan.notes["best_teacher"]
    assert notes["top_teacher"] == "a" and notes["ranking"] == ["a", "b", "c"]
    if k == 1:
        assert teachers == ["a", "a", "a", "a", "c"] and notes["fallback_prompts"] == 1
    else:
        assert teachers == ["a", "b"] * 3 and notes["fallback_prompts"] == 0
    # random and oracle are seeded: the same seed gives the same picks, another seed (eventually) others.
    again = plan_study(
        pool, parse_arms(ARMS, pool.column_names), selection, seed=3, best_teacher_by="local_naturalness"
    )
    assert {n: r.tolist() for n, r in again.rows.items()} == {n: r.tolist() for n, r in plan.rows.items()}
    picks = [arm_picks(pool, Arm("random", "random"), selection, seed=s)[0].tolist() for s in range(3, 12)]
    assert any(p != picks[0] for p in picks[1:])


def test_oracle_without_a_filter_picks_correct_responses_where_they_exist_and_arms_are_checked():
    pool = synthetic_pool()
    plan = plan_study(pool, parse_arms("oracle,random", pool.column_names), SelectionConfig(k=1))
    picked = {pool["prompt_id"][r]: pool["correct"][r] for r in plan.rows["oracle"]}
    assert picked == {"p0": True, "p1": True, "p2": True, "p3": True, "p4": True, "p5": False}  # p5: none correct
    assert plan.prompts["used"] == 6 and plan.prompts["short"] == 0  # adding oracle leaves every arm its prompts
    assert plan.notes["oracle"]["incorrect_prompts"] == 1
    k2 = plan_study(pool, parse_arms("oracle", pool.column_names), SelectionConfig(k=2))
    assert k2.notes["oracle"]["incorrect_prompts"] == 2  # p4 has one correct response, p5 none
    assert [pool["prompt_id"][r] for r in k2.rows["oracle"][8:10]] == ["p4", "p4"]
    assert "c" in [pool["teacher"][r] for r in k2.rows["oracle"][8:10]]  # p4's one correct response is picked
    with pytest.raises(LocalnatError, match="more than once"):
        parse_arms("rsr,rsr", pool.column_names)
    with pytest.raises(LocalnatError, match="is not one of random, best_teacher, oracle"):
        parse_arms("rsr,lalp", pool.column_names)
    with pytest.raises(LocalnatError, match="always evaluated"):
        parse_arms("untrained", pool.column_names)
    # A column whose name does not say its direction needs --higher_is_better, which then applies to it only.
    with pytest.raises(LocalnatError, match="--higher_is_better true"):
        parse_arms("reward", ["reward"])
    arms = parse_arms("reward,rsr", ["reward", "rsr"], higher_is_better=True)
    assert [(a.metric, a.higher) for a in arms] == [("reward", True), ("rsr", False)]


def test_contamination_guard_normalises_and_names_how_many_matched():
    prompts = ["Janet’s ducks lay 16 eggs per day.", "What is 2+2?"]
    problems = ["JANET'S DUCKS  lay 16 eggs, per day", "What is 3+3?", "what is 2 + 2 ?"]
    assert normalise_text(problems[0]) == normalise_text(prompts[0])
    with pytest.raises(LocalnatError, match=r"2 of 3 problems \(rows 0, 2\) match a prompt of --pool pool"):
        check_overlap(problems, prompts, "bench", "pool", allow=False)
    assert check_overlap(problems, prompts, "bench", "pool", allow=True) == [0, 2]
    assert check_overlap(problems[1:2], prompts, "bench", "pool", allow=False) == []
    # Symbols are kept: a different operator is a different problem.
    assert check_overlap(["What is 1/2 − 1/3?"], ["What is 1/2 + 1/3?"], "bench", "pool", allow=False) == []


def test_main_decides_stops_every_process_when_the_main_one_fails(monkeypatch):
    """Under accelerate, the other processes wait for the main one's result: any failure there must reach them."""
    import accelerate.utils

    from hf_localnat.distributed import main_decides

    sent = []

    class State:
        num_processes = 2

        def __init__(self, main):
            self.is_main_process = main

    def broadcast(box, from_process=0):
        if sent:  # a non-main process receives what the main one sent
            box[0] = sent[-1]
        else:
            sent.append(box[0])
        return box

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast)

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        main_decides(State(True), fail)
    with pytest.raises(RuntimeError, match=r"the main process failed \(OSError: disk full\)"):
        main_decides(State(False), fail)
    sent.clear()
    with pytest.raises(LocalnatError, match="bad flag"):
        main_decides(State(True), lambda: (_ for _ in ()).throw(LocalnatError("bad flag")))
    with pytest.raises(LocalnatError, match="bad flag"):
        main_decides(State(False), fail)
    sent.clear()
    assert main_decides(State(True), lambda: 7) == 7 and main_decides(State(False), fail) == 7


def slow_paired_reference(table: np.ndarray, baseline: int, n_bootstrap: int, seed: int) -> list[dict]:
    """An explicit loop over resamples, drawing the same indices (one default_rng(seed) draw per chunk)."""
    n, arms = table.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CHUNK_VALUES // n)
    indices = np.concatenate(
        [rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n)) for start in range(0, n_bootstrap, chunk)]
    )
    out = []
    for arm in range(arms):
        deltas = []
        for b in range(n_bootstrap):
            total = 0.0
            for i in indices[b]:
                total += table[i, arm] - table[i, baseline]
            deltas.append(total / n)
        low, high = np.percentile(deltas, [2.5, 97.5])
        wins = sum(1 for i in range(n) if table[i, arm] == 1 and table[i, baseline] == 0)
        losses = sum(1 for i in range(n) if table[i, arm] == 0 and table[i, baseline] == 1)
        above = sum(1 for d in deltas if d > 0) / n_bootstrap
        difference = sum(table[:, arm]) / n - sum(table[:, baseline]) / n
        out.append({"difference": difference, "ci_low": low, "ci_high": high, "wins": wins, "losses": losses,
                    "share_above_zero": above})  # fmt: skip
    return out


@pytest.mark.parametrize(("n", "seed"), [(7, 0), (40, 5)])
def test_paired_bootstrap_and_wilson_match_slow_references(n, seed):
    rng = np.random.default_rng(seed + 100)
    table = (rng.random((n, 4)) < [0.2, 0.5, 0.6, 0.9]).astype(float)
    got = paired_differences(table, baseline=1, n_bootstrap=300, seed=seed)
    want = slow_paired_reference(table, 1, 300, seed)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-12)
    assert got[1]["difference"] == 0.0 and got[1]["ci_low"] == got[1]["ci_high"] == 0.0  # the baseline itself
    z = 1.959963984540054
    for column in range(4):
        right = int(table[:, column].sum())
        p = right / n
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        row = accuracy_row(table[:, column])
        assert row["accuracy"] == p and row["num_correct"] == right and row["num_problems"] == n
        assert row["ci_low"] == pytest.approx(0.0 if right == 0 else centre - half, abs=1e-12)
        assert row["ci_high"] == pytest.approx(1.0 if right == n else centre + half, abs=1e-12)


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    tokenizer = build_tokenizer(chat_template=ROLE_TEMPLATE)
    path = tmp_path_factory.mktemp("study-student")
    build_model(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    rows = read_jsonl(DEMO_POOL)[: 4 * 4]  # 4 prompts x 4 teachers
    rng = np.random.default_rng(0)
    for i, row in enumerate(rows):
        row.update(rsr=float(rng.uniform(1, 3)), local_naturalness=float(rng.normal(-2, 0.5)), correct=i % 5 != 3)
    pool = tmp_path / "pool.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pool))
    bench = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(3)]
    held_out = tmp_path / "bench.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in bench))
    overlapping = tmp_path / "overlap.jsonl"
    overlapping.write_text(
        "".join(json.dumps(r) + "\n" for r in [*bench, {"question": rows[0]["prompt"], "answer": "1"}])
    )
    return {"pool": pool, "bench": held_out, "overlap": overlapping}


def study_argv(files: dict[str, Path], out: Path, student: Path, *extra: str, bench: str = "bench") -> list[str]:
    return [
        "study", "--pool", str(files["pool"]), "--benchmark", str(files[bench]), "--student", str(student),
        "--output_dir", str(out), "--arms", "rsr,random,best_teacher,local_naturalness+reselect",
        "--where", "correct == True", "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
        "--max_new_tokens", "6", "--batch_size", "4", "--window", "2", "--reselect_every_steps", "1",
        "--gradient_checkpointing", "false", "--n_bootstrap", "200", *extra,
    ]  # fmt: skip


def test_study_command_end_to_end_resumes_and_guards(tmp_path, files, student_dir, capsys, monkeypatch):
    out = tmp_path / "study"
    # The guard: a benchmark problem that is a pool prompt stops the study before anything is trained.
    assert main(study_argv(files, out, student_dir, bench="overlap")) == 2
    assert "1 of 4 problems (rows 3) match a prompt of --pool" in capsys.readouterr().err
    assert not (out / "arms").exists()

    assert main(study_argv(files, out, student_dir, "--allow_overlap", "true", bench="overlap")) == 0
    results = json.loads((out / "results.json").read_text())
    names = [row["arm"] for row in results["arms"]]
    assert names == ["untrained", "rsr", "random", "best_teacher", "local_naturalness+reselect"]
    assert results["overlap"] == {"allowed": True, "num_matched": 1, "rows": [3]}
    assert "**Overlap:** 1 benchmark problems match" in (out / "results.md").read_text()
    trained = [row for row in results["arms"] if row["arm"] != "untrained"]
    assert {row["num_train_rows"] for row in trained} == {results["prompts"]["used"]} and results["prompts"]["used"] > 0
    assert all(row["global_step"] == 2 for row in trained)
    assert all(row["num_problems"] == 4 for row in results["arms"])
    baseline = next(row for row in results["arms"] if row["arm"] == "random")
    assert baseline["difference"] == 0.0 and baseline["wins"] == baseline["losses"] == 0
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in trained:
        arm = out / "arms" / row["arm"]
        card = (arm / "selection" / "README.md").read_text()
        shards = sorted(str(p) for p in (arm / "selection" / "data").glob("*.parquet"))
        assert "hf_localnat:" in card and len(datasets.Dataset.from_parquet(shards)) == row["num_train_rows"]
        if row["arm"] in ("random", "best_teacher"):  # no score column ranks them: the card says how they were made
            chosen = card.split("chosen by", 1)[1].split("\n\n", 1)[0]
            assert "better" not in chosen and "does not reproduce them" in card and "hf-localnat select" in card
            assert ("seeded random candidates" if row["arm"] == "random" else "the teacher ranked first") in chosen
        else:
            assert "hf-localnat select scored.parquet" in card
        assert (arm / "model" / "config.json").is_file() and not (arm / "train").exists()
        assert len((arm / "eval.jsonl").read_text().splitlines()) == 4 and (arm / "done.json").is_file()
    assert (out / "arms" / "local_naturalness+reselect" / "model" / "selection_history.jsonl").read_text().count(
        "\n"
    ) >= 2

    # push-student of an arm links its selection folder in the card's datasets.
    published = tmp_path / "published"
    assert main(["push-student", str(out / "arms" / "rsr" / "model"), "--to_dir", str(published)]) == 0
    card = (published / "README.md").read_text()
    assert str((out / "arms" / "rsr" / "selection").resolve()) in card

    # A rerun trains and evaluates nothing, and touches no marker.
    marks = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/done.json")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished arm was redone")

    monkeypatch.setattr(study, "_train_arm", refuse)
    monkeypatch.setattr(evaluation, "run_evaluate", refuse)
    capsys.readouterr()
    assert main(study_argv(files, out, student_dir, "--allow_overlap", "true", bench="overlap")) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("arms/*/done.json")} == marks
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]
    # --hub_prefix added after training: nothing is retrained, and the model cards now link the Hub ids.
    assert main(study_argv(files, out, student_dir, "--allow_overlap", "true", "--hub_prefix", "me/study",
                           bench="overlap")) == 0  # fmt: skip
    assert "me/study-rsr" in (out / "arms" / "rsr" / "model" / "README.md").read_text()
    # Other training settings for finished arms are refused, naming what changed.
    assert main(study_argv(files, out, student_dir, "--allow_overlap", "true", "--learning_rate", "2e-3",
                           bench="overlap")) == 2  # fmt: skip
    assert "learning_rate (0.001 -> 0.002)" in capsys.readouterr().err


def test_an_interrupted_arm_is_redone_and_the_finished_ones_are_kept(tmp_path, files, student_dir, monkeypatch):
    import transformers
    import trl

    out = tmp_path / "study"
    argv = [*study_argv(files, out, student_dir), "--arms", "rsr,random", "--save_strategy", "steps",
            "--save_steps", "1"]  # fmt: skip
    # Stopped while the selections are being written: the folder is still the study's, and a rerun goes on.
    real_write = study._write_selection
    writes = []

    def write_then_stop(state, *args):
        writes.append(state.arm.name)
        if len(writes) == 2:
            raise KeyboardInterrupt
        return real_write(state, *args)

    monkeypatch.setattr(study, "_write_selection", write_then_stop)
    assert main(argv) == 130
    monkeypatch.setattr(study, "_write_selection", real_write)

    # Stopped in the second arm's training, after its first checkpoint: a rerun resumes it from there.
    real_save, real_train = transformers.Trainer._save_checkpoint, trl.SFTTrainer.train
    calls, resumed = [], []

    def save_then_stop(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        if Path(self.args.output_dir).parent.name == "random" and not calls:
            calls.append(self.state.global_step)
            raise KeyboardInterrupt

    def train(self, *args, resume_from_checkpoint=None, **kwargs):
        resumed.append((Path(self.args.output_dir).parent.name, resume_from_checkpoint))
        return real_train(self, *args, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", save_then_stop)
    monkeypatch.setattr(trl.SFTTrainer, "train", train)
    assert main(argv) == 130
    assert calls == [1]
    assert (out / "arms" / "rsr" / "model" / "config.json").is_file()
    assert not (out / "arms" / "random" / "model").exists() and not (out / "results.json").exists()
    assert main(argv) == 0
    assert resumed == [("rsr", None), ("random", None), ("random", True)]  # rsr was not trained again
    done = json.loads((out / "arms" / "random" / "done.json").read_text())
    assert done["training"]["global_step"] == 2
    assert [row["arm"] for row in json.loads((out / "results.json").read_text())["arms"]] == [
        "untrained",
        "rsr",
        "random",
    ]


def test_study_under_accelerate_launch_trains_every_arm_on_both_processes(tmp_path, files, student_dir):
    """``accelerate launch -m hf_localnat study`` (two CPU processes): every arm trains on both, the main one
    evaluates and reports."""
    from conftest import run_accelerate

    out = tmp_path / "study"
    argv = [*study_argv(files, out, student_dir), "--arms", "rsr,local_naturalness+reselect", "--baseline", "rsr"]
    done = run_accelerate(["-m", "hf_localnat", *argv], tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert [row["arm"] for row in results["arms"]] == ["untrained", "rsr", "local_naturalness+reselect"]
    for row in results["arms"][1:]:
        assert row["global_step"] == 2 and row["num_problems"] == 3
        recorded = json.loads((out / "arms" / row["arm"] / "selection.json").read_text())
        assert recorded["train_settings"]["num_processes"] == 2  # part of the arm's key: a 1-process rerun redoes it
        assert (out / "arms" / row["arm"] / "model" / "config.json").is_file()
