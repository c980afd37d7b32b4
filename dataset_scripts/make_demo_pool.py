#!/usr/bin/env python3
"""Generate the embedded multi-teacher demo pool ``hf_localnat/data/demo_pool.jsonl``.

Grade-school math word problems are built from templates with seeded random numbers. Each problem is
answered by four teacher "styles" whose step structure and length differ clearly:

- ``concise-tutor``: a few short plain-English sentences, one computation each, then "The answer is N."
- ``verbose-explainer``: 8-12 sentences that restate the goal and pad each step with filler.
- ``latex-formal``: terse LaTeX display lines, one computation per line, then ``\\boxed{N}``.
- ``list-stepper``: numbered "Step k: ..." lines, then "Final answer: N".

Every teacher makes arithmetic mistakes on a seed-chosen share of the prompts (a wrong intermediate result
that the later steps carry on to a wrong final answer), at a different rate per teacher. Standard library
only; the same ``--seed`` always writes the same bytes.

Example:
    python dataset_scripts/make_demo_pool.py --output hf_localnat/data/demo_pool.jsonl --seed 0 --overwrite
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "hf_localnat" / "data" / "demo_pool.jsonl"
COLUMNS = ("prompt_id", "prompt", "teacher", "response", "model_answer", "reference_answer", "correct")

# Teacher name -> share of prompts on which it makes an arithmetic mistake.
ERROR_RATES = {
    "concise-tutor": 0.05,
    "verbose-explainer": 0.30,
    "latex-formal": 0.20,
    "list-stepper": 0.10,
}
TEACHERS = tuple(ERROR_RATES)

NAMES = ("Maria", "Sam", "Aisha", "Leo", "Nora", "Ravi", "Emma", "Jonas", "Lina", "Omar", "Yuki", "Carlos")


@dataclass(frozen=True)
class Step:
    """One computation: ``name = left <op> right``; operands name a parameter or an earlier step."""

    name: str
    label: str  # noun phrase, lower case: "the cost of the notebooks"
    op: str  # add, sub, mul, div, pct (left * right / 100, right is the percentage)
    left: str
    right: str
    unit: str = ""


@dataclass(frozen=True)
class Problem:
    prompt: str
    goal: str  # what is asked, as an indirect question: "how much change Maria gets"
    params: dict[str, int]
    steps: tuple[Step, ...]


OPS: dict[str, Callable[[Fraction, Fraction], Fraction]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pct": lambda a, b: a * b / 100,
}


# ---------------------------------------------------------------------------------------------- templates


def shopping(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    n1, p1, n2, p2 = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 8), rng.randint(2, 4)
    bill = 50 if n1 * p1 + n2 * p2 < 50 else 100
    return Problem(
        prompt=(f"{name} buys {n1} notebooks that cost {p1} dollars each and {n2} pens that cost "
                f"{p2} dollars each. {name} pays with a {bill}-dollar bill. How much change does {name} get, "
                "in dollars?"),
        goal=f"how much change {name} gets",
        params={"n1": n1, "p1": p1, "n2": n2, "p2": p2, "bill": bill},
        steps=(
            Step("a", "the cost of the notebooks", "mul", "n1", "p1", "dollars"),
            Step("b", "the cost of the pens", "mul", "n2", "p2", "dollars"),
            Step("c", "the total cost", "add", "a", "b", "dollars"),
            Step("d", "the change", "sub", "bill", "c", "dollars"),
        ),
    )


def speed(rng: random.Random) -> Problem:
    v, t1, w, t2 = rng.randrange(40, 100, 5), rng.randint(2, 5), rng.randrange(30, 90, 5), rng.randint(1, 4)
    vehicle = rng.choice(("train", "bus", "car"))
    return Problem(
        prompt=(f"A {vehicle} travels at {v} km per hour for {t1} hours, then at {w} km per hour for "
                f"{t2} hours. How many kilometers does the {vehicle} travel in total?"),
        goal=f"how far the {vehicle} travels in total",
        params={"v": v, "t1": t1, "w": w, "t2": t2},
        steps=(
            Step("a", "the distance of the first part", "mul", "v", "t1", "km"),
            Step("b", "the distance of the second part", "mul", "w", "t2", "km"),
            Step("c", "the total distance", "add", "a", "b", "km"),
        ),
    )


def ages(rng: random.Random) -> Problem:
    older, younger = rng.sample(NAMES, 2)
    k, b, y = rng.randint(2, 5), rng.randint(4, 12), rng.randint(3, 15)
    return Problem(
        prompt=(f"{older} is {k} times as old as {younger}. {younger} is {b} years old. "
                f"How old will {older} be in {y} years?"),
        goal=f"how old {older} will be in {y} years",
        params={"k": k, "b": b, "y": y},
        steps=(
            Step("a", f"the age of {older} now", "mul", "k", "b", "years"),
            Step("c", f"the age of {older} in {y} years", "add", "a", "y", "years"),
        ),
    )


def sharing(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    friends, each = rng.randint(3, 8), rng.randint(4, 15)
    total = friends * each
    packs, per_pack = rng.randint(2, 4), rng.randint(3, 8)
    while packs * per_pack >= total:
        packs -= 1
    have = total - packs * per_pack
    return Problem(
        prompt=(f"{name} has {have} stickers and buys {packs} packs with {per_pack} stickers in each pack. "
                f"{name} shares all the stickers equally among {friends} friends. "
                "How many stickers does each friend get?"),
        goal="how many stickers each friend gets",
        params={"have": have, "packs": packs, "per_pack": per_pack, "friends": friends},
        steps=(
            Step("a", "the number of new stickers", "mul", "packs", "per_pack", "stickers"),
            Step("b", "the total number of stickers", "add", "have", "a", "stickers"),
            Step("c", "the stickers for each friend", "div", "b", "friends", "stickers"),
        ),
    )


def discount(rng: random.Random) -> Problem:
    item = rng.choice(("jacket", "bike", "lamp", "backpack", "guitar"))
    price, pct = 20 * rng.randint(3, 15), rng.choice((10, 15, 20, 25, 30, 40, 50))
    return Problem(
        prompt=(f"A {item} costs {price} dollars. The store gives a {pct}% discount on it. "
                f"How much does the {item} cost after the discount, in dollars?"),
        goal=f"the price of the {item} after the discount",
        params={"price": price, "pct": pct},
        steps=(
            Step("a", "the discount", "pct", "price", "pct", "dollars"),
            Step("b", "the new price", "sub", "price", "a", "dollars"),
        ),
    )


def garden(rng: random.Random) -> Problem:
    length, width, side = rng.randint(10, 25), rng.randint(6, 15), rng.randint(2, 5)
    return Problem(
        prompt=(f"A rectangular garden is {length} meters long and {width} meters wide. A square patio with "
                f"sides of {side} meters is built in the garden. How many square meters of the garden are "
                "left for grass?"),
        goal="how much of the garden is left for grass",
        params={"length": length, "width": width, "side": side},
        steps=(
            Step("a", "the area of the garden", "mul", "length", "width", "square meters"),
            Step("b", "the area of the patio", "mul", "side", "side", "square meters"),
            Step("c", "the area left for grass", "sub", "a", "b", "square meters"),
        ),
    )


def bakery(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    rate, hours, days = rng.randint(8, 20), rng.randint(3, 6), rng.randint(2, 5)
    sold = rng.randint(rate * hours, rate * hours * days - 5)
    return Problem(
        prompt=(f"{name} bakes {rate} muffins every hour and bakes for {hours} hours a day for {days} days. "
                f"{name} sells {sold} of the muffins. How many muffins are left?"),
        goal="how many muffins are left",
        params={"rate": rate, "hours": hours, "days": days, "sold": sold},
        steps=(
            Step("a", "the muffins baked in one day", "mul", "rate", "hours", "muffins"),
            Step("b", "the muffins baked in all", "mul", "a", "days", "muffins"),
            Step("c", "the muffins left", "sub", "b", "sold", "muffins"),
        ),
    )


def wages(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    pay, hours, spend, weeks = rng.randint(8, 15), rng.randint(4, 10), rng.randint(5, 20), rng.randint(3, 8)
    return Problem(
        prompt=(f"{name} earns {pay} dollars an hour and works {hours} hours each week. Every week {name} "
                f"spends {spend} dollars and saves the rest. How many dollars does {name} save in {weeks} "
                "weeks?"),
        goal=f"how much {name} saves in {weeks} weeks",
        params={"pay": pay, "hours": hours, "spend": spend, "weeks": weeks},
        steps=(
            Step("a", "the pay for one week", "mul", "pay", "hours", "dollars"),
            Step("b", "the savings for one week", "sub", "a", "spend", "dollars"),
            Step("c", f"the savings for {weeks} weeks", "mul", "b", "weeks", "dollars"),
        ),
    )


def fence(rng: random.Random) -> Problem:
    length, width, cost = rng.randint(8, 30), rng.randint(5, 20), rng.randint(3, 9)
    return Problem(
        prompt=(f"A rectangular field is {length} meters long and {width} meters wide. A fence costs {cost} "
                "dollars per meter. How much does it cost to fence the whole field, in dollars?"),
        goal="the cost of the fence around the field",
        params={"length": length, "width": width, "cost": cost, "two": 2},
        steps=(
            Step("a", "the length plus the width", "add", "length", "width", "meters"),
            Step("b", "the perimeter", "mul", "two", "a", "meters"),
            Step("c", "the cost of the fence", "mul", "b", "cost", "dollars"),
        ),
    )


def movies(rng: random.Random) -> Problem:
    n, minutes, pause = rng.randint(3, 5), rng.randrange(80, 125, 5), rng.randrange(10, 25, 5)
    return Problem(
        prompt=(f"A movie marathon shows {n} movies that are each {minutes} minutes long, with a "
                f"{pause}-minute break between one movie and the next. How many minutes does the marathon "
                "last?"),
        goal="how long the marathon lasts",
        params={"n": n, "minutes": minutes, "pause": pause, "one": 1},
        steps=(
            Step("a", "the time spent on movies", "mul", "n", "minutes", "minutes"),
            Step("b", "the number of breaks", "sub", "n", "one", "breaks"),
            Step("c", "the time spent on breaks", "mul", "b", "pause", "minutes"),
            Step("d", "the length of the marathon", "add", "a", "c", "minutes"),
        ),
    )


def recipe(rng: random.Random) -> Problem:
    cups, batch, batches = rng.randint(2, 5), rng.choice((6, 8, 10, 12)), rng.randint(2, 7)
    cookies = batch * batches
    return Problem(
        prompt=(f"A recipe uses {cups} cups of flour for every {batch} cookies. How many cups of flour are "
                f"needed to bake {cookies} cookies?"),
        goal=f"how much flour is needed for {cookies} cookies",
        params={"cups": cups, "batch": batch, "cookies": cookies},
        steps=(
            Step("a", "the number of batches", "div", "cookies", "batch", "batches"),
            Step("b", "the flour needed", "mul", "a", "cups", "cups"),
        ),
    )


def tickets(rng: random.Random) -> Problem:
    adults, kids = rng.randint(2, 4), rng.randint(2, 5)
    adult_price, kid_price, snacks = rng.randint(10, 18), rng.randint(5, 9), rng.randint(8, 25)
    return Problem(
        prompt=(f"A family buys {adults} adult tickets at {adult_price} dollars each and {kids} child "
                f"tickets at {kid_price} dollars each. They also spend {snacks} dollars on snacks. How many "
                "dollars do they spend in total?"),
        goal="how much the family spends in total",
        params={"adults": adults, "adult_price": adult_price, "kids": kids, "kid_price": kid_price,
                "snacks": snacks},
        steps=(
            Step("a", "the cost of the adult tickets", "mul", "adults", "adult_price", "dollars"),
            Step("b", "the cost of the child tickets", "mul", "kids", "kid_price", "dollars"),
            Step("c", "the cost of all tickets", "add", "a", "b", "dollars"),
            Step("d", "the total spent", "add", "c", "snacks", "dollars"),
        ),
    )


TEMPLATES = (shopping, speed, ages, sharing, discount, garden, bakery, wages, fence, movies, recipe, tickets)


# ---------------------------------------------------------------------------------------------- solving


Values = list[tuple[int, int, int]]


def evaluate(problem: Problem, wrong: tuple[int, int] | None = None) -> Values | None:
    """``(left, right, result)`` per step; ``wrong=(step index, delta)`` adds ``delta`` to that result.

    Later steps use the (possibly wrong) earlier results. None when a value is not a positive integer.
    """
    values: dict[str, Fraction] = {k: Fraction(v) for k, v in problem.params.items()}
    out = []
    for i, step in enumerate(problem.steps):
        left, right = values[step.left], values[step.right]
        result = OPS[step.op](left, right)
        if wrong is not None and wrong[0] == i:
            result += wrong[1]
        if result.denominator != 1 or result <= 0:
            return None
        values[step.name] = result
        out.append((int(left), int(right), int(result)))
    return out


def mistake(problem: Problem, correct: Values, rng: random.Random) -> Values:
    """A plausible arithmetic slip: an intermediate result off by a little, carried on to the end."""
    n = len(problem.steps)
    first = list(range(n - 1)) if n > 1 else [0]
    rng.shuffle(first)
    for index in [*first, n - 1]:
        deltas = [1, -1, 2, -2, 10, -10, 3, -3]
        for later in problem.steps[index + 1:]:
            if later.op == "div":  # keep the later division exact
                d = int(problem.params.get(later.right, 1))
                deltas += [d, -d, 2 * d, -2 * d]
        rng.shuffle(deltas)
        for delta in deltas:
            result = evaluate(problem, (index, delta))
            if result is not None and result[-1][2] != correct[-1][2]:
                return result
    raise AssertionError(f"no mistake possible for {problem.prompt!r}")


# ---------------------------------------------------------------------------------------------- styles


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def with_unit(value: int, unit: str) -> str:
    return f"{value} {unit}" if unit else str(value)


def expr(op: str, a: int | str, b: int | str, style: str) -> str:
    """``a <op> b`` written the way a style writes it."""
    words = {
        "plain": {"add": "plus", "sub": "minus", "mul": "times", "div": "divided by"},
        "latex": {"add": "+", "sub": "-", "mul": "\\times", "div": "\\div"},
        "list": {"add": "+", "sub": "-", "mul": "*", "div": "/"},
    }[style]
    if op == "pct":
        return {"plain": f"{b}% of {a}", "latex": f"{a} \\times {b}\\%", "list": f"{b}% of {a}"}[style]
    return f"{a} {words[op]} {b}"


def concise_tutor(problem: Problem, values: Values, rng: random.Random) -> str:
    sentences = [f"{cap(s.label)} is {expr(s.op, a, b, 'plain')} = {with_unit(r, s.unit)}."
                 for s, (a, b, r) in zip(problem.steps, values, strict=True)]
    return " ".join([*sentences, f"The answer is {values[-1][2]}."])


VERBOSE_OPENERS = ("Let's think about this carefully.", "Let's take this one step at a time.",
                   "Let's read the problem carefully before we start.")
VERBOSE_CHECKS = ("Let's check that this makes sense.", "Each step uses the result of the one before it.",
                  "It is always a good idea to check each step.")


def verbose_explainer(problem: Problem, values: Values, rng: random.Random) -> str:
    sentences = [f"We need to find {problem.goal}.", rng.choice(VERBOSE_OPENERS)]
    connectors = ["First", *["Next"] * (len(values) - 2), "Finally"] if len(values) > 1 else ["First"]
    for connector, step, (a, b, r) in zip(connectors, problem.steps, values, strict=True):
        sentences.append(f"{connector}, we work out {step.label}.")
        verb = "take" if step.op == "pct" else "compute"
        sentences.append(f"We {verb} {expr(step.op, a, b, 'plain')}, which gives {with_unit(r, step.unit)}.")
    if len(values) <= 3:
        sentences.append(rng.choice(VERBOSE_CHECKS))
    last = problem.steps[-1]
    sentences.append(f"So {last.label} is {with_unit(values[-1][2], last.unit)}.")
    sentences.append(f"The answer is {values[-1][2]}.")
    return " ".join(sentences)


def latex_formal(problem: Problem, values: Values, rng: random.Random) -> str:
    symbols = {s.name: f"s_{i}" for i, s in enumerate(problem.steps[:-1], start=1)}
    symbols[problem.steps[-1].name] = "x"
    lines = [f"Let $x$ be {problem.steps[-1].label}."]
    for step, (a, b, r) in zip(problem.steps, values, strict=True):
        if step.left in symbols or step.right in symbols:
            named = expr(step.op, symbols.get(step.left, a), symbols.get(step.right, b), "latex")
            lines.append(f"$${symbols[step.name]} = {named} = {expr(step.op, a, b, 'latex')} = {r}$$")
        else:
            lines.append(f"$${symbols[step.name]} = {expr(step.op, a, b, 'latex')} = {r}$$")
    r = values[-1][2]
    lines.append(f"\\boxed{{{r}}}")
    return "\n".join(lines)


def list_stepper(problem: Problem, values: Values, rng: random.Random) -> str:
    lines = [f"Step {i}: Find {s.label}: {expr(s.op, a, b, 'list')} = {with_unit(r, s.unit)}."
             for i, (s, (a, b, r)) in enumerate(zip(problem.steps, values, strict=True), start=1)]
    return "\n".join([*lines, f"Final answer: {values[-1][2]}"])


STYLES = {
    "concise-tutor": concise_tutor,
    "verbose-explainer": verbose_explainer,
    "latex-formal": latex_formal,
    "list-stepper": list_stepper,
}


# ---------------------------------------------------------------------------------------------- the pool


def build_pool(num_prompts: int = 48, seed: int = 0) -> list[dict]:
    """All rows, grouped by prompt, teachers in a fixed order."""
    rng = random.Random(seed)
    order = list(TEMPLATES)
    problems = []
    for i in range(num_prompts):
        if i % len(order) == 0:
            rng.shuffle(order)
        problems.append(order[i % len(order)](rng))
    wrong = {t: set(rng.sample(range(num_prompts), round(rate * num_prompts)))
             for t, rate in ERROR_RATES.items()}
    rows = []
    for i, problem in enumerate(problems):
        correct = evaluate(problem)
        assert correct is not None, problem.prompt
        reference = str(correct[-1][2])
        for teacher in TEACHERS:
            values = mistake(problem, correct, rng) if i in wrong[teacher] else correct
            response = STYLES[teacher](problem, values, rng)
            answer = str(values[-1][2])
            rows.append({
                "prompt_id": f"demo-{i:03d}",
                "prompt": problem.prompt,
                "teacher": teacher,
                "response": response,
                "model_answer": answer,
                "reference_answer": reference,
                "correct": answer == reference,
            })
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    """Write atomically: a temp file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps({c: row[c] for c in COLUMNS}, ensure_ascii=True) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; the shipped data file is world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary(rows: list[dict], path: Path) -> str:
    try:
        path = path.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    prompts = len({r["prompt_id"] for r in rows})
    acc, chars = [], []
    for t in TEACHERS:
        mine = [r for r in rows if r["teacher"] == t]
        if mine:
            acc.append(f"{t}={sum(r['correct'] for r in mine) / len(mine):.3f}")
            chars.append(f"{t}={sum(len(r['response']) for r in mine) / len(mine):.0f}")
    return (f"wrote {len(rows)} rows ({prompts} prompts x {len(TEACHERS)} teachers) to {path}; "
            f"accuracy {' '.join(acc)}; mean chars {' '.join(chars)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate the embedded multi-teacher demo pool (math word problems, 4 teacher styles).")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="JSONL file to write (default: hf_localnat/data/demo_pool.jsonl in the repo)")
    parser.add_argument("--num_prompts", "--num-prompts", type=int, default=48, help="number of prompts (default: 48)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (e.g. the shipped pool)")
    args = parser.parse_args(argv)
    if args.num_prompts < 1:
        parser.error("--num_prompts must be at least 1")
    if args.output.is_dir():
        parser.error(f"--output {str(args.output)!r} is a folder; name the .jsonl file to write")
    if args.output.exists() and not args.overwrite:
        parser.error(f"--output {str(args.output)!r} exists; pass --overwrite to replace it")
    rows = build_pool(args.num_prompts, args.seed)
    write_jsonl(rows, args.output)
    print(summary(rows, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
