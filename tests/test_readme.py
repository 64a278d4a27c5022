"""The README's Python examples run as written, its benchmark tables match the JSON, and the
links and repository paths of the README, the docs, CONTRIBUTING.md and CHANGELOG.md resolve."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_first_commands_are_the_make_targets_ci_uses():
    """The README opens with exactly the two set-up commands, and CI runs the test one."""
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


# An example that uses an integration runs where its stack imports (``make test-stacks``) and
# is skipped elsewhere, or fails there under FOCALKIT_REQUIRE_STACKS=1 (CI's stacks step).
# yolov8/yolo11 heads have a DFL: their example also needs focalkit.distribution_focal_loss.
STACKS = {
    "from focalkit.integrations import torchvision": ("torchvision", None),
    "from focalkit.integrations import ultralytics": ("ultralytics", None),
    'YOLO("yolov8': ("ultralytics", "distribution_focal_loss"),
}


def _needs(block: str) -> None:
    import os
    import tempfile

    import focalkit
    from focalkit._optional import optional_import

    for marker, (package, function) in STACKS.items():
        if marker not in block:
            continue
        if package == "ultralytics":  # no network: settings in a temporary folder
            os.environ["YOLO_OFFLINE"] = "1"
            os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
        module, reason = optional_import(package)
        if module is None:
            message = f"the example needs {package}, which is {reason}"
            if os.environ.get("FOCALKIT_REQUIRE_STACKS", "") not in ("", "0"):
                pytest.fail(message + " (FOCALKIT_REQUIRE_STACKS=1)")
            pytest.skip(message)
        if function is not None and getattr(focalkit, function, None) is None:
            pytest.skip(f"the example needs focalkit.{function} (the generalized-focal branch)")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    """Each usage example executes and yields finite gradients."""
    _needs(BLOCKS[index])
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README block {index}", "exec"), namespace)
    import torch

    tensors = [
        v
        for v in namespace.values()
        if isinstance(v, torch.Tensor) and v.is_leaf and v.grad is not None
    ]
    modules = [v for v in namespace.values() if isinstance(v, torch.nn.Module)]
    grads = tensors + [p for m in modules for p in m.parameters() if p.grad is not None]
    assert grads, "the example should backpropagate into something"
    assert all(torch.isfinite(g.grad).all() for g in grads)


def test_readme_benchmark_tables_are_generated_from_results():
    """The tables between the bench markers are exactly what render_readme.py makes now."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "render_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------------------------
# links and repository paths in the Markdown files
# --------------------------------------------------------------------------------------------

MARKDOWN = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *ROOT.glob("docs/*.md")]
)
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_BLOCKS = ("bash", "sh", "shell", "console")
LINK = re.compile(r"\]\(([^)\s]+)\)")
SPAN = re.compile(r"`([^`\n]+)`")
# a word ending like this names a file: it must exist
FILE_SUFFIX = re.compile(r"\.(py|md|toml|json|png|txt|yml|yaml|cfg|ini|sh)$")
# the word after these options is a file the command writes, not one the repository holds
OUTPUT_OPTIONS = ("--json", "--plot", "--out")


def _split(path: Path) -> tuple[list[str], list[str]]:
    """The lines of ``path`` outside fenced blocks (fenced lines blanked) and the command lines
    of its shell blocks (comments removed)."""
    prose, shell, fence = [], [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = FENCE.match(line)
        if match and fence is None:
            fence = match.group(1)
            prose.append("")
        elif match:
            fence = None
            prose.append("")
        elif fence is None:
            prose.append(line)
        else:
            prose.append("")
            if fence in SHELL_BLOCKS:
                shell.append(re.sub(r"(^|\s)#.*$", "", line))
    return prose, shell


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose, _ = _split(path)
    seen: dict[str, int] = {}
    anchors = set()
    for line in prose:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _ignored_patterns() -> list[str]:
    """The .gitignore patterns: paths matching them are generated output, not repository files."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return [ln.strip().strip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


IGNORED = _ignored_patterns()


def _is_generated(path: str) -> bool:
    return any(fnmatch.fnmatch(part, pat) for part in path.split("/") for pat in IGNORED)


def _exists(path: str) -> bool:
    path = path.removeprefix("./")
    if any(ch in path for ch in "*?["):
        return any(ROOT.glob(path.rstrip("/")))
    return (ROOT / path).exists()


def _path_words(text: str) -> list[str]:
    """Words of a code span or a shell line that name a repository path: a word whose first
    component is a top-level entry of the repository, or one that ends like a file name."""
    top = {p.name for p in ROOT.iterdir()}
    words = text.split()
    found = []
    for i, word in enumerate(words):
        if i and words[i - 1] in OUTPUT_OPTIONS:
            continue
        word = word.strip("\"'`,;:()")
        first = word.removeprefix("./").split("/")[0]
        if ("/" in word and first in top) or FILE_SUFFIX.search(word):
            found.append(word)
    return found


def _references(path: Path) -> list[tuple[str, str]]:
    """(kind, target) for every relative link and every repository path named in ``path``."""
    prose, shell = _split(path)
    text = "\n".join(prose)
    refs = [("link", target) for target in LINK.findall(text)]
    for span in SPAN.findall(text):
        refs += [("path", word) for word in _path_words(span)]
    for line in shell:
        refs += [("path", word) for word in _path_words(line)]
    return refs


def _broken(doc: Path) -> list[str]:
    """The links and repository paths of ``doc`` that do not resolve."""
    broken = []
    for kind, target in _references(doc):
        if kind == "link":
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            if not dest.exists():
                broken.append(f"link {target!r}: no file {file_part!r}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"link {target!r}: no heading #{anchor} in {dest.name}")
        elif not _is_generated(target) and not _exists(target):
            broken.append(f"path `{target}` does not exist in the repository")
    return broken


@pytest.mark.parametrize("doc", MARKDOWN, ids=[str(p.relative_to(ROOT)) for p in MARKDOWN])
def test_links_and_paths_resolve(doc):
    """Every relative link (and its #anchor) and every backticked repository path exists."""
    assert doc.exists(), f"{doc.relative_to(ROOT)} is missing"
    broken = _broken(doc)
    assert not broken, f"{doc.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_reference_checker_catches_what_it_should(tmp_path):
    """The checker flags a missing file, a path given from inside src/, a missing anchor and a
    missing linked file; it passes existing paths, globs, generated output (.gitignore), the
    files a command writes, and slashes that are not paths."""
    doc = tmp_path / "x.md"
    doc.write_text(
        "# Title\n\nSee `SPEC.md`, `focalkit/kernels/dispatch.py`, [a](#nope), [b](#title),\n"
        "[c](https://example.org/x.md), [d](nowhere.md), `tests/test_triton_*.py`,\n"
        "`focalkit-report/report.md`, `focalkit bench --json benchmarks/results/new.json`,\n"
        "`src/*.egg-info`, `9/23`, `j/M`.\n\n"
        "```bash\npytest tests/test_nothing_here.py  # tests/in_a_comment.py\n```\n"
    )
    assert _broken(doc) == [
        "link '#nope': no heading #nope in x.md",
        "link 'nowhere.md': no file 'nowhere.md'",
        "path `SPEC.md` does not exist in the repository",
        "path `focalkit/kernels/dispatch.py` does not exist in the repository",
        "path `tests/test_nothing_here.py` does not exist in the repository",
    ]
    assert _slug("Box losses: IoU, GIoU, Focal-EIoU") == "box-losses-iou-giou-focal-eiou"
