"""ReselectingSFTTrainer and ReselectCallback on CPU: when rounds happen, that the selection follows the model,
loss masking, checkpoint resume, two processes, the ``train`` command, and the embedded SmolLM2 end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import datasets
import pytest
import torch
from conftest import DEMO_POOL, build_model, build_tokenizer, read_jsonl, run_accelerate
from transformers import AutoModelForCausalLM, TrainerCallback

from hf_localnat import LocalnatError
from hf_localnat.cli import main
from hf_localnat.metrics import prompt_ids
from hf_localnat.trainer import ReselectConfig, ReselectingSFTTrainer
from trainer_callbacks import ReselectCallback, SelectionState
from trainer_callbacks.history import HISTORY_FILE
from trainer_callbacks.reselect import STATE_FILE

TIMING = ("seconds", "share_of_training_time")  # the only fields of a round record that vary between runs
TEACHERS = 4  # the demo pool has 4 teachers per prompt, in prompt order


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    """The conftest tokenizer (same vocabulary as ``tiny_student_dir``), with the padding training needs."""
    tok = build_tokenizer()
    tok.pad_token = tok.eos_token
    return tok


def demo_rows(num_prompts: int, first: int = 0) -> list[dict]:
    rows = read_jsonl(DEMO_POOL)[first * TEACHERS : (first + num_prompts) * TEACHERS]
    assert len({r["prompt_id"] for r in rows}) == num_prompts and len(rows) == num_prompts * TEACHERS
    return rows


def demo_pool(num_prompts: int, first: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_list(demo_rows(num_prompts, first))


def make_trainer(output_dir: Path, tokenizer, pool, callbacks=None, trainer_class=ReselectingSFTTrainer, **overrides):
    """A trainer on a fresh tiny model (always the same weights: those of ``tiny_student_dir``)."""
    settings = dict(
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        window=2,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    args = ReselectConfig(output_dir=str(output_dir), **{**settings, **overrides})
    model = build_model(len(tokenizer))
    trainer = trainer_class(
        model=model, args=args, candidate_dataset=pool, processing_class=tokenizer, callbacks=callbacks
    )
    for callback in callbacks or []:
        if isinstance(callback, SelectionRecorder):
            callback.reselect = trainer.reselect_callback
    return trainer


class SelectionRecorder(TrainerCallback):
    """Snapshots of the selection when training starts and after every step (after that step's round)."""

    def __init__(self) -> None:
        self.reselect: ReselectCallback | None = None
        self.at_begin: list[int] | None = None
        self.selected: dict[int, list[int]] = {}
        self.scores: dict[int, list[float | None]] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.at_begin = list(self.reselect.state.selected)

    def on_step_end(self, args, state, control, **kwargs):
        self.selected[state.global_step] = list(self.reselect.state.selected)
        self.scores[state.global_step] = list(self.reselect.state.scores)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def read_history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / HISTORY_FILE).read_text().splitlines()]


def assert_same_scores(got: list[float | None], want: list[float | None]) -> None:
    assert [v is None for v in got] == [v is None for v in want]
    assert [v for v in got if v is not None] == pytest.approx([v for v in want if v is not None], abs=1e-5)


def assert_same_round(got: dict, want: dict) -> None:
    """Two runs' records of one round: equal, the selected score up to float noise, timings aside."""
    got, want = without_timing([got])[0], without_timing([want])[0]
    assert got.pop("mean_selected_score") == pytest.approx(want.pop("mean_selected_score"), abs=1e-5)
    assert got == want


def collate(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)

    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([pad(e["input_ids"], pad_token_id) for e in examples]),
        "labels": torch.tensor([pad(e["labels"], -100) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in examples]),
    }


# ---------------------------------------------------------------------------------------------------------
# 1. Rounds happen when configured
# ---------------------------------------------------------------------------------------------------------


