"""The loss tables the integrations share: a name, the focalkit callable behind it, the options
it takes (read from its signature) and how the integration builds its targets.

Each stack (:mod:`focalkit.integrations.torchvision`, :mod:`focalkit.integrations.ultralytics`)
keeps one dict ``name -> LossSpec`` per role (classification, box, ...). Adding a loss to a
stack is one entry there: the stack's code reads ``spec.targets`` to build the targets and
calls the callable with the keywords it owns (``weight``, ``reduction``, ...) plus the user's
options. The options a name accepts are *not* listed by hand: they are the keyword parameters
of the focalkit callable (a function, or a Module's constructor) less the ones the
integration sets itself, so an option that does not belong to the chosen loss raises, and a
new keyword of a focalkit loss is accepted as soon as the loss has it. What the stacks
compute alike is written here once: the IoU family's box entries (:func:`iou_family_specs`),
and the keywords a classification or box loss leaves to the stack (:func:`label_spec`,
:func:`box_spec`).

A name whose focalkit callable is not in the installed focalkit (a loss from a newer release)
is still listed; choosing it raises :class:`LossUnavailableError`, which says where it comes
from.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import focalkit

__all__ = [
    "LossSpec",
    "LossUnavailableError",
    "accepted_options",
    "box_spec",
    "build",
    "check_normalization",
    "describe",
    "iou_family_specs",
    "label_spec",
    "require_stack",
    "split_options",
]

NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})

GFL_BRANCH = "the generalized-focal branch (after focalkit 0.1.0)"
IOU_BRANCH = "the iou-family branch (after focalkit 0.1.0)"


class LossUnavailableError(ImportError):
    """A loss name is known to the integration, but the installed focalkit lacks its
    function (it comes with a later focalkit)."""


@dataclass(frozen=True)
class LossSpec:
    """How an integration computes one named loss.

    Attributes:
        name: the name users pass (``classification="focal"``).
        attr: the focalkit attribute (``"sigmoid_focal_loss"``, ``"GHMCLoss"``), or ``""``
            when ``func`` is given.
        targets: the stack-specific name of how targets are built (see each stack's module).
        summary: one line for the options table.
        fixed: keywords the integration always passes (``gamma=0`` for "bce"); for a Module,
            constructor keywords.
        owned: further keywords the integration passes or forbids (``weight``,
            ``reduction``, ...): not user options.
        call_needs: keywords the callable must accept at call time (checked when the loss is
            built, so a focalkit version whose function lacks one fails early and clearly).
        module: the callable is a Module class: it is built once (its state, such as an EMA
            buffer, lives in the model) and called as ``module(pred, target, **call_kwargs)``.
        func: a callable defined by the integration itself (torch's L1), instead of ``attr``.
        provides: where the callable comes from, for the error when it is missing.
    """

    name: str
    attr: str
    targets: str
    summary: str
    fixed: Mapping[str, Any] = field(default_factory=lambda: NO_OPTIONS)
    owned: frozenset[str] = frozenset()
    call_needs: frozenset[str] = frozenset()
    module: bool = False
    func: Callable[..., Any] | None = field(default=None, compare=False)
    provides: str = "focalkit"

    def resolve(self) -> Any:
        """The callable (function or Module class), or raise :class:`LossUnavailableError`."""
        if self.func is not None:
            return self.func
        found = getattr(focalkit, self.attr, None)
        if found is None:
            raise LossUnavailableError(
                f"{self.name!r} needs focalkit.{self.attr}, which focalkit "
                f"{focalkit.__version__} does not have: it comes with {self.provides}. "
                f"Upgrade focalkit, or choose another loss."
            )
        return found

    def available(self) -> bool:
        return self.func is not None or getattr(focalkit, self.attr, None) is not None

    @property
    def qualname(self) -> str:
        if self.func is not None:
            return self.summary
        return f"focalkit.{self.attr}"


# the keywords a stack passes to a classification loss (``owned``: not user options) and those
# it needs at call time; likewise for a box loss
CLS_OWNED = frozenset({"weight", "reduction", "normalizer", "ignore_index"})
CLS_CALL = frozenset({"weight", "reduction"})
BOX_OWNED = frozenset({"weight", "reduction", "normalizer", "box_format"})
BOX_CALL = frozenset({"weight", "reduction"})
#: "bce": sigmoid focal loss with these fixed
BCE_FIXED: Mapping[str, Any] = MappingProxyType({"gamma": 0.0, "alpha": None})


def label_spec(
    name: str,
    attr: str,
    targets: str,
    summary: str,
    provides: str = "focalkit",
    *,
    scores: bool = False,
    **kw: Any,
) -> LossSpec:
    """A classification loss function of the sigmoid family (focal, BCE, QFL, VFL, Poly-1
    focal): the stack passes ``weight`` and ``reduction`` (and owns ``normalizer`` and
    ``ignore_index``), plus ``scores=`` (the IoU-aware targets) with ``scores``."""
    extra = frozenset({"scores"}) if scores else frozenset()
    return LossSpec(
        name,
        attr,
        targets,
        summary,
        owned=CLS_OWNED | extra,
        call_needs=CLS_CALL | extra,
        provides=provides,
        **kw,
    )


def box_spec(name: str, attr: str, summary: str, provides: str = "focalkit", **kw: Any) -> LossSpec:
    """A box loss: targets "boxes", owning and passing :data:`BOX_OWNED` / :data:`BOX_CALL`
    unless ``kw`` says otherwise."""
    return LossSpec(
        name,
        attr,
        kw.pop("targets", "boxes"),
        summary,
        owned=kw.pop("owned", BOX_OWNED),
        call_needs=kw.pop("call_needs", BOX_CALL),
        provides=provides,
        **kw,
    )


def iou_family_specs(summaries: Mapping[str, str] = NO_OPTIONS) -> dict[str, LossSpec]:
    """The IoU family's box losses, as every stack computes them (decoded boxes against the
    ground truth; Wise-IoU as a Module, its running mean kept in the model; MPDIoU with
    ``image_size=``). ``summaries``: a stack's own wording of a name's summary."""
    said = {
        "iou": "IoU loss (1 - IoU, or -log IoU with mode='log')",
        "giou": "GIoU loss",
        "diou": "DIoU loss",
        "ciou": "CIoU loss",
        "eiou": "EIoU loss (Efficient IoU)",
        "focal_eiou": "Focal-EIoU loss",
        "siou": "SIoU loss",
        "wiou": "Wise-IoU (a Module: its running mean is in the model's state_dict)",
        "mpdiou": "MPDIoU loss",
        "shape_iou": "Shape-IoU loss",
        **summaries,
    }
    return {
        "iou": box_spec("iou", "iou_loss", said["iou"]),
        "giou": box_spec("giou", "giou_loss", said["giou"]),
        "diou": box_spec("diou", "diou_loss", said["diou"]),
        "ciou": box_spec("ciou", "ciou_loss", said["ciou"]),
        "eiou": box_spec("eiou", "eiou_loss", said["eiou"]),
        "focal_eiou": box_spec("focal_eiou", "focal_eiou_loss", said["focal_eiou"]),
        "siou": box_spec("siou", "siou_loss", said["siou"], IOU_BRANCH),
        "wiou": box_spec(
            "wiou",
            "WIoULoss",
            said["wiou"],
            IOU_BRANCH,
            fixed=MappingProxyType({"reduction": "sum"}),
            owned=frozenset({"weight", "normalizer", "box_format"}),
            call_needs=frozenset({"weight"}),
            module=True,
        ),
        "mpdiou": box_spec(
            "mpdiou",
            "mpdiou_loss",
            said["mpdiou"],
            IOU_BRANCH,
            targets="boxes+size",
            owned=BOX_OWNED | {"image_size"},
            call_needs=BOX_CALL | {"image_size"},
        ),
        "shape_iou": box_spec("shape_iou", "shape_iou_loss", said["shape_iou"], IOU_BRANCH),
    }


def check_normalization(normalization: object, choices: tuple[str, ...]) -> None:
    """ValueError unless ``normalization`` is one of the stack's ``choices``."""
    if normalization not in choices:
        raise ValueError(
            f"normalization: expected one of {', '.join(map(repr, choices))}, got {normalization!r}"
        )


def _keyword_parameters(obj: Any, skip: int) -> list[inspect.Parameter]:
    params = list(inspect.signature(obj).parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p for p in params[skip:] if p.kind in kinds]


def _skip(spec: LossSpec) -> int:
    """How many leading positional parameters are inputs, not options: (pred, target) of a
    function; none of a Module's ``__init__`` (``inspect.signature`` of a class drops self)."""
    return 0 if spec.module else 2


def accepted_options(spec: LossSpec) -> tuple[str, ...]:
    """The option names ``spec`` takes from users: its callable's keyword parameters less the
    fixed and owned ones. Raises :class:`LossUnavailableError` if the callable is missing."""
    target = spec.resolve()
    names = [p.name for p in _keyword_parameters(target, _skip(spec))]
    return tuple(n for n in names if n not in spec.fixed and n not in spec.owned)


def _call_parameters(spec: LossSpec) -> set[str]:
    target = spec.resolve()
    if spec.module:
        params = inspect.signature(target.forward).parameters
    else:
        params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return set(params) | set(spec.call_needs)
    return set(params)


def check_callable(role: str, spec: LossSpec) -> None:
    """The callable accepts every keyword the integration passes at call time."""
    missing = sorted(spec.call_needs - _call_parameters(spec))
    if missing:
        raise LossUnavailableError(
            f"{role}={spec.name!r}: {spec.qualname} in focalkit {focalkit.__version__} takes "
            f"no {', '.join(repr(m) for m in missing)} keyword, which the integration passes; "
            f"it needs the version that comes with {spec.provides}"
        )


def _lookup(role: str, name: object, table: Mapping[str, LossSpec]) -> LossSpec:
    if not isinstance(name, str):
        raise TypeError(
            f"{role}: expected a loss name (str), got {type(name).__name__}; "
            f"supported: {', '.join(table)}"
        )
    spec = table.get(name)
    if spec is None:
        raise ValueError(f"{role}: unknown loss {name!r}; supported: {', '.join(table)}")
    return spec


def split_options(
    choices: Mapping[str, tuple[str, LossSpec]], options: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Route each option to the loss that takes it.

    ``choices`` maps a role (``"classification"``) to ``(prefix, spec)``. An option named
    ``<prefix><name>`` (``cls_gamma``) goes to that role's loss; a plain name goes to the one
    loss that takes it. A name no chosen loss takes, or one that two take without a prefix,
    raises ``ValueError`` listing what each loss accepts."""
    accepted = {role: set(accepted_options(spec)) for role, (_, spec) in choices.items()}
    routed: dict[str, dict[str, Any]] = {role: {} for role in choices}
    for key, value in options.items():
        target = None
        for role, (prefix, _) in choices.items():
            if key.startswith(prefix) and key[len(prefix) :] in accepted[role]:
                target, name = role, key[len(prefix) :]
                break
        if target is None:
            takers = [role for role in choices if key in accepted[role]]
            if len(takers) > 1:
                hint = " or ".join(f"{choices[r][0]}{key}=" for r in takers)
                raise ValueError(
                    f"option {key!r} is taken by both "
                    + " and ".join(f"{r}={choices[r][1].name!r}" for r in takers)
                    + f"; say which one with {hint}"
                )
            if not takers:
                raise ValueError(
                    f"option {key!r} belongs to none of the chosen losses; "
                    + _menu(choices, accepted)
                )
            target, name = takers[0], key
        if name in routed[target]:
            raise ValueError(f"option {name!r} given twice for {target} (with and without prefix)")
        routed[target][name] = value
    return routed


def _menu(choices: Mapping[str, tuple[str, LossSpec]], accepted: Mapping[str, set[str]]) -> str:
    parts = []
    for role, (prefix, spec) in choices.items():
        names = sorted(accepted[role])
        listed = ", ".join(names) if names else "no options"
        parts.append(f"{role}={spec.name!r} ({spec.qualname}) takes: {listed} (prefix {prefix!r})")
    return "; ".join(parts)


def build(role: str, name: object, table: Mapping[str, LossSpec]) -> LossSpec:
    """The spec of ``name`` in ``table``, checked: a known name (``ValueError`` listing the
    supported ones otherwise), an available callable that takes what the integration passes
    (:class:`LossUnavailableError` otherwise)."""
    spec = _lookup(role, name, table)
    spec.resolve()
    check_callable(role, spec)
    return spec


def instantiate(spec: LossSpec, options: Mapping[str, Any]) -> Any:
    """For a Module spec, the Module built with its fixed keywords and the user's options;
    for a function, the function itself (options are passed at call time)."""
    target = spec.resolve()
    if spec.module:
        return target(**spec.fixed, **options)
    return target


def describe(tables: Mapping[str, Mapping[str, LossSpec]]) -> list[dict[str, Any]]:
    """One row per (role, name): what it computes, and its options or why it is unavailable."""
    rows = []
    for role, table in tables.items():
        for name, spec in table.items():
            row: dict[str, Any] = {"role": role, "name": name, "computes": spec.qualname}
            try:
                row["options"] = accepted_options(spec)
                row["available"] = ""
            except LossUnavailableError:
                row["options"] = ()
                row["available"] = f"comes with {spec.provides}"
            row["targets"] = spec.targets
            row["summary"] = spec.summary
            rows.append(row)
    return rows


def require_stack(package: str, extra: str, what: str) -> Any:
    """Import ``package`` (through :func:`focalkit._optional.optional_import`) or raise an
    ``ImportError`` naming what is missing and how to install it."""
    from .._optional import optional_import

    module, reason = optional_import(package)
    if module is None:
        state = "not installed" if reason == "not installed" else f"installed but {reason}"
        raise ImportError(
            f"{what} needs {package}, which is {state}. Install it with "
            f"pip install 'focalkit[{extra}]' (the versions focalkit is tested with are in "
            f"docs/integrations.md)"
        )
    return module


def names(table: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in table)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The options table of :func:`describe`'s rows, as the README and the docs show it."""
    lines = [
        "| role | name | what it computes | computed by | options |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row["available"]:
            options = f"not in this focalkit yet: {row['available']}"
        else:
            options = ", ".join(f"`{o}`" for o in row["options"]) or "none"
        computes = row["computes"]
        computes = f"`{computes}`" if computes.startswith("focalkit.") else "torch"
        lines.append(
            f"| {row['role']} | `{row['name']}` | {row['summary']} | {computes} | {options} |"
        )
    return "\n".join(lines)
