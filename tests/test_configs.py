"""One ScoringConfig, one SelectionConfig, one selection core: every option defined once and composed, the trainer
selects as ``select`` does, ``--config`` files, and one flag spelling."""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from conftest import REPO, build_model, build_tokenizer
from test_cli import caches, in_process_env, make_rows, write_jsonl  # noqa: F401 - fixtures
from transformers import HfArgumentParser

from hf_localnat import NaturalnessScorer, ScoringConfig, SelectionConfig, select_responses
from hf_localnat.cli import COMMANDS, main
from hf_localnat.errors import LocalnatError
from hf_localnat.scorer import score_dataset
from hf_localnat.trainer import ReselectConfig
from trainer_callbacks import ReselectCallback

# ---------------------------------------------------------------------------------------------------------
# Every option defined once
# ---------------------------------------------------------------------------------------------------------

SOURCES = [*sorted((REPO / "hf_localnat").glob("*.py")), *sorted((REPO / "trainer_callbacks").glob("*.py"))]


def default_declarations(source: str, name: str, values: set) -> list[int]:
    """Lines where ``name`` is given one of ``values`` as its default: a class field (``name: T = value`` or
    ``name: T = field(default=value, ...)``) or a function parameter (``def f(name=value)``). Call sites, where a
    value is passed rather than declared, are not declarations."""

    def literal(node: ast.AST | None) -> bool:
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "field":
            node = next((k.value for k in node.keywords if k.arg == "default"), None)
        return isinstance(node, ast.Constant) and node.value in values and type(node.value) in {type(v) for v in values}

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name and literal(node.value):
            lines.append(node.lineno)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            lines += [node.lineno for arg, default in pairs if arg.arg == name and literal(default)]
    return sorted(lines)


@pytest.mark.parametrize("config", [ScoringConfig, SelectionConfig], ids=lambda c: c.__name__)
def test_each_option_default_is_written_once(config):
    """Each option's default value is written in exactly one place in the package: its field in the config (or
    the constant it names). Every other declaration takes it from the config (``group_by=SelectionConfig.group_by``).
    The dataset and bench scripts are left out on purpose: their column options name columns of the files they
    convert, which only happen to share names."""
    for item in dataclasses.fields(config):
        if item.default is None:
            continue  # "no value" is everybody's default, not a choice made twice
        values = {item.default}
        if isinstance(item.default, str) and item.default.isdigit():
            values.add(int(item.default))  # window "4" is the int 4 once parsed
        found = {
            path.name: lines for path in SOURCES if (lines := default_declarations(path.read_text(), item.name, values))
        }
        total = sum(len(lines) for lines in found.values())
        declared_by_constant = not any(found.values())  # splitter, min_step_chars: a segmentation constant
        assert total == 1 or (declared_by_constant and total == 0), f"the default of {item.name} is written in {found}"


def test_the_default_checker_finds_what_it_should():
    """It must be able to fail: a second field, a parameter default, a field(default=...) and the int form."""
    source = """
class A:
    k: int = 1
    window: str = field(default="4", metadata={})
def f(x, k=1, *, window=4):
    g(k=1)
"""
    assert default_declarations(source, "k", {1}) == [3, 5]
    assert default_declarations(source, "window", {"4", 4}) == [4, 5]


def test_config_validates_and_canonicalises():
    config = ScoringConfig(metrics=["rsr", "local_naturalness"], window="0.25", drop_first_token=True)
    assert (config.metrics, config.window, config.metric_names) == ("local,rsr", 0.25, ("local", "rsr"))
    assert ScoringConfig.from_dict(config.to_dict()) == config
    # The old boolean is the same config as drop_first_tokens=1, also when read from an old provenance record.
    assert config == ScoringConfig(metrics="local,rsr", window=0.25, drop_first_tokens=1)
    old_record = {k: v for k, v in config.to_dict().items() if k != "drop_first_tokens"} | {"drop_first_token": True}
    assert ScoringConfig.from_dict(old_record) == config
    assert (config.local_drop, config.aslec_drop_tokens) == (1, 1)
    assert (ScoringConfig().local_drop, ScoringConfig().aslec_drop_tokens) == (0, 1)
    assert "--drop_first_tokens" in config.command_args() and "--drop_first_token" not in config.command_args()
    for bad, message in [
        (dict(drop_first_token=True, drop_first_tokens=2), "give only one"),
        (dict(drop_first_tokens=-1), "drop_first_tokens=-1"),
        (dict(window="0"), "window=0 is invalid"),
        (dict(metrics="nope"), "unknown metric"),
        (dict(splitter="regex:("), "not a valid regular expression"),
        (dict(min_step_chars=0), "min_step_chars=0"),
        (dict(step_aggregate="max"), "step_aggregate='max'"),
        (dict(max_response_tokens=0), "max_response_tokens=0"),
    ]:
        with pytest.raises(LocalnatError, match=re.escape(message)):
            ScoringConfig(**bad)
    with pytest.raises(LocalnatError, match="k=0"):
        SelectionConfig(k=0)
    with pytest.raises(LocalnatError, match="--where"):
        SelectionConfig(where="correct ==")


