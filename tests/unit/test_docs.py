"""The front page and docs/ stay true: size, links, runnable commands, figures from reports/."""
import re
import shlex

import pytest

from ecr_ray.cli import _parser
from ecr_ray.config import REPO_ROOT
from ecr_ray.run_report import RESULTS_BEGIN, RESULTS_END

README = REPO_ROOT / "README.md"
PAGES = [README, REPO_ROOT / "CHANGELOG.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_BASH = re.compile(r"^```bash\n(.*?)^```$", re.S | re.M)


def bash_blocks(page) -> list[str]:
    return _BASH.findall(page.read_text())


def test_the_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.encode()) <= 12 * 1024, f"README.md is {len(text.encode())} bytes: reference goes to docs/, history to CHANGELOG.md"
    for needed in ("doi.org/10.1145/3640457.3688133", "@inproceedings", "```mermaid", RESULTS_BEGIN, "docs/configuration.md"):
        assert needed in text


def test_ci_runs_the_readmes_first_two_commands():
    """.ci/run takes the first two ```bash blocks: command 1 installs and runs the main job, command 2 the tests."""
    first, second = (block.strip() for block in bash_blocks(README)[:2])
    assert "pip install" in first and "ecr-ray run --config tiny" in first and "\n" not in first
    assert "pip install" in second and "'.[test]'" in second and second.endswith("python -m pytest")
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "for n in 1 2" in ci


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_ecr_ray_command_shown_parses(page):
    """Each `ecr-ray ...` line in a ```bash block is accepted by the real command-line parser."""
    parser = _parser()
    for block in bash_blocks(page):
        for line in block.splitlines():
            for command in re.split(r"&&|;", line):
                if not command.strip().startswith("ecr-ray "):
                    continue
                words = shlex.split(command, comments=True)
                words = words[1:words.index(">")] if ">" in words else words[1:]
                try:
                    parser.parse_args(words)
                except SystemExit:
                    pytest.fail(f"{page.name}: `{command.strip()}` is not a valid ecr-ray command")


def test_the_readme_results_are_the_generated_ones():
    """The README's results table is the one `ecr-ray results` wrote into reports/results.md, never typed."""
    readme = README.read_text()
    table = readme.split(RESULTS_BEGIN)[1].split(RESULTS_END)[0].strip()
    results = (REPO_ROOT / "reports" / "results.md").read_text()
    assert table and table in results
    assert results.startswith("# Results: run ") and "ecr-ray results --run-dir" in results


def test_the_papers_figures_stand_in_a_table_of_their_own():
    """Our figures name their split; the paper's (another split) are never set in the same row as ours."""
    from ecr_ray.run_report import PAPER, figures_table

    lines = figures_table({"rec-eval-pool": {"recall@50": 0.41, "intervals": {"recall@50": [0.38, 0.44]}}}, "cpu")
    ours = lines[: lines.index("")]
    assert ours[2] == "| recommender R@50 | pool dev | 0.4100 [0.380, 0.440] |" and len(ours) == 3
    assert "| recommender R@50 | 0.4280 |" in lines[len(ours):] and sum(ln.startswith("| recommender") for ln in lines) == 1 + sum(stage == "rec-eval-pool" for stage, _ in PAPER)
