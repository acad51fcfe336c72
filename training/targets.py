"""CenterNet targets at stride 4 in the contract that ``beam_anon.detectors.centerface`` decodes:
a box (cx, cy, w, h) is seen at output cell (i, j) as ``cy = (i + offset_y + 0.5) * 4``,
``h = exp(scale_h) * 4`` (same for x and w).

Heatmap: an elliptical Gaussian per box (sigma = ``GAUSS_ALPHA`` x box size / 6, at least
``MIN_SIGMA`` cells), peak 1 at the box centre's cell; boxes overlapping keep the maximum. Size and
offset are regressed at every cell where a box's Gaussian is above ``REG_MIN``, weighted by that
value (a neighbour cell that fires predicts the same box). Pure numpy.
"""
from __future__ import annotations

import numpy as np

STRIDE = 4
GAUSS_ALPHA = 0.54
MIN_SIGMA = 0.5
REG_MIN = 0.3


def encode(boxes: np.ndarray, size_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Targets for one crop of ``size_hw`` pixels (multiples of :data:`STRIDE`):
    ``heat`` (1, h, w), ``scale`` (2, h, w) log(h/4), log(w/4), ``offset`` (2, h, w) y, x,
    ``weight`` (1, h, w) regression weight, ``count`` number of boxes."""
    oh, ow = size_hw[0] // STRIDE, size_hw[1] // STRIDE
    heat = np.zeros((1, oh, ow), np.float32)
    scale = np.zeros((2, oh, ow), np.float32)
    offset = np.zeros((2, oh, ow), np.float32)
    weight = np.zeros((1, oh, ow), np.float32)
    ys, xs = np.arange(oh, dtype=np.float32), np.arange(ow, dtype=np.float32)
    # small boxes last, so where boxes overlap the smaller one owns the regression cells
    order = np.argsort(-np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)) if len(boxes) else []
    for x0, y0, x1, y1 in boxes[order]:
        bw, bh = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2 / STRIDE - 0.5, (y0 + y1) / 2 / STRIDE - 0.5
        ci, cj = int(np.clip(round(cy), 0, oh - 1)), int(np.clip(round(cx), 0, ow - 1))
        sy = max(MIN_SIGMA, GAUSS_ALPHA * bh / 6 / STRIDE)
        sx = max(MIN_SIGMA, GAUSS_ALPHA * bw / 6 / STRIDE)
        g = np.exp(-((ys[:, None] - ci) ** 2) / (2 * sy * sy)
                   - ((xs[None, :] - cj) ** 2) / (2 * sx * sx))
        g[ci, cj] = 1.0
        heat[0] = np.maximum(heat[0], g)
        cells = g >= REG_MIN
        scale[0][cells] = np.log(bh / STRIDE)
        scale[1][cells] = np.log(bw / STRIDE)
        ii, jj = np.nonzero(cells)
        offset[0][ii, jj] = cy - ii
        offset[1][ii, jj] = cx - jj
        weight[0][cells] = g[cells]
    return {"heat": heat, "scale": scale, "offset": offset, "weight": weight,
            "count": np.float32(len(boxes))}
