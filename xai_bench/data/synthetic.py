"""A procedural endoscopy-like binary dataset whose ground-truth ROI is known exactly.

Real medical datasets cannot be downloaded here and their ROI masks are few and noisy; this set
runs anywhere and every lesion image carries its exact lesion mask, so localisation metrics
can be checked against ground truth. An optional planted "marker" gives a known shortcut, with a
known decision rule (docs/known-truth.md): the label follows the lesion (`rule: lesion`, the
marker planted at random), the marker (`rule: marker`, lesions in both classes at equal odds) or
the lesion with the marker agreeing at `strength` (`rule: both`). The decorrelated split puts
lesion and marker in a balanced 2 x 2 design, so that half its images set the two cues against
each other: which one a trained model follows there is what it relies on.

Sample i depends only on (seed, i): its generator comes from ``SeedSequence(seed,
spawn_key=(i,))``. Growing the dataset never changes existing samples, and the splits of a
datamodule use different seeds. Random values are drawn per sample (cheap); the pixel work is
vectorised over chunks of samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xai_bench.utils.errors import ConfigError

__all__ = ["RULES", "ShortcutSpec", "SyntheticSamples", "generate_synthetic", "masks_to_boxes",
           "parse_shortcut"]

# Smooth-noise fields: (name, grid nodes per side). Grid sizes are fixed, so one seed gives the
# same scene at every resolution. Normals are consumed in this order (changing it changes data).
_FIELDS: tuple[tuple[str, int], ...] = (
    ("tex0", 4),
    ("tex1", 7),
    ("tex2", 13),
    ("tex3", 25),
    ("chroma", 3),
    ("light", 3),
    ("vessel0", 9),
    ("vessel1", 17),
    ("vessel_gate", 4),
    ("fold", 5),
    ("spec", 21),
    ("lesion0", 12),
    ("lesion1", 24),
)
_TEX_AMPS = np.array([1.0, 0.6, 0.35, 0.2], dtype=np.float32)
_NORMAL_OFFSETS: dict[str, tuple[int, int]] = {}
_n = 0
for _name, _g in _FIELDS:
    _NORMAL_OFFSETS[_name] = (_n, _g)
    _n += _g * _g
_NUM_NORMALS = _n

_N_DECOYS = 3
# Uniform(0, 1) parameters per sample, in draw order (appending keeps old data unchanged).
_PARAM_NAMES: tuple[str, ...] = (
    "label", "marker", "hue", "bright", "vig_x", "vig_y", "vig_str", "tex_str",
    "vessel_str", "vessel_w", "fold_str", "spec_thr",
    "les_x", "les_y", "les_a", "les_b", "les_rot",
    "h2a", "h3a", "h4a", "h5a", "h2p", "h3p", "h4p", "h5p",
    "les_r", "les_g", "les_bl", "les_tex", "les_alpha", "rim", "light_dir",
    *(f"d{k}_{p}" for k in range(_N_DECOYS) for p in ("on", "x", "y", "r", "tone")),
)  # fmt: skip
_P = {name: i for i, name in enumerate(_PARAM_NAMES)}

_PIXEL_NOISE = 0.012
_MARKER_RGB = np.array([250, 250, 246], dtype=np.uint8)
_CORNERS = ("corner", "top_left", "top_right", "bottom_left", "bottom_right")
# what decides the label when a marker is planted (module docstring)
RULES = ("both", "lesion", "marker")


@dataclass(frozen=True)
class SyntheticSamples:
    """A generated split: arrays share the sample axis (N)."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    masks: np.ndarray  # uint8 (N, H, W), 1 = lesion; all zero without a lesion
    boxes: np.ndarray  # int64 (N, 4) x0, y0, x1, y1 (exclusive) of the mask; -1 when empty
    shortcut_masks: np.ndarray  # uint8 (N, H, W), 1 = planted marker pixel
    markers: np.ndarray  # bool (N,), whether the marker was planted
    lesions: np.ndarray  # bool (N,), whether the image has a lesion (= labels unless rule marker)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def img_size(self) -> int:
        return int(self.images.shape[1])