def test_scorer_config_and_keyword_sugar_are_the_same(tiny_model, tiny_tokenizer):
    config = ScoringConfig(metrics="global,local", window=2, splitter="line")
    by_config = NaturalnessScorer(tiny_model, tiny_tokenizer, config)
    by_keywords = NaturalnessScorer(tiny_model, tiny_tokenizer, metrics="global,local", window=2, splitter="line")
    assert by_config.config == by_keywords.config == config
    prompts, responses = ["What is 2 + 2?"], ["Add them.\nThe answer is 4."]
    assert by_config.score(prompts, responses) == by_keywords.score(prompts, responses)
    with pytest.raises(LocalnatError, match="unknown option"):
        NaturalnessScorer(tiny_model, tiny_tokenizer, windw=2)


def test_reselect_config_is_composed_from_the_configs():
    """Every ScoringConfig field but metrics/return_steps, and every SelectionConfig field, with its help."""
    reselect = {f.name: f for f in dataclasses.fields(ReselectConfig)}
    for config, skip in ((ScoringConfig, {"metrics", "return_steps"}), (SelectionConfig, set())):
        for item in dataclasses.fields(config):
            if item.name in skip:
                assert item.name not in reselect
                continue
            assert reselect[item.name].default == item.default, item.name
            assert reselect[item.name].metadata["help"] == item.metadata["help"], item.name
    # And it parses as TRL's configs do.
    (args,) = HfArgumentParser(ReselectConfig).parse_args_into_dataclasses(
        ["--output_dir", "x", "--min_step_chars", "6", "--splitter", "paragraph", "--drop_first_token", "--k", "2",
         "--where", "correct == True", "--report_to", "none"]  # fmt: skip
    )
    assert args.scoring_config() == ScoringConfig(metrics="local", min_step_chars=6, splitter="paragraph",
                                                  drop_first_token=True)  # fmt: skip
    assert args.selection_config() == SelectionConfig(k=2, where="correct == True")


# ---------------------------------------------------------------------------------------------------------
# One selection core: a reselection round selects what select_responses selects
# ---------------------------------------------------------------------------------------------------------


def test_a_round_selects_exactly_what_select_responses_selects(caplog):
    """k=2, a prompt with one response, a prompt with two responses of which one is too long to score
    (global_naturalness is None past the context), and an empty response: no slot serves a response twice or an
    unscored one, and the rows equal select_responses on the round's own scores."""
    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    model = build_model(len(tokenizer), max_position_embeddings=96)
    long = "We add one more to the running total and keep going. " * 8
    rows = [
        {"prompt_id": "a", "prompt": "What is 2 + 2?", "teacher": "t1", "response": "2 + 2 = 4. The answer is 4."},
        {"prompt_id": "b", "prompt": "What is 3 + 3?", "teacher": "t1", "response": "3 + 3 = 6. So 6."},
        {"prompt_id": "b", "prompt": "What is 3 + 3?", "teacher": "t2", "response": long},
        {"prompt_id": "c", "prompt": "What is 1 + 1?", "teacher": "t1", "response": "1 + 1 = 2."},
        {"prompt_id": "c", "prompt": "What is 1 + 1?", "teacher": "t2", "response": "   "},
        {"prompt_id": "c", "prompt": "What is 1 + 1?", "teacher": "t3", "response": "It is 2, since 1 + 1 = 2."},
        {"prompt_id": "c", "prompt": "What is 1 + 1?", "teacher": "t4", "response": "Two."},
    ]
    pool = datasets.Dataset.from_list(rows)
    callback = ReselectCallback(pool, tokenizer, by="global_naturalness", k=2, window=2)
    # Slots: a has one candidate, b two, c three of four (the blank one is no candidate): 1 + 2 + 2.
    assert [slot for slot in callback.state.slots] == [["a", 0], ["b", 0], ["b", 1], ["c", 0], ["c", 1]]
    record = callback.run_round(model)
    scores = callback.state.scores
    assert scores[2] is None and scores[4] is None  # too long for 96 positions; blank
    expected = select_responses(
        pool.add_column("global_naturalness", scores), by="global_naturalness", k=2, return_report=False
    )
    served = [row for row in callback.state.selected if row != -1]
    assert served == [rows.index(r) for r in _strip_rank(expected.to_list(), rows)]
    assert len(set(served)) == len(served)  # no response twice
    assert record["empty_slots"] == 1  # b's second slot: its other response cannot be scored
    example = callback.slot_example(2)
    assert set(example["labels"]) == {-100}  # the empty slot trains on nothing


