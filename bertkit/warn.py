"""Warnings that point at the user's line, wherever inside bertkit they are raised."""
from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """`warnings.warn` at the first frame outside bertkit. A fixed stacklevel is right for one way in only:
    `BertModel.from_pretrained` and `AutoModel.from_pretrained` reach the same load one frame apart."""
    frame, level = sys._getframe(1), 2  # stacklevel 1 is this function, 2 its caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
