"""The README and docs/ state what the code does: profile table, Colab links, set-up and test commands."""

import inspect
import re
from pathlib import Path

from ddpm_course import COLAB_REPO
from ddpm_course.cli import main
from ddpm_course.demo import make_figures

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEVELOPING = (ROOT / "docs" / "DEVELOPING.md").read_text()
ALL_DOCS = README + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


def test_profile_table_is_the_profiles_command_output(capsys):
    assert main(["profiles"]) == 0
    printed = capsys.readouterr().out.strip()
    block = ALL_DOCS.split("<!-- profiles:start -->")[1].split("<!-- profiles:end -->")[0].strip()
    assert block == printed, "README's profile table is stale: paste `python -m ddpm_course profiles`"


def test_colab_badges_point_at_one_repository_and_existing_notebooks():
    root = Path(__file__).resolve().parents[1]
    pattern = r"https://colab\.research\.google\.com/github/([^/]+/[^/)]+)/blob/main/(notebooks/[\w./]+\.ipynb)"
    links = re.findall(pattern, README)
    assert len(links) == 12                                # both editions of the six notebooks
    assert {repo for repo, _ in links} == {COLAB_REPO}
    assert all((root / path).is_file() for _, path in links)
    solutions = [p for _, p in links if "/exercises/" not in p]
    assert [Path(p).name for _, p in links if "/exercises/" in p] == [Path(p).name for p in solutions]
    assert [Path(p).stem[:3] for p in solutions] == ["01_", "02_", "03_", "04_", "05_", "06_"]


def bash_block(text: str, heading: str) -> list:
    block = text.split(heading)[1].split("```bash")[1].split("```")[0]
    return [line for line in block.splitlines() if line.strip()]


def test_students_set_up_with_two_commands_and_tests_install_their_own_tools():
    assert bash_block(README, "## Set up on your own machine") == ["pip install -r requirements.txt",
                                                                   "jupyter lab notebooks/"]
    requirements = (ROOT / "requirements.txt").read_text().split()
    assert not {"pytest", "diffusers", "ruff"} & set(requirements)        # test tools are not for students
    test_commands = bash_block(DEVELOPING, "## Tests and CI")
    assert test_commands == ["pip install -r requirements.txt", 'pip install -e ".[test]"', "python -m pytest"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(f"python -m {command}" in ci for command in ("pip install --quiet -r requirements.txt",
                                                             'pip install --quiet -e ".[test]"', "pytest"))


def test_evaluator_accuracy_quoted_from_its_card():
    import json

    card = json.loads((Path(__file__).resolve().parents[1] / "assets" / "evaluator-mnist.json").read_text())
    assert f"held-out accuracy ({100 * card['heldout_accuracy']:.2f}%)" in ALL_DOCS
    assert card["command"].startswith("python -m ddpm_course evaluator train --dataset mnist")


def test_pretrained_table_is_the_cards(capsys):
    assert main(["pretrained", "table"]) == 0
    printed = capsys.readouterr().out.strip()
    block = README.split("<!-- pretrained:start -->")[1].split("<!-- pretrained:end -->")[0].strip()
    assert block == printed, "README's pretrained table is stale: paste `python -m ddpm_course pretrained table`"


def test_result_figures_exist_and_name_their_command():
    root = Path(__file__).resolve().parents[1]
    paths = re.findall(r"\]\((assets/figures/[\w.]+)\)", README)
    scales = inspect.signature(make_figures).parameters["guidance_scales"].default
    made = {f"assets/figures/guidance_{w:g}.png" for w in scales} | {
        f"assets/figures/denoising_{d}.gif" for d in range(10)}
    assert set(paths) == made and all((root / p).is_file() for p in paths)   # every figure `figures` makes, shown
    section = README.split("## Results")[1].split("\n## ")[0]
    assert "`python -m ddpm_course figures --out assets/figures --gif-guidance 3`" in section