def _strip_rank(selected: list[dict], rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k in rows[0]} for row in selected]


def test_where_filters_every_round():
    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    rows = [dict(row) for row in make_rows()]
    pool = datasets.Dataset.from_list(rows)
    callback = ReselectCallback(pool, tokenizer, where="correct == True", window=2)
    callback.run_round(build_model(len(tokenizer)))
    assert all(rows[r]["correct"] for r in callback.state.selected)
    assert {slot[0] for slot in callback.state.slots} == {"p0", "p1", "p2"}  # p3 has no correct response
    direct = select_responses(
        pool.add_column("local_naturalness", callback.state.scores), where="correct == True", k=1
    )
    assert callback.state.selected == [rows.index(r) for r in _strip_rank(direct.to_list(), rows)]


def test_where_on_the_score_reads_each_rounds_scores():
    """A filter on the score column itself applies to the round's scores, exactly as select_responses does."""
    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    rows = make_rows()
    pool = datasets.Dataset.from_list(rows)  # no score column yet: the filter still works from the first round
    model = build_model(len(tokenizer))
    probe = ReselectCallback(pool, tokenizer, window=2)
    probe.run_round(model)
    cut = float(np.median([v for v in probe.state.scores if v is not None]))
    callback = ReselectCallback(pool, tokenizer, window=2, k=2, where=f"local_naturalness > {cut}")
    callback.run_round(model)
    direct = select_responses(pool.add_column("local_naturalness", callback.state.scores), k=2,
                              where=f"local_naturalness > {cut}")  # fmt: skip
    served = [r for r in callback.state.selected if r != -1]
    assert served == [rows.index(r) for r in _strip_rank(direct.to_list(), rows)]
    assert all(callback.state.scores[r] > cut for r in served) and -1 in callback.state.selected