@dataclass(frozen=True)
class ShortcutSpec:
    """A validated shortcut config (see `parse_shortcut`)."""

    strength: float
    size: int
    position: str
    rule: str = "both"


def parse_shortcut(shortcut: Mapping[str, Any] | None, img_size: int) -> ShortcutSpec | None:
    """Validate a shortcut mapping early so a typo fails with a message, not silently."""
    if shortcut is None:
        return None
    if not isinstance(shortcut, Mapping):
        raise ConfigError(f"shortcut must be a mapping (enabled, rule, strength, size, position); "
                          f"got {shortcut!r}.")
    known = {"enabled", "strength", "size", "position", "rule"}
    unknown = sorted(str(k) for k in shortcut if k not in known)
    if unknown:
        raise ConfigError(f"shortcut has unknown keys {unknown}; expected {sorted(known)}.")
    if not bool(shortcut.get("enabled", False)):
        return None
    strength = float(shortcut.get("strength", 0.9))
    size = int(shortcut.get("size", 6))
    position = str(shortcut.get("position", "corner"))
    rule = str(shortcut.get("rule", "both"))
    if rule not in RULES:
        raise ConfigError(f"shortcut.rule must be one of {list(RULES)} (what decides the label: "
                          f"lesion and marker, the lesion alone, the marker alone); got {rule!r}.")
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(
            f"shortcut.strength must lie in [0, 1] (P(marker | lesion)); got {strength}.")
    if not 1 <= size <= img_size // 2:
        raise ConfigError(
            f"shortcut.size must be between 1 and img_size/2 = {img_size // 2} px; got {size}.")
    if position not in _CORNERS:
        raise ConfigError(f"shortcut.position must be one of {list(_CORNERS)}; got {position!r}.")
    return ShortcutSpec(strength=strength, size=size, position=position, rule=rule)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes (x0, y0, x1, y1), exclusive ends, of (N, H, W) masks; -1s for empty masks."""
    masks = np.asarray(masks) > 0
    n, h, w = masks.shape
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    boxes = np.stack(
        [
            cols.argmax(axis=1),
            rows.argmax(axis=1),
            w - cols[:, ::-1].argmax(axis=1),
            h - rows[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.int64)
    boxes[~rows.any(axis=1)] = -1
    return boxes


def _smoothing_matrix(grid: int, size: int) -> np.ndarray:
    """(size, grid) Gaussian interpolation weights, rows scaled so the field has unit variance.

    Smoother than bilinear (no creases at grid lines) for the cost of one small matmul.
    """
    nodes = np.linspace(0.0, 1.0, grid)
    pixels = (np.arange(size) + 0.5) / size
    sigma = 0.55 / (grid - 1)
    weights = np.exp(-0.5 * ((pixels[:, None] - nodes[None, :]) / sigma) ** 2)
    weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))
    return weights.astype(np.float32)


def _draw(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All randomness of sample `index`: uniform parameters, field normals, pixel noise."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    params = rng.random(len(_PARAM_NAMES), dtype=np.float32)
    normals = rng.standard_normal(_NUM_NORMALS, dtype=np.float32)
    noise = rng.random((size, size), dtype=np.float32)
    return params, normals, noise


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def _lerp(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (lo + (hi - lo) * u).astype(np.float32)


class _Renderer:
    """Pixel synthesis for one image size; vectorised over a chunk of samples."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.mats = {g: _smoothing_matrix(g, size) for g in {g for _, g in _FIELDS}}
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x = coords[None, None, :]  # (1, 1, W)
        self.y = coords[None, :, None]  # (1, H, 1)

    def field(self, normals: np.ndarray, name: str) -> np.ndarray:
        start, g = _NORMAL_OFFSETS[name]
        grid = normals[:, start : start + g * g].reshape(-1, g, g)
        mat = self.mats[g]
        return np.matmul(np.matmul(mat, grid), mat.T)

    def render(
        self, params: np.ndarray, normals: np.ndarray, noise: np.ndarray, lesions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> (float images (n, H, W, 3) in [0, 1], lesion masks bool (n, H, W)); a lesion is
        painted where `lesions` (bool (n,)) says."""

        def p(name: str) -> np.ndarray:
            return params[:, _P[name], None, None]

        x, y = self.x, self.y

        # Mucosa: a pink/red base colour, multi-octave texture, low-frequency tint and light.
        hue = _lerp(p("hue"), -1.0, 1.0)
        bright = _lerp(p("bright"), 0.82, 1.08)
        tex = sum(a * self.field(normals, f"tex{k}") for k, a in enumerate(_TEX_AMPS))
        tex = tex / float(np.sqrt((_TEX_AMPS**2).sum()))
        lum = bright * (1.0 + _lerp(p("tex_str"), 0.07, 0.13) * tex) * (
            1.0 + 0.06 * self.field(normals, "light")
        )
        tint = 0.07 * self.field(normals, "chroma")
        base = (0.81 + 0.04 * hue, 0.45 + 0.06 * hue, 0.41 - 0.06 * hue)
        chans = [base[0] * lum * (1.0 + 0.3 * tint), base[1] * lum * (1.0 - tint),
                 base[2] * lum * (1.0 - tint)]

        # Vessels: thin lines along zero-contours of a mid-frequency field, gated into patches.
        vfield = (self.field(normals, "vessel0") + 0.5 * self.field(normals, "vessel1")) / 1.118
        width = _lerp(p("vessel_w"), 0.06, 0.12)
        gate = np.clip(0.6 + 0.6 * self.field(normals, "vessel_gate"), 0.0, 1.0)
        vessels = np.exp(-((vfield / width) ** 2)) * gate * _lerp(p("vessel_str"), 0.15, 0.5)
        for c, k in enumerate((0.35, 0.65, 0.55)):
            chans[c] = chans[c] * (1.0 - k * vessels)

        # Folds: darker troughs with a faint sheen beside them.
        ffield = self.field(normals, "fold")
        fold_str = _lerp(p("fold_str"), 0.0, 0.3)
        trough = fold_str * np.exp(-((ffield / 0.18) ** 2))
        sheen = 0.5 * fold_str * np.exp(-(((ffield - 0.35) / 0.15) ** 2))
        for c in range(3):
            chans[c] = chans[c] * (1.0 - trough) + sheen * (1.0 - chans[c])

        # Benign decoys (both classes alike): small, faint, round, pale spots.
        for k in range(_N_DECOYS):
            on = (p(f"d{k}_on") < 0.45).astype(np.float32)
            radius = _lerp(p(f"d{k}_r"), 0.03, 0.06)
            dist = np.sqrt((x - _lerp(p(f"d{k}_x"), 0.1, 0.9)) ** 2
                           + (y - _lerp(p(f"d{k}_y"), 0.1, 0.9)) ** 2)
            alpha = on * 0.4 * _sigmoid((1.0 - dist / radius) / 0.12)
            tone = p(f"d{k}_tone")
            colour = (0.93 - 0.1 * tone, 0.72 - 0.2 * tone, 0.68 - 0.18 * tone)
            for c in range(3):
                chans[c] = chans[c] * (1.0 - alpha) + colour[c] * bright * alpha

        img = np.stack(chans, axis=-1)
        masks = np.zeros((len(params), self.size, self.size), dtype=bool)
        pos = np.flatnonzero(lesions)
        if pos.size:
            img[pos], masks[pos] = self._lesion(img[pos], params[pos], normals[pos], bright[pos])

        # Endoscope light fall-off, then specular highlights and sensor noise.
        r2 = ((x - 0.5 - _lerp(p("vig_x"), -0.06, 0.06)) ** 2
              + (y - 0.5 - _lerp(p("vig_y"), -0.06, 0.06)) ** 2) / 0.25
        img *= np.clip(1.0 - _lerp(p("vig_str"), 0.15, 0.4) * r2, 0.1, 1.0)[..., None]
        spec = np.clip((self.field(normals, "spec") - _lerp(p("spec_thr"), 2.3, 3.1)) * 4.0,
                       0.0, 1.0)[..., None]
        img = img * (1.0 - spec) + 0.98 * spec
        # luminance grain
        img += (_PIXEL_NOISE * 2.0 * np.sqrt(3.0, dtype=np.float32)) * (noise - 0.5)[..., None]
        return np.clip(img, 0.0, 1.0), masks

    def _lesion(
        self, img: np.ndarray, params: np.ndarray, normals: np.ndarray, bright: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Paint a polyp-like lesion: an irregular ellipse, darker and redder, dome-shaded."""

        def p(name: str) -> np.ndarray:
            return params[:, _P[name], None, None]

        dx = self.x - _lerp(p("les_x"), 0.25, 0.75)
        dy = self.y - _lerp(p("les_y"), 0.25, 0.75)
        semi_a, semi_b = _lerp(p("les_a"), 0.12, 0.22), _lerp(p("les_b"), 0.12, 0.22)
        rot = _lerp(p("les_rot"), 0.0, np.pi)
        cos, sin = np.cos(rot), np.sin(rot)
        u = (dx * cos + dy * sin) / semi_a
        v = (dy * cos - dx * sin) / semi_b
        rho = np.sqrt(u * u + v * v)
        phi = np.arctan2(v, u)
        boundary = np.ones_like(rho)
        for k in (2, 3, 4, 5):
            amp = _lerp(p(f"h{k}a"), 0.0, 0.16 / (k - 1))
            boundary += amp * np.cos(k * phi + _lerp(p(f"h{k}p"), 0.0, 2 * np.pi))
        rn = rho / boundary  # < 1 inside the lesion
        mask = rn < 1.0

        alpha = _lerp(p("les_alpha"), 0.85, 1.0) * _sigmoid((1.0 - rn) / 0.05)
        rim = _lerp(p("rim"), 0.15, 0.4) * np.exp(-(((rn - 1.08) / 0.12) ** 2))
        texture = (self.field(normals, "lesion0") + 0.7 * self.field(normals, "lesion1")) / 1.22
        dome = np.sqrt(np.clip(1.0 - rn * rn, 0.0, 1.0))
        light = _lerp(p("light_dir"), 0.0, 2 * np.pi)
        side = np.clip(u * np.cos(light) + v * np.sin(light), -1.0, 1.0)
        shade = (bright * (0.74 + 0.26 * dome + 0.16 * side)
                 * (1.0 + _lerp(p("les_tex"), 0.12, 0.24) * texture))
        colour = (_lerp(p("les_r"), 0.56, 0.68), _lerp(p("les_g"), 0.14, 0.22),
                  _lerp(p("les_bl"), 0.15, 0.24))
        for c, rim_k in enumerate((0.1, 0.35, 0.3)):
            ch = img[..., c] * (1.0 - rim_k * rim)
            img[..., c] = ch * (1.0 - alpha) + colour[c] * shade * alpha
        return img, mask


def _presence(
    u_label: np.ndarray, u_marker: np.ndarray, index: np.ndarray, positive_fraction: float,
    spec: ShortcutSpec | None, decorrelated: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lesion, marker, label) per sample from its two uniforms (or, decorrelated, its index).

    The lesion and (rule both) the marker use the uniforms they always did, so the data of a
    config that existed before the rules is unchanged. Decorrelated: sample i has a lesion when
    i is odd and a marker when i // 2 is odd (every 4 consecutive samples hold the 4 cells, so
    any prefix is balanced), labelled by the rule.
    """
    if decorrelated:
        lesion, marker = index % 2 == 1, (index // 2) % 2 == 1
        label = marker if spec is not None and spec.rule == "marker" else lesion
        return lesion, marker, label
    if spec is None:
        lesion = u_label < positive_fraction
        return lesion, np.zeros_like(lesion), lesion
    if spec.rule == "marker":
        marker = u_label < positive_fraction
        return u_marker < 0.5, marker, marker
    lesion = u_label < positive_fraction
    if spec.rule == "lesion":
        return lesion, u_marker < 0.5, lesion
    return lesion, u_marker < np.where(lesion, spec.strength, 1.0 - spec.strength), lesion


def generate_synthetic(
    n: int,
    img_size: int,
    seed: int,
    positive_fraction: float = 0.5,
    shortcut: Mapping[str, Any] | None = None,
    decorrelated: bool = False,
) -> SyntheticSamples:
    """Generate `n` samples; sample i depends only on (seed, i, img_size, positive_fraction,
    shortcut, decorrelated).

    Without a shortcut, class 1 (probability `positive_fraction`) has a lesion, whose pixels are
    the mask. With `shortcut.enabled`, a bright square marker appears at a fixed corner and
    `shortcut.rule` decides the label (the module docstring): both (the default) = the lesion,
    the marker planted with probability `strength` on class 1 and `1 - strength` on class 0;
    lesion = the lesion, the marker at odds 1/2 whatever the class; marker = the marker (class 1
    with probability `positive_fraction`), a lesion at odds 1/2 whatever the class.
    `decorrelated` (needs a shortcut): lesion and marker in a balanced 2 x 2 design,
    independent of each other, labelled by the rule.
    """
    if int(n) < 0:
        raise ConfigError(f"number of synthetic samples must be >= 0; got {n}.")
    if int(img_size) < 16:
        raise ConfigError(f"synthetic img_size must be >= 16 px; got {img_size}.")
    if not 0.0 <= float(positive_fraction) <= 1.0:
        raise ConfigError(f"positive_fraction must lie in [0, 1]; got {positive_fraction}.")
    n, size = int(n), int(img_size)
    spec = parse_shortcut(shortcut, size)
    if decorrelated and spec is None:
        raise ConfigError("the decorrelated split sets the lesion against the marker: it needs "
                          "dataset.shortcut.enabled=true.")

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    markers = np.empty(n, dtype=bool)
    lesions = np.empty(n, dtype=bool)
    renderer = _Renderer(size)
    chunk = max(1, (1 << 20) // (size * size))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        draws = [_draw(int(seed), i, size) for i in range(start, stop)]
        params = np.stack([d[0] for d in draws])
        lesion, marker, label = _presence(
            params[:, _P["label"]], params[:, _P["marker"]], np.arange(start, stop),
            float(positive_fraction), spec, decorrelated)
        img, mask = renderer.render(
            params, np.stack([d[1] for d in draws]), np.stack([d[2] for d in draws]), lesion)
        images[start:stop] = (img * 255.0 + 0.5).astype(np.uint8)
        masks[start:stop] = mask
        labels[start:stop] = label
        markers[start:stop] = marker
        lesions[start:stop] = lesion

    shortcut_masks = np.zeros((n, size, size), dtype=np.uint8)
    if spec is not None:
        margin = max(1, round(0.03 * size))
        top = spec.position in ("corner", "top_left", "top_right")
        left = spec.position in ("corner", "top_left", "bottom_left")
        y0 = margin if top else size - margin - spec.size
        x0 = margin if left else size - margin - spec.size
        window = (markers, slice(y0, y0 + spec.size), slice(x0, x0 + spec.size))
        shortcut_masks[window] = 1
        images[window] = _MARKER_RGB
        masks[window] = 0  # the marker hides the lesion beneath it: the two regions never overlap
    return SyntheticSamples(
        images=images,
        labels=labels,
        masks=masks,
        boxes=masks_to_boxes(masks),
        shortcut_masks=shortcut_masks,
        markers=markers,
        lesions=lesions,
    )
