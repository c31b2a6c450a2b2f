"""EXERCISES.md grades itself. Each coding exercise's Check, run as a student runs it (in a
subprocess, with conftest.py replacing functions), must
- fail on an empty answer (NANOSEDD_STUB) and on every wrong answer to its functions that
  wrong_answers.py keeps (NANOSEDD_WRONG), so that it tells a right answer from a wrong one;
- pass with the project's code while every later exercise is still empty, so that a student
  who empties all the functions first can work through the course in order.
"""
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from wrong_answers import WRONG

HERE = Path(__file__).resolve().parent
EXERCISES = [([item.strip() for item in implement.split(",")], check) for implement, check in
             re.findall(r"^Implement: (.+)\nCheck: (.+)$", (HERE / "EXERCISES.md").read_text(), re.M)]


def run_check(check, **env):
    command = shlex.split(check)
    return subprocess.run([sys.executable, *command[1:], "-x", "-q", "-p", "no:cacheprovider"], cwd=HERE,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_exercises_name_real_functions_tests_and_wrong_answers():
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
    assert all(target in named for target, _ in WRONG.values()), \
        "a wrong answer for a function of no exercise"


@pytest.mark.parametrize("number", range(1, len(EXERCISES) + 1))
def test_check_fails_on_an_empty_answer_and_passes_in_order(number):
    names, check = EXERCISES[number - 1]
    empty = run_check(check, NANOSEDD_STUB=",".join(names))
    assert empty.returncode == 1 and "your code goes here" in empty.stdout, \
        f"Exercise {number}: {check} did not fail on empty {names}\n{empty.stdout[-1500:]}"
    later = [name for later_names, _ in EXERCISES[number:] for name in later_names]
    in_order = run_check(check, NANOSEDD_STUB=",".join(later))
    assert in_order.returncode == 0, \
        f"Exercise {number}: {check} fails while the later exercises are empty\n{in_order.stdout[-1500:]}"


@pytest.mark.parametrize("name", list(WRONG))
def test_check_fails_on_a_wrong_answer(name):
    target, _ = WRONG[name]
    number, check = next((k, check) for k, (names, check) in enumerate(EXERCISES, 1) if target in names)
    done = run_check(check, NANOSEDD_WRONG=name)
    assert done.returncode == 1, \
        f"Exercise {number}: {check} passed the wrong answer {name} to {target}\n{done.stdout[-1500:]}"
