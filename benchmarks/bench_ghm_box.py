"""Forward+backward time of focalkit's GHM and box losses against their plain formulations.

    python benchmarks/bench_ghm_box.py [--repeat 5] [--ghm-sizes 1000000 10000000]
                                       [--boxes 100000] [--json PATH]

* GHM-C (bins=30) and GHM-R (bins=10): focalkit against the per-bin Python loop with
  ``.item()`` of the authors' code / mmdetection (written out below), on dense (N, 80) logits
  with ~2% positives.
* Box losses at ``--boxes`` pairs: focalkit against the plain eager formula (autograd on the
  textbook expression, as torchvision / the papers' code write it).

Each time is the median of ``--repeat`` calls after one warm-up call; the table's ratio is
baseline / focalkit (higher is better for focalkit). ``--json`` writes the rows and the
environment atomically (temporary file, then rename). Both sides run eagerly, no compile.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import focalkit as fk
from _harness import environment, median_seconds, write_json_atomic
from focalkit.cli.baselines import loop_ghm_c

# --------------------------------------------------------------------------------------------
# baselines: GHM as the authors' code / mmdetection write it (per-bin loop with .item())
# --------------------------------------------------------------------------------------------


def loop_ghm_r(pred, target, label_weight, mu=0.02, bins=10):
    """mmdetection ``GHMR.forward`` with momentum 0."""
    edges = torch.arange(bins + 1).float().to(pred.device) / bins
    edges[-1] = 1e3
    diff = pred - target
    loss = torch.sqrt(diff * diff + mu * mu) - mu
    g = torch.abs(diff / torch.sqrt(mu * mu + diff * diff)).detach()
    weights = torch.zeros_like(g)
    valid = label_weight > 0
    tot = max(label_weight.float().sum().item(), 1.0)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num_in_bin = inds.sum().item()
        if num_in_bin > 0:
            n += 1
            weights[inds] = tot / num_in_bin
    if n > 0:
        weights /= n
    return (loss * weights).sum() / tot


# --------------------------------------------------------------------------------------------
# baselines: plain eager box formulas
# --------------------------------------------------------------------------------------------


def _plain_parts(pred, target, eps):
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    w, h, wg, hg = x2 - x1, y2 - y1, x2g - x1g, y2g - y1g
    xk1, yk1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xk2, yk2 = torch.min(x2, x2g), torch.min(y2, y2g)
    inter = (xk2 - xk1).clamp(min=0) * (yk2 - yk1).clamp(min=0)
    union = w * h + wg * hg - inter
    iou = inter / (union + eps)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    cw, ch = xc2 - xc1, yc2 - yc1
    rho2 = ((x1 + x2 - x1g - x2g) ** 2 + (y1 + y2 - y1g - y2g) ** 2) / 4
    return w, h, wg, hg, union, iou, cw, ch, rho2


def plain_box_loss(kind, pred, target, eps=1e-7):
    w, h, wg, hg, union, iou, cw, ch, rho2 = _plain_parts(pred, target, eps)
    if kind == "iou":
        return (1 - iou).mean()
    if kind == "giou":
        area_c = cw * ch
        return (1 - iou + (area_c - union) / (area_c + eps)).mean()
    diou = 1 - iou + rho2 / (cw**2 + ch**2 + eps)
    if kind == "diou":
        return diou.mean()
    if kind == "ciou":
        v = (4 / math.pi**2) * (torch.atan(wg / (hg + eps)) - torch.atan(w / (h + eps))) ** 2
        with torch.no_grad():
            alpha = v / (1 - iou + v + eps)
        return (diou + alpha * v).mean()
    eiou = (
        1
        - iou
        + rho2 / (cw**2 + ch**2 + eps)
        + (w - wg) ** 2 / (cw**2 + eps)
        + (h - hg) ** 2 / (ch**2 + eps)
    )
    if kind == "eiou":
        return eiou.mean()
    return (iou.detach() ** 0.5 * eiou).mean()  # focal_eiou


FOCALKIT_BOX = {
    "iou": fk.iou_loss,
    "giou": fk.giou_loss,
    "diou": fk.diou_loss,
    "ciou": fk.ciou_loss,
    "eiou": fk.eiou_loss,
    "focal_eiou": fk.focal_eiou_loss,
}


# --------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------


def fwd_bwd(loss_fn, leaf, *args):
    x = leaf.detach().requires_grad_(True)

    def step():
        x.grad = None
        loss = loss_fn(x, *args)
        loss.backward()
        return loss

    return step


def time_pair(name, size, baseline, ours, device, repeat):
    check_base, check_ours = baseline(), ours()
    rel = abs(check_base.item() - check_ours.item()) / max(abs(check_base.item()), 1e-12)
    t_base = median_seconds(baseline, device, repeat=repeat)
    t_ours = median_seconds(ours, device, repeat=repeat)
    return {
        "name": name,
        "size": size,
        "baseline_ms": t_base * 1e3,
        "focalkit_ms": t_ours * 1e3,
        "ratio": t_base / t_ours,
        "rel_diff": rel,
    }


def ghm_rows(sizes, device, repeat):
    rows = []
    for numel in sizes:
        gen = torch.Generator().manual_seed(0)
        logits = (torch.randn(numel // 80, 80, generator=gen) * 3).to(device)
        targets = (torch.rand(numel // 80, 80, generator=gen) < 0.02).float().to(device)
        label_weight = torch.ones_like(targets)
        base = fwd_bwd(lambda x, t, w: loop_ghm_c(x, t, w, bins=30), logits, targets, label_weight)
        ours = fwd_bwd(lambda x, t: fk.ghm_c_loss(x, t, bins=30), logits, targets)
        rows.append(time_pair("ghm_c bins=30", numel, base, ours, device, repeat))
    numel = min(sizes)
    gen = torch.Generator().manual_seed(1)
    pred = (torch.randn(numel // 4, 4, generator=gen) * 0.2).to(device)
    target = torch.zeros_like(pred)
    weight = (torch.rand(numel // 4, 1, generator=gen) < 0.5).float().expand(-1, 4).to(device)
    base = fwd_bwd(lambda x: loop_ghm_r(x, target, weight, bins=10), pred)
    ours = fwd_bwd(lambda x: fk.ghm_r_loss(x, target, bins=10, weight=weight), pred)
    rows.append(time_pair("ghm_r bins=10", numel, base, ours, device, repeat))
    return rows


def box_rows(n, device, repeat):
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 50 + 1
    target = torch.cat([xy, xy + wh], -1).to(device)
    pred = (target + torch.randn(n, 4, generator=gen).to(device) * 5).detach()
    rows = []
    for kind, fn in FOCALKIT_BOX.items():
        base = fwd_bwd(lambda x, k=kind: plain_box_loss(k, x, target), pred)
        ours = fwd_bwd(lambda x, f=fn: f(x, target), pred)
        rows.append(time_pair(f"{kind}_loss", n, base, ours, device, repeat))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ghm-sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--boxes", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    rows = ghm_rows(args.ghm_sizes, device, args.repeat) + box_rows(args.boxes, device, args.repeat)
    env = environment(device)
    print(
        f"# torch {env['torch']}, {env['threads']} threads, {env['device_name']}, forward+backward, "
        f"median of {args.repeat}"
    )
    header = f"{'loss':<16}{'size':>10}{'baseline ms':>14}{'focalkit ms':>14}{'ratio':>8}{'rel diff':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['name']:<16}{r['size']:>10}{r['baseline_ms']:>14.2f}{r['focalkit_ms']:>14.2f}"
            f"{r['ratio']:>7.1f}x{r['rel_diff']:>10.1e}"
        )
    if args.json is not None:
        write_json_atomic(args.json, {"benchmark": "ghm_box", "environment": env, "rows": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
