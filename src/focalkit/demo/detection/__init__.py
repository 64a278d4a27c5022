"""Study 2 of the demo: dense detection of small shapes on clutter, evaluated with pycocotools.

One module per part, each importable on its own: :mod:`.data` (the generated scenes and their
COCO ground truth), :mod:`.boxes` (anchors, IoU, assignment, box coding, NMS), :mod:`.model`
(the tiny RetinaNet), :mod:`.evaluate` (post-processing, COCOeval, gradient-norm and
cumulative-loss statistics) and :mod:`.study` (settings, losses, training, the run record).
"""
