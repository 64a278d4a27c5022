"""The examples in docs/*.md run as doctests, and they show the specification's check values.

Every ```python block of a page is a doctest (``>>>`` lines and the output they print); the
blocks of one page share a namespace, in order, like the cells of a notebook. Lines outside
the blocks are blanked rather than removed, so a failure reports its line in the .md file.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```(\w*)\s*$")
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS

# The specification's check values for the losses focalkit has (independent float64 references
# the code is held to), as docs/losses.md prints them: each must be the expected output of an
# example there, so deleting or editing an example cannot drop a check value unnoticed.
CHECK_VALUES = [
    # sigmoid focal loss, gamma 2, alpha 0.25: per-element loss and d/dx
    "0.00135267213 0.0433216988 2.73208311e-05",
    "0.00365320515 -0.0745716988 -7.87179616e-05",
    # softmax focal loss, gamma 2: no alpha, alpha [.25, .5, .75]
    "0.8654664",
    "0.2163666",
    # GHM-C (dividing by the non-empty bins; by M), GHM-R
    "0.8245194461",
    "0.6183895846",
    "0.07804511035",
    # boxes [0,0,4,4] vs [1,1,5,5]: 1 - IoU, GIoU, DIoU = CIoU = EIoU, Focal-EIoU
    "0.608695652 0.608695652",
    "0.688695652",
    "0.648695652 0.648695652 0.648695652",
    "0.405787181",
    # FocalL1, alpha 1, beta 1/e: x = 0.5 and x = 2
    "0.274143398 1.75",
    # the IoU family on SPEC's pairs A, B, C (eps 1e-7); gradients: d/dpred of pair B
    # SIoU, paper sign and mmdetection's default; the disjoint and far pairs
    "0.6479062151 0.8064531602 1.264670296",
    "-0.03158774605 -0.06004945578 0.04334089757 -0.1032014569",
    "0.5678848793 0.6706575057 0.6363731279",
    "-0.05092932116 -0.0238260916 0.03108033154 -0.03102830707",
    "1.337673757 -0.03043617129",
    "-0.04010833783 0.2887703206",
    "1.63429414 -0.6357205391",
    # Wise-IoU v1, v2, v3 (mean 0.5), gradients of v1 and v3, the momentum, one update
    "0.6335369947 0.7645607982",
    "0.6990159385 0.9220950176",
    "0.8072155398 0.9995835235",
    "-0.03925017976 -0.07011881077 0.03025534685 -0.08749519272",
    "-0.05131551745 -0.09167303385 0.0395557113 -0.1143908414",
    "9.899484435e-05",
    "0.9999671321",
    # Alpha-IoU, -GIoU, -DIoU, -CIoU (a = 3); gradients of a-IoU and a-CIoU
    "0.9400838341 0.9797145006",
    "0.9405958341 0.9895541506",
    "0.9401478341 0.9798395006",
    "0.9401478341 0.9798424021",
    "-0.007376545229 -0.01106481784 0.007376545229 -0.01475309052",
    "-0.007370301307 -0.01117565431 0.007282066014 -0.01493343052",
    # MPDIoU (W 16, H 12)
    "0.6186956539 0.7647727281 1.075",
    "-0.04305785104 -0.05458677656 0.03805785104 -0.08111570235",
    # Inner-IoU: IoU_inner at 0.7 and 1.3; Inner-IoU, -GIoU, -CIoU, -SIoU (0.7); 1.3
    "0.2604501587 0.1807228905 0",
    "0.4840834235 0.3284671527 0",
    "0.7395498413 0.8192771095 1",
    "0.819549841 1.033562823 1.458333331",
    "0.7795498412 0.8835401401 1.278846153",
    "0.7787604026 0.8984575416 1.264670296",
    "0.5159165765 0.6715328473 1",
    "0.5559165764 0.735795878 1.278846153",
    "-0.02032225263 -0.05182174432 0.02032225263 -0.09043402481",
    # Focaler-IoU, -GIoU, -CIoU: (0, 0.95) and (0.2, 0.8)
    "0.5881006883 0.7129186612 1",
    "0.668100688 0.9272043749 1.458333331",
    "0.6281006882 0.7771816918 1.278846153",
    "0.6811594231 0.8787878802 1",
    "0.7611594228 1.093073594 1.458333331",
    "0.721159423 0.9430509108 1.278846153",
    "-0.03479773794 -0.0521966069 0.03479773794 -0.06959547616",
    # Shape-IoU, scale 0 and 1
    "0.6486956538 0.7924854753 1.285302998",
    "-0.03803930251 -0.05944051486 0.02627459664 -0.09508549343",
    "0.6486956538 0.7913834464 1.285302998",
    "-0.04906231195 -0.05805205697 0.03337603745 -0.08320982215",
    # QFL (beta 2): loss per element, per row, d/dx
    "0.001803562835 0.3774116009 0.002439491525 0.2819237362 0.02265805751 1.650078179",
    "0.3816546552 1.954659973",
    "0.004870940195 0.5261518219 -0.01424189572 0.4295064686 0.05258112998 1.07671373",
    # VFL: loss, d/dx, iou_weighted=False
    "0.001352672126 0.1299650964 0.3137286164 0.3039785063 0.2830587006",
    "0.003653205147 0.2237150964 0.04731671414 0.1293175736 0.3946138664",
    "0.001352672126 0.1299650964 0.3485873516 1.013261688 0.2830587006",
    # DFL: y = 2.3, 0, 3, 4; d/dpred at 2.3; the four sides as one box (exact, Ultralytics)
    "0.9832292786 2.373229279 2.173229279 3.473229279",
    "0.09317933786 0.1390072375 -0.07701278284 -0.1861904997 0.03101670717",
    "2.250729279",
    "2.247479279",
    # ASL: loss, sum, d/dx with the weights differentiated and detached
    "0 0.09125300409 0.002304297574 0.9600712226 0.8464149507",
    "1.900043475",
    "0 0.2088736875 -0.004444227696 -0.7926495646 0.7234899346",
    "0 0.05903041626 -0.002249213447 -0.5344466454 0.2956206377",
    # Poly-1 CE: epsilon 1 and its d/dx, epsilon 2 and -1, the soft target
    "2.233144886",
    "-0.9465355092 0.7738632731 0.1726722361",
    "3.001920989 0.6955926817",
    "2.192828471",
    # Poly-1 focal: epsilon 1 and its d/dx, epsilon -1, alpha None
    "0.003046466571 0.1683216988 0.0001339917428",
    "0.00812887274 -0.2620716988 -0.0003835538132",
    "-0.0003411223185 -0.08167830122 -7.935008055e-05",
    "0.00349735728 0.2982867951 0.0002159542362",
]


def _blocks_only(text: str) -> str:
    """``text`` with every line outside the ```python blocks (and the fences) made blank."""
    out, inside = [], False
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and not inside:
            inside = fence.group(1) == "python"
            out.append("")
        elif fence and inside:
            inside = False
            out.append("")
        else:
            out.append(line if inside else "")
    return "\n".join(out) + "\n"


def _doctest(page: Path) -> doctest.DocTest:
    source = _blocks_only(page.read_text(encoding="utf-8"))
    return doctest.DocTestParser().get_doctest(source, {}, page.name, str(page), 0)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.fixture
def clean_state(monkeypatch):
    """The examples assume CPU defaults: no Triton interpreter (so "auto" is torch) and the
    default dtype; anything an example changes in torch's global state is put back."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    torch.set_printoptions(profile="default")


def test_docs_exist():
    assert DOCS / "losses.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_doc_examples_pass(page, clean_state):
    """Every ``>>>`` example of the page prints what the page says it prints."""
    test = _doctest(page)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {page} failed"
    if _python_blocks(page.read_text(encoding="utf-8")):
        assert result.attempted > 0


def test_losses_page_has_examples():
    assert len(_doctest(DOCS / "losses.md").examples) >= 50


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_python_block_is_a_doctest(page):
    """No unverified code in the docs: each ```python block is made of ``>>>`` examples."""
    for block in _python_blocks(page.read_text(encoding="utf-8")):
        first = block.lstrip().splitlines()[0] if block.strip() else ""
        assert first.startswith(">>> "), f"{page.name}: a python block without >>>:\n{block}"


@pytest.mark.parametrize("value", CHECK_VALUES)
def test_check_value_is_an_example_output(value):
    """The check value is the printed output of an example (which the doctest verifies), or
    one line of it (an example that prints a row per loop iteration)."""
    wants = set()
    for ex in _doctest(DOCS / "losses.md").examples:
        wants.add(" ".join(ex.want.split()))
        wants.update(" ".join(line.split()) for line in ex.want.splitlines())
    assert value in wants, f"no example in docs/losses.md prints {value!r}"


def test_blanking_keeps_line_numbers():
    """A failing example is reported at its line in the .md file."""
    text = "# t\n\n```python\n>>> 1 + 1\n2\n```\n\ntext\n\n```python\n>>> 2 + 2\n4\n```\n"
    test = doctest.DocTestParser().get_doctest(_blocks_only(text), {}, "t", "t.md", 0)
    assert [ex.lineno + 1 for ex in test.examples] == [4, 11]
    assert [ex.want for ex in test.examples] == ["2\n", "4\n"]
