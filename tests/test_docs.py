"""The README and docs/ are self-contained: every relative link names a file of the repository (no
link outside it, none to a page that was never generated), and none points to the web."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_link_names_a_file_of_the_repository(page):
    for target in LINK.findall(page.read_text()):
        assert not target.startswith(("http://", "https://")), f"{page.name} links outside the repository: {target}"
        path = target.split("#", 1)[0]
        if not path:  # an anchor on the same page
            continue
        resolved = (page.parent / path).resolve()
        assert resolved.is_relative_to(ROOT), f"{page.name} links outside the repository: {target}"
        assert resolved.exists(), f"{page.name} links to {target}, which does not exist"


def test_the_usage_table_of_config_groups_lists_every_option():
    from ptlab.checks.commands import group_options

    rows = {match[0]: match[1] for match in re.findall(r"^\| `([a-z_/]+)` \| (.*?) \|", (ROOT / "docs" / "usage.md").read_text(), re.M)}
    for group in ("algorithm", "sampler", "model", "task", "warmstart", "generation", "optimizer", "scheduler", "trainer",
                  "logger", "experiment"):
        missing = [name for name in group_options(group) if f"`{name}`" not in rows[group]]
        assert not missing, f"docs/usage.md's row of {group} leaves out {', '.join(missing)}"


def test_the_algorithm_of_your_own_in_the_usage_docs_gives_its_weights_by_hand():
    import torch

    from tests.conftest import rollout_from_lists

    text = (ROOT / "docs" / "usage.md").read_text()
    section = text[text.index("## Your own algorithm"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "docs/usage.md", "exec"), namespace)  # noqa: S102 - the docs' own example
    rollout = rollout_from_lists([1.0, 0.0, 0.5, 0.5], group_size=2, lengths=[1, 2, 1, 1])
    weights, _ = namespace["Centred"](group_size=2).weights(torch.zeros(4, 2), rollout)
    # group means 0.5 and 0.5: advantages +0.5, -0.5, 0, 0 on every token of each response, 0 past its end
    assert torch.equal(weights, torch.tensor([[0.5, 0.0], [-0.5, -0.5], [0.0, 0.0], [0.0, 0.0]]))