def test_rounds_every_n_steps_in_history_file_and_logs(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, demo_pool(8), reselect_every_steps=2, max_steps=6)
    trainer.train()
    history = trainer.selection_history
    assert [r["step"] for r in history] == [0, 2, 4]  # none after the last step: it would train on nothing
    assert [r["reason"] for r in history] == ["initial", "step", "step"]
    assert [r["round"] for r in history] == [0, 1, 2]
    assert [r["rescored_prompts"] for r in history] == [8, 8, 8]
    assert history[0]["changed_prompts"] == history[0]["changed_slots"] == 0
    for record in history:
        assert sum(record["teacher_shares"].values()) == pytest.approx(1.0)
        assert set(record["teacher_shares"]) <= set(trainer.reselect_callback.pool["teacher"])
    assert read_history(tmp_path) == history

    logs = trainer.state.log_history
    rounds = [e for e in logs if "reselect/changed_prompts" in e]
    assert [e["step"] for e in rounds] == [0, 2, 4]
    assert [e["reselect/changed_prompts"] for e in rounds] == [r["changed_prompts"] for r in history]
    for entry, record in zip(rounds, history, strict=True):
        for teacher, share in record["teacher_shares"].items():
            assert entry[f"reselect/share/{teacher}"] == pytest.approx(share)
    # A round's log neither replaces the loss log due at its step nor takes SFTTrainer's token metrics.
    losses = [e for e in logs if "loss" in e]
    assert [e["step"] for e in losses] == [1, 2, 3, 4, 5, 6]
    assert all("mean_token_accuracy" in e for e in losses)
    assert not any("mean_token_accuracy" in e or "loss" in e for e in rounds)


def test_rounds_at_epoch_ends_except_the_last(tmp_path, tokenizer):
    # 8 prompts, batch 4: 2 steps per epoch.
    trainer = make_trainer(tmp_path, tokenizer, demo_pool(8), reselect_every="epoch", num_train_epochs=3)
    trainer.train()
    assert trainer.state.global_step == 6
    history = trainer.selection_history
    assert [r["reason"] for r in history] == ["initial", "epoch", "epoch"]
    assert [r["step"] for r in history] == [0, 2, 4]
    assert [r["epoch"] for r in history] == [0, 1.0, 2.0]
    assert read_history(tmp_path) == history


def test_fraction_rescores_that_share_of_prompts(tmp_path, tokenizer):
    recorder = SelectionRecorder()
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        demo_pool(8),
        [recorder],
        reselect_every_steps=2,
        reselect_fraction=0.25,
        max_steps=6,
        learning_rate=1e-2,
    )
    trainer.train()
    history = trainer.selection_history
    assert [r["rescored_prompts"] for r in history] == [8, 2, 2]  # every prompt first, then 25% per round
    pool = trainer.reselect_callback.pool
    for step in (2, 4):  # exactly 2 prompts got new scores in the round of this step; the others kept theirs
        before, after = recorder.scores[step - 1], recorder.scores[step]
        assert None not in after
        rescored = {pool[row]["prompt_id"] for row in range(len(pool)) if before[row] != after[row]}
        assert len(rescored) == 2
        assert history[step // 2]["changed_prompts"] <= 2


@pytest.mark.parametrize("workers", [0, 1])
def test_every_batch_serves_the_current_selection(tmp_path, tokenizer, workers):
    """Batches built before a round (accelerate holds the next batch; workers hold whole copies) are rebuilt."""
    trained: list[tuple[int, bool]] = []

    class Spy(ReselectingSFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            callback = self.reselect_callback
            current = {tuple(callback.example(row)["input_ids"]) for row in callback.state.selected}
            for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), strict=True):
                sequence = tuple(i for i, m in zip(ids, mask, strict=True) if m)
                trained.append((self.state.global_step, sequence in current))
            return super().training_step(model, inputs, *args, **kwargs)

    # 24 prompts, batch 4: 6 steps per epoch, so rounds happen inside an epoch.
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        demo_pool(24),
        trainer_class=Spy,
        reselect_every_steps=2,
        max_steps=6,
        learning_rate=1e-2,
        dataloader_num_workers=workers,
    )
    trainer.train()
    assert sum(r["changed_slots"] for r in trainer.selection_history[1:]) > 0  # some round swapped rows
    assert len(trained) == 6 * 4
    assert [step for step, current in trained if not current] == []


# ---------------------------------------------------------------------------------------------------------
# 2. The selection follows the model
# ---------------------------------------------------------------------------------------------------------


