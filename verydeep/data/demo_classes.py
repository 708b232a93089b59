"""The demo generator's class sets (``verydeep data demo --classes``), without numpy: the
command line reads the names at startup."""

from __future__ import annotations

# (wnid, name): the wnids sort in this order, so the class index is the position here.
DEMO_CLASSES = [
    ("n90000001", "disc"), ("n90000002", "ring"), ("n90000003", "triangle"), ("n90000004", "square"),
    ("n90000005", "star"), ("n90000006", "cross"), ("n90000007", "crescent"), ("n90000008", "arrow"),
    ("n90000009", "heart"), ("n90000010", "hourglass"),
]

# The second class set: no shape of the first, wnids of their own (n91...).
ALT_CLASSES = [
    ("n91000001", "pentagon"), ("n91000002", "hexagon"), ("n91000003", "ellipse"), ("n91000004", "semicircle"),
    ("n91000005", "diamond"), ("n91000006", "letter_L"), ("n91000007", "letter_T"), ("n91000008", "trapezoid"),
    ("n91000009", "frame"), ("n91000010", "chevron"),
]
CLASS_SETS = {"shapes": DEMO_CLASSES, "alt": ALT_CLASSES}