def test_train_reuses_a_pool_scored_with_non_default_options(tmp_path, tiny_student_dir, capsys, caplog,
                                                              monkeypatch):  # fmt: skip
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = [{**row, "response": row["response"].replace(". ", ".\n\n")} for row in make_rows()]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    scored = tmp_path / "scored.parquet"
    options = ["--min_step_chars", "6", "--splitter", "paragraph", "--drop_first_token", "--window", "2"]
    assert main(["score", str(pool), "--student", str(tiny_student_dir), "--metrics", "local", *options,
                 "--output", str(scored)]) == 0  # fmt: skip
    calls = []
    real = NaturalnessScorer.score
    monkeypatch.setattr(NaturalnessScorer, "score", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    caplog.set_level(logging.INFO, logger="trainer_callbacks")
    argv = ["train", "--pool", str(scored), "--student", str(tiny_student_dir), "--output_dir", str(tmp_path / "run"),
            *options, "--max_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none",
            "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    assert calls == []  # the first round scored nothing
    assert "Reusing the pool's local_naturalness scores" in caplog.text
    caplog.clear()
    assert main([*argv, "--min_step_chars", "5", "--overwrite"]) == 0  # one option differs
    assert calls and "scored with other settings (min_step_chars 6 (here 5))" in caplog.text


# ---------------------------------------------------------------------------------------------------------
# --config files, one flag spelling, positional help
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def scored_pool(tmp_path) -> Path:
    ds = datasets.Dataset.from_list(make_rows())
    rng = np.random.default_rng(0)
    ds = ds.add_column("local_naturalness", rng.normal(size=len(ds)).tolist())
    ds = ds.add_column("rsr", rng.uniform(1, 3, size=len(ds)).tolist())
    path = tmp_path / "scored.parquet"
    ds.to_parquet(str(path))
    return path


def test_select_config_file_and_flags_that_win(tmp_path, scored_pool, capsys):
    config = tmp_path / "selection.yaml"
    config.write_text(yaml.safe_dump({"by": "rsr", "k": 2, "where": "correct == True"}))
    assert main(["select", str(scored_pool), "--config", str(config), "--output", str(tmp_path / "a.parquet")]) == 0
    direct = select_responses(datasets.Dataset.from_parquet(str(scored_pool)), by="rsr", k=2, where="correct == True")
    assert datasets.Dataset.from_parquet(str(tmp_path / "a.parquet")).to_list() == direct.to_list()
    # A flag on the command line wins over the file.
    assert main(["select", str(scored_pool), "--config", str(config), "--k", "1", "--output",
                 str(tmp_path / "b.parquet")]) == 0  # fmt: skip
    assert len(datasets.Dataset.from_parquet(str(tmp_path / "b.parquet"))) == 3
    # The positional argument may come from the file too; a name the command does not have is an error.
    config.write_text(yaml.safe_dump({"scored": str(scored_pool), "by": "rsr", "output": str(tmp_path / "c.jsonl")}))
    assert main(["select", "--config", str(config)]) == 0
    config.write_text(yaml.safe_dump({"by": "rsr", "window": 4}))
    capsys.readouterr()
    assert main(["select", str(scored_pool), "--config", str(config), "--output", str(tmp_path / "d.jsonl")]) == 2
    assert "select has no option 'window'" in capsys.readouterr().err


def test_card_stores_the_selection_yaml_that_reruns_it(tmp_path, scored_pool):
    from huggingface_hub import DatasetCard

    from hf_localnat import push_selection

    pool = datasets.Dataset.from_parquet(str(scored_pool))
    selection = SelectionConfig(by="rsr", k=2, where="correct == True")
    push_selection(select_responses(pool, selection), to_dir=tmp_path / "card", scored=pool, selection_config=selection)
    text = DatasetCard.load(tmp_path / "card" / "README.md").text
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block and "--config selection.yaml" in text
    (tmp_path / "selection.yaml").write_text(block.group(1))
    out = tmp_path / "again.parquet"
    assert main(["select", str(scored_pool), "--config", str(tmp_path / "selection.yaml"), "--output", str(out)]) == 0
    assert datasets.Dataset.from_parquet(str(out)).to_list() == select_responses(pool, selection).to_list()


def test_one_flag_spelling_in_help_and_hints(tmp_path, capsys):
    rows = [{**row, "answer": 4} for row in make_rows()]
    write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["score", str(tmp_path / "in.jsonl"), "--response_column", "answer", "--output",
                 str(tmp_path / "o.jsonl")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--response_column NAME" in err and "--answer-column" not in err
    for name, command in COMMANDS.items():
        if name == "train":
            continue
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        usage = text.split("options:")[0]
        assert not re.search(r"--[a-z]+(?:-[a-z]+)+", usage.split("positional arguments:")[0]), (name, usage[:300])
        if command.positional:
            assert command.positional_help.split()[0] in text and command.help not in text.split("options:")[1]


OTHER_TOOLS_FLAGS = {"--no-deps", "--force-reinstall", "--doctest-modules", "--no-cache-dir", "--index-url"}


def test_readme_docs_and_messages_use_underscore_flags():
    """Every project flag in the README, the docs and the sources is spelled with underscores (pip's own are not
    ours)."""
    dashed = re.compile(r"--[a-z]+(?:-[a-z0-9]+)+")
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs").glob("*.sh"))]
    scripts = [*sorted((REPO / "dataset_scripts").glob("*.py")), *sorted((REPO / "bench").glob("*.py"))]
    for path in [*docs, *SOURCES, *scripts, REPO / "model_cards" / "selection_card.md"]:
        text = path.read_text()
        # A dashed alias given to argparse beside its underscore name is the one place a dash belongs.
        text = re.sub(r'"--[a-z_0-9]+", "--[a-z0-9-]+"', "", text)
        found = sorted(set(dashed.findall(text)) - OTHER_TOOLS_FLAGS)
        assert not found, (path.relative_to(REPO), found)


def test_scoring_provenance_is_the_config(tiny_model, tiny_tokenizer):
    ds = datasets.Dataset.from_list(make_rows()[:3])
    config = ScoringConfig(metrics="local", window=2, min_step_chars=6)
    scored = score_dataset(ds, NaturalnessScorer(tiny_model, tiny_tokenizer, config), progress=False)
    recorded = json.loads(scored.info.description)["hf_localnat"]["scorer"]
    assert ScoringConfig.from_dict(recorded) == config
