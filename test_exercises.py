"""EXERCISES.md grades itself. Each coding exercise's Check, run as a student runs it (pytest with
the Check's arguments, conftest.py replacing functions), must
- fail on an empty answer (NANOSEDD_STUB) and on every wrong answer to its functions that
  wrong_answers.py keeps (NANOSEDD_WRONG), so that it tells a right answer from a wrong one;
- pass on every right answer that wrong_answers.py writes another way (NANOSEDD_RIGHT), so that
  it asks for what the text asks, not for the project's way of writing it;
- pass with the project's code while every later exercise is still empty, so that a student
  who empties all the functions first can work through the course in order.

A new Python process costs seconds (torch, the test files) where a Check runs in a fraction of
one, so all the runs share one process: run as a script, this file runs each (Check, answers)
case with pytest.main, and conftest.py puts the project's functions back after each run.
"""
import contextlib
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from wrong_answers import RIGHT, WRONG

HERE = Path(__file__).resolve().parent
EXERCISES = [([item.strip() for item in implement.split(",")], check) for implement, check in
             re.findall(r"^Implement: (.+)\nCheck: (.+)$", (HERE / "EXERCISES.md").read_text(), re.M)]
ANSWERS = ("NANOSEDD_STUB", "NANOSEDD_WRONG", "NANOSEDD_RIGHT")


def cases(number):
    """The runs of exercise `number`'s Check: [(check, what is replaced, environment, must it pass)]."""
    names, check = EXERCISES[number - 1]
    later = [name for later_names, _ in EXERCISES[number:] for name in later_names]
    runs = [("an empty answer", {"NANOSEDD_STUB": ",".join(names)}, False),
            ("the later exercises empty", {"NANOSEDD_STUB": ",".join(later)}, True)]
    runs += [(f"the wrong answer {name}", {"NANOSEDD_WRONG": name}, False)
             for name, (target, _) in WRONG.items() if target in names]
    runs += [(f"the right answer {name}", {"NANOSEDD_RIGHT": name}, True)
             for name, (target, _) in RIGHT.items() if target in names]
    return [(check, what, env, must_pass) for what, env, must_pass in runs]


def run_checks(runs):
    """[(pytest's exit code, the tail of its output)] of each (check, what, environment) run."""
    for check, _, env in runs:  # each environment names its answers, so one run's never leaks into the next
        os.environ.update({name: env.get(name, "") for name in ANSWERS})
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            # no cache, and no check for unraisable exceptions: its gc.collect() would take most of a run
            code = pytest.main([*shlex.split(check)[3:], "-x", "-q", "-p", "no:cacheprovider", "-p",
                                "no:unraisableexception"])
        yield int(code), output.getvalue()[-1500:]


@pytest.fixture(scope="module")
def verdicts():
    """Every exercise's runs, in one new process, as {exercise: [(what, must pass, code, output)]}."""
    runs = [(number, *run) for number in range(1, len(EXERCISES) + 1) for run in cases(number)]
    done = subprocess.run([sys.executable, __file__], input=json.dumps([run[1:4] for run in runs]),
                          cwd=HERE, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {}
    for (number, _, what, _, must_pass), (code, output) in zip(runs, json.loads(done.stdout.splitlines()[-1])):
        results.setdefault(number, []).append((what, must_pass, code, output))
    return results


def test_exercises_name_real_functions_tests_and_answers():
    assert len(EXERCISES) == 12, f"EXERCISES.md has {len(EXERCISES)} Implement/Check pairs, expected 12"
    for names, check in EXERCISES:
        for path, name in (item.split() for item in names):
            owner = importlib.import_module(path.removesuffix(".py"))
            for part in name.split("."):
                owner = getattr(owner, part)  # every named function exists
        command = shlex.split(check)
        assert command[:3] == ["python", "-m", "pytest"] and command[4] == "-k" and len(command) == 6, \
            f"{check}: a Check is python -m pytest FILE -k EXPRESSION"
        assert (HERE / command[3]).is_file() and command[3].startswith("test_"), check
        assert any(target in names for target, _ in WRONG.values()), f"wrong_answers.py has none for {names}"
    named = {name for names, _ in EXERCISES for name in names}
    assert all(target in named for target, _ in [*WRONG.values(), *RIGHT.values()]), \
        "an answer for a function of no exercise"


@pytest.mark.parametrize("number", range(1, len(EXERCISES) + 1))
def test_check_refuses_wrong_answers_and_passes_right_ones_in_order(number, verdicts):
    check = EXERCISES[number - 1][1]
    for what, must_pass, code, output in verdicts[number]:
        if must_pass:
            assert code == 0, f"Exercise {number}: {check} fails on {what}\n{output}"
        else:
            assert code == 1, f"Exercise {number}: {check} passed {what}\n{output}"
            assert what != "an empty answer" or "your code goes here" in output, \
                f"Exercise {number}: {check} failed on an empty answer, not at the empty function\n{output}"


if __name__ == "__main__":  # the runs of `verdicts`: a JSON list of [check, what, environment] in, codes out
    print(json.dumps(list(run_checks(json.load(sys.stdin)))))
