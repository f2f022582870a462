"""Anti-aliased shape masks over a box of pixels, vectorized over frames.

Every function takes the box's pixel-centre coordinates `x, y` (each (h, w), in pixels
relative to the box's top-left corner) and per-frame shape parameters of shape (T,) or
(T, K), and returns coverage in [0, 1] of shape (T, h, w).
"""

import numpy as np


def box_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a height x width box."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    return x, y


def _coverage(distance_outside: np.ndarray) -> np.ndarray:
    # distance_outside < 0 inside the shape; a one-pixel linear ramp anti-aliases the edge.
    return np.clip(0.5 - distance_outside, 0.0, 1.0)


def disc(x, y, cx, cy, radius) -> np.ndarray:
    # cx, cy: (T,), radius: scalar or (T,)
    cx, cy, radius = (np.broadcast_to(np.asarray(v, np.float32), np.shape(cx))[:, None, None]
                      for v in (cx, cy, radius))
    return _coverage(np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - radius)


def rectangle(x, y, x0, y0, x1, y1) -> np.ndarray:
    # x0, y0, x1, y1: (T,) corners
    x0, y0, x1, y1 = (np.asarray(v, np.float32)[:, None, None] for v in (x0, y0, x1, y1))
    inside_x = np.minimum(_coverage(x0 - x), _coverage(x - x1))
    inside_y = np.minimum(_coverage(y0 - y), _coverage(y - y1))
    return inside_x * inside_y


def segments(x, y, ax, ay, bx, by, half_width: float) -> np.ndarray:
    """Union of K thick line segments per frame; ax..by: (T, K)."""
    ax, ay, bx, by = (np.asarray(v, np.float32)[:, :, None, None] for v in (ax, ay, bx, by))
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy + 1e-6
    along = np.clip(((x - ax) * dx + (y - ay) * dy) / length2, 0.0, 1.0)
    distance = np.sqrt((x - ax - along * dx) ** 2 + (y - ay - along * dy) ** 2)
    return _coverage(distance - half_width).max(axis=1)


def vertical_streaks(x, y, column, top, bottom, half_width: float) -> np.ndarray:
    """Union of K vertical streaks; column: (K,) x position, top/bottom: (T, K).

    Separable in x and y, so it costs K passes over (T, h, w) instead of one (T, K, h, w) array.
    """
    across = _coverage(np.abs(x[0][None, :] - np.asarray(column, np.float32)[:, None]) - half_width)  # (K, w)
    rows = y[:, 0][None, None, :]                                                                     # (1, 1, h)
    top = np.asarray(top, np.float32)[:, :, None]
    bottom = np.asarray(bottom, np.float32)[:, :, None]
    along = np.minimum(_coverage(top - rows), _coverage(rows - bottom))                               # (T, K, h)
    out = np.zeros((top.shape[0], y.shape[0], x.shape[1]), np.float32)
    for k in range(across.shape[0]):
        np.maximum(out, along[:, k, :, None] * across[k][None, None, :], out=out)
    return out