def test_selection_follows_the_model(tokenizer):
    torch.manual_seed(0)
    pool = demo_pool(12)
    model = build_model(len(tokenizer))
    callback = ReselectCallback(pool, tokenizer, by="local_naturalness", window=2)
    before = callback.run_round(model)["teacher_shares"]
    teachers = sorted(set(pool["teacher"]))
    target = min(teachers, key=lambda t: (before.get(t, 0.0), t))  # the least selected teacher now
    assert before.get(target, 0.0) < 0.5

    # Fine-tune hard on that teacher's responses, formatted exactly as the trainer would feed them.
    examples = [callback.example(row) for row, teacher in enumerate(pool["teacher"]) if teacher == target]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(30):
        batch = [examples[(step * 4 + j) % len(examples)] for j in range(4)]
        model(**collate(batch, tokenizer.pad_token_id)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    after = callback.run_round(model)
    assert after["reason"] == "step" and after["rescored_prompts"] == 12
    assert after["teacher_shares"].get(target, 0.0) > max(before.get(target, 0.0), 0.5)
    assert after["changed_prompts"] > 0


# ---------------------------------------------------------------------------------------------------------
# 3. Loss masking
# ---------------------------------------------------------------------------------------------------------


def test_example_masks_exactly_the_prompt(tokenizer):
    pool = demo_pool(3)
    callback = ReselectCallback(pool, tokenizer, window=2)
    eos = tokenizer.eos_token_id
    for row in range(len(pool)):
        prompt = prompt_ids(tokenizer, pool[row]["prompt"])
        response = tokenizer(pool[row]["response"], add_special_tokens=False)["input_ids"] + [eos]
        example = callback.example(row)
        assert example["input_ids"] == prompt + response
        assert example["labels"] == [-100] * len(prompt) + response
        assert -100 not in response

    prompt = prompt_ids(tokenizer, pool[0]["prompt"])
    response = tokenizer(pool[0]["response"], add_special_tokens=False)["input_ids"] + [eos]
    cut = ReselectCallback(pool, tokenizer, max_length=len(prompt) + 5, window=2).example(0)
    assert cut["input_ids"] == (prompt + response)[: len(prompt) + 5]
    assert cut["labels"] == [-100] * len(prompt) + response[:5]
    inside = ReselectCallback(pool, tokenizer, max_length=len(prompt) - 2, window=2).example(0)
    assert inside["input_ids"] == prompt[:-2] and inside["labels"] == [-100] * (len(prompt) - 2)


@pytest.mark.parametrize("max_length", [1024, 100])  # 100: inside every response
def test_train_batches_mask_prompt_and_padding(tmp_path, tokenizer, max_length):
    pool = demo_pool(8)
    trainer = make_trainer(tmp_path, tokenizer, pool, max_length=max_length, reselect_every_steps=2, max_steps=2)
    callback = trainer.reselect_callback
    row_of = {tuple(callback.example(r)["input_ids"]): r for r in range(len(pool))}
    batch = next(iter(trainer.get_train_dataloader()))
    input_ids, labels, mask = batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()
    assert len(input_ids) == 4 and len(input_ids[0]) <= max_length
    lengths = []
    for ids, lab, att in zip(input_ids, labels, mask, strict=True):
        n = sum(att)
        lengths.append(n)
        assert att == [1] * n + [0] * (len(att) - n)  # right padding
        row = row_of[tuple(ids[:n])]
        assert row in callback.state.selected
        prompt = len(prompt_ids(tokenizer, pool[row]["prompt"]))
        assert lab[:prompt] == [-100] * prompt  # the prompt
        assert lab[n:] == [-100] * (len(lab) - n)  # the padding
        assert lab[prompt:n] == ids[prompt:n]  # the response: learned, EOS included
        assert prompt < n
        if n < max_length:
            assert lab[n - 1] == tokenizer.eos_token_id  # EOS is learned even though it is the pad token
    if max_length == 1024:
        assert min(lengths) < max(lengths)  # some padding
    else:
        assert lengths == [max_length] * 4  # every example truncated
    trainer.train()  # the same batches train
    assert trainer.state.global_step == 2


# ---------------------------------------------------------------------------------------------------------
# 4. Resume from a checkpoint
# ---------------------------------------------------------------------------------------------------------

RESUME_SETTINGS = dict(
    reselect_every_steps=2, reselect_fraction=0.5, max_steps=6, save_strategy="steps", save_steps=3, learning_rate=1e-2
)


def test_resume_continues_the_saved_selection(tmp_path, tokenizer):
    pool = demo_pool(8)
    first = SelectionRecorder()
    run_a = make_trainer(tmp_path / "a", tokenizer, pool, [first], **RESUME_SETTINGS)
    run_a.train()
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert (checkpoint / STATE_FILE).is_file() and (tmp_path / "a" / "checkpoint-6" / STATE_FILE).is_file()
    saved = SelectionState.load(checkpoint)
    assert [r["step"] for r in saved.history] == [0, 2]
    assert saved.history == run_a.selection_history[:2]
    assert saved.selected == first.selected[3]
    assert_same_scores(saved.scores, first.scores[3])

    fresh = ReselectCallback(pool, tokenizer, window=2)
    assert fresh.restore(checkpoint) is True
    assert fresh.state == saved
    assert ReselectCallback(pool, tokenizer, window=2).restore(tmp_path) is False  # no saved selection there

    # B: a fresh model from the same weights, resumed from an explicit checkpoint into another folder.
    # C: a copy of A's folder without its last checkpoint, resumed with resume_from_checkpoint=True.
    shutil.copytree(tmp_path / "a", tmp_path / "c", ignore=shutil.ignore_patterns("checkpoint-6"))
    for name, resume in (("b", str(checkpoint)), ("c", True)):
        recorder = SelectionRecorder()
        run = make_trainer(tmp_path / name, tokenizer, pool, [recorder], **RESUME_SETTINGS)
        run.train(resume_from_checkpoint=resume)
        assert recorder.at_begin == saved.selected  # the restored point, before any new round
        assert run.state.global_step == 6 and sorted(recorder.selected) == [4, 5, 6]
        history = run.selection_history
        assert history[:2] == saved.history  # the rounds before the checkpoint, as saved
        assert [r["step"] for r in history] == [0, 2, 4]
        assert [r["reason"] for r in history] == ["initial", "step", "step"]
        assert read_history(tmp_path / name) == history
        # ... and the rounds after it are those of the uninterrupted run (the same prompts are re-scored).
        assert_same_round(history[2], run_a.selection_history[2])
        for step in (4, 5, 6):
            assert recorder.selected[step] == first.selected[step]
            assert_same_scores(recorder.scores[step], first.scores[step])


def test_resume_from_another_pool_fails(tmp_path, tokenizer):
    pool = demo_pool(8)
    make_trainer(
        tmp_path / "a", tokenizer, pool, reselect_every_steps=2, max_steps=3, save_strategy="steps", save_steps=3
    ).train()
    checkpoint = tmp_path / "a" / "checkpoint-3"
    fewer_teachers = pool.filter(lambda row: row["teacher"] != pool[0]["teacher"])
    for other in (demo_pool(8, first=8), demo_pool(6), fewer_teachers):
        with pytest.raises(LocalnatError, match="another candidate pool"):
            ReselectCallback(other, tokenizer, window=2).restore(checkpoint)
    trainer = make_trainer(tmp_path / "b", tokenizer, demo_pool(8, first=8), reselect_every_steps=2, max_steps=6)
    with pytest.raises(LocalnatError, match="another candidate pool"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


# ---------------------------------------------------------------------------------------------------------
# 5. Several processes
# ---------------------------------------------------------------------------------------------------------

RANK_SCRIPT = """
import gc, json, sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_localnat.trainer import ReselectConfig, ReselectingSFTTrainer

torch.set_num_threads(1)
student, pool_path, out = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(student)
tokenizer.pad_token = tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(student)
with open(pool_path) as f:
    pool = Dataset.from_list([json.loads(line) for line in f])
# No use_cpu: ReselectConfig must turn it on itself for several processes on a machine without a GPU.
args = ReselectConfig(
    output_dir=out, reselect_every_steps=1, reselect_fraction=0.5, max_steps=3, per_device_train_batch_size=2,
    learning_rate=1e-2, logging_steps=1, report_to=[], window=2, save_strategy="no", disable_tqdm=True, seed=0,
)
trainer = ReselectingSFTTrainer(model=model, args=args, candidate_dataset=pool, processing_class=tokenizer)
trainer.train()
state = trainer.reselect_callback.state
history = [{k: v for k, v in r.items() if k not in ("seconds", "share_of_training_time")} for r in state.history]
with open(f"{out}/rank{trainer.args.process_index}.json", "w") as f:
    json.dump({"world_size": trainer.args.world_size, "selected": state.selected, "scores": state.scores,
               "history": history}, f)
# End as the README says for CPU processes: destroy the process group, then free the DDP-wrapped model that
# still holds it; otherwise gloo's threads can abort the process at exit ("terminate called ..."). Both ranks
# first meet: one suite run saw a rank hang in the teardown after the other had already left.
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()
del trainer
gc.collect()
"""


def test_two_processes_make_one_selection(tmp_path, tiny_student_dir):
    script = tmp_path / "train_ranks.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in demo_rows(12)))
    out = tmp_path / "out"
    done = run_accelerate([str(script), str(tiny_student_dir), str(pool), str(out)], tmp_path)
    assert done.returncode == 0, done.stderr
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["selected"] == ranks[1]["selected"]
    assert ranks[0]["scores"] == ranks[1]["scores"]
    assert ranks[0]["history"] == ranks[1]["history"]
    history = ranks[0]["history"]
    assert [r["step"] for r in history] == [0, 1, 2]
    assert [r["rescored_prompts"] for r in history] == [12, 6, 6]
    assert None not in ranks[0]["scores"]  # each rank scored its half; every score reached both
    assert without_timing(read_history(out)) == history


# ---------------------------------------------------------------------------------------------------------
# 6. The train command
# ---------------------------------------------------------------------------------------------------------


def test_train_command(tmp_path, tiny_student_dir, capsys, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in demo_rows(8)))
    out = tmp_path / "out"
    argv = ["train", "--pool", str(pool), "--student", str(tiny_student_dir), "--output-dir", str(out)]
    options = ["--reselect-every-steps", "2", "--max-steps", "4", "--per-device-train-batch-size", "4"]
    options += ["--report-to", "none", "--window", "2", "--disable-tqdm", "true"]
    assert main(argv + options) == 0
    assert "Trained 4 steps with 2 selection rounds" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(tiny_student_dir).config.vocab_size
    assert (out / "tokenizer.json").is_file()
    history = read_history(out)
    assert [r["step"] for r in history] == [0, 2]
    assert [r["reason"] for r in history] == ["initial", "step"]

    # A user mistake: exit code 2 and one line, in a real process (where warnings would reach stderr too).
    missing = ["train", "--pool", str(tmp_path / "missing.jsonl"), "--student", str(tiny_student_dir)]
    done = subprocess.run(
        [sys.executable, "-m", "hf_localnat", *missing, "--output-dir", str(tmp_path / "out2"), "--report-to", "none"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("hf-localnat: error:") and "missing.jsonl" in err[0], err
    assert not (tmp_path / "out2").exists()


def test_config_builds_without_deprecation_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        config = ReselectConfig(output_dir=str(tmp_path), report_to=[])
    assert config.activation_checkpointing is True  # TRL's default, under transformers' current name
    assert (
        ReselectConfig(output_dir=str(tmp_path), report_to=[], gradient_checkpointing=False).activation_checkpointing
        is False
    )
    if not torch.cuda.is_available():
        assert config.bf16 is False and config.use_cpu is False  # float32 on CPU; one process: use_cpu untouched
    assert config.remove_unused_columns is False and config.dataset_kwargs["skip_prepare_dataset"] is True
    assert ReselectConfig(output_dir=str(tmp_path), report_to=[], window=2.0).window == 2


# ---------------------------------------------------------------------------------------------------------
# 7. The embedded SmolLM2, end to end
# ---------------------------------------------------------------------------------------------------------


def test_smollm2_end_to_end(tmp_path):
    from hf_localnat import load_student

    model, tokenizer = load_student(device="cpu", dtype="float32")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = ReselectConfig(
        output_dir=str(tmp_path / "run"),
        reselect_every_steps=2,
        max_steps=4,
        per_device_train_batch_size=4,
        max_length=256,
        window=2,
        learning_rate=1e-5,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = ReselectingSFTTrainer(model=model, args=args, candidate_dataset=demo_pool(16), processing_class=tokenizer)
    trainer.train()
    history = trainer.selection_history
    assert [r["step"] for r in history] == [0, 2]
    assert [r["rescored_prompts"] for r in history] == [16, 16]
    assert all(r["mean_selected_score"] < 0 for r in history)
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2, 3, 4]
    final = tmp_path / "final"
    trainer.save_model(str(final))
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    assert reloaded.config.model_type == "llama"
    trained = dict(trainer.model.named_parameters())
    for name, param in list(reloaded.named_parameters())[:3]:
        torch.testing.assert_close(param, trained[name].detach().cpu())


def test_first_round_reuses_pool_scores_only_from_the_same_student_and_config(tiny_student_dir):
    from hf_localnat import NaturalnessScorer, load_student
    from hf_localnat.scorer import score_dataset
    from trainer_callbacks import ReselectCallback

    model, tokenizer = load_student(str(tiny_student_dir), device="cpu")
    pool = datasets.Dataset.from_list(demo_rows(6))
    scored = score_dataset(pool, NaturalnessScorer(model, tokenizer, metrics="local", window=2), progress=False)

    reused = ReselectCallback(scored, tokenizer, window=2).run_round(model)
    assert reused["rescored_prompts"] == 0
    other_config = ReselectCallback(scored, tokenizer, window=3).run_round(model)
    assert other_config["rescored_prompts"] == 6
    unknown_origin = datasets.Dataset.from_dict(scored.to_dict())  # same column, no record of how it was made
    assert ReselectCallback(unknown_origin, tokenizer, window=2).run_round(model)["rescored_prompts"] == 6
