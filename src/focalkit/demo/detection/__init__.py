"""Study 2 of the demo: dense detection of small shapes on clutter, evaluated with pycocotools.

One module per part, each importable on its own: :mod:`.data` (the generated scenes and their
COCO ground truth), :mod:`.boxes` (anchors, IoU, assignment, box coding, NMS), :mod:`.model`
(the tiny RetinaNet), :mod:`.evaluate` (post-processing, COCOeval, gradient-norm and
cumulative-loss statistics) and :mod:`.study` (settings, losses, training, the run record).

The loss names of the study are here, free of the heavy imports, so that the report can list
them where :mod:`.study` does not import (pycocotools absent).
"""

__all__ = ["BOX_LOSSES", "CLS_LOSSES", "DEFAULT_BOX", "DEFAULT_CLS"]

CLS_LOSSES = ("bce", "alpha_bce", "focal", "ghmc", "qfl", "vfl")
BOX_LOSSES = (
    "smooth_l1",
    "giou",
    "ciou",
    "eiou",
    "focal_eiou",
    "ghmr",
    "siou",
    "wiou",
    "inner_ciou",
)
DEFAULT_CLS, DEFAULT_BOX = "focal", "smooth_l1"  # the RetinaNet default
