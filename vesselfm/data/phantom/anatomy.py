"""The thorax and the heart of a phantom: tissue classes, their Hounsfield values, the sampled
anatomy (body, spine, lungs, liver, aorta, heart with chambers and aortic root) and its painting
on the grid, plus the contrast-filled pulmonary vessels (bright tubes that are not coronaries)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from vesselfm.data.phantom.geometry import (
    _ball,
    _ellipsoid_box,
    _ellipsoid_value,
    _Grid,
    _rotation,
    _segment_depth,
    _unit,
)


class Tissue(enum.IntEnum):
    """Tissue classes of ``Phantom.tissue`` (uint8 codes)."""

    AIR = 0
    LUNG = 1
    FAT = 2
    SOFT_TISSUE = 3
    BONE = 4
    CORTICAL_BONE = 5
    MYOCARDIUM = 6
    BLOOD = 7
    LUMEN = 8
    CALCIUM = 9


@dataclass
class _Heart:
    """An ellipsoidal heart: ``center`` (mm), semi-axes ``(L, A, B)`` along the columns of ``rot``.

    Column 0 is the long axis from base to apex; column 1 points anteriorly. Points on the
    surface are addressed by ``t`` in [-1, 1] along the long axis (base to apex) and an azimuth
    ``phi`` (radians) measured from column 1 towards column 2.
    """

    center: np.ndarray
    axes: np.ndarray
    rot: np.ndarray

    def surface(
        self, t: np.ndarray, phi: np.ndarray, lift: np.ndarray | float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Points ``(n, 3)`` mm on the surface lifted by ``lift`` mm along the outer normals."""
        L, A, B = self.axes
        t = np.clip(np.asarray(t, dtype=float), -0.999, 0.999)
        rho = np.sqrt(1.0 - t**2)
        local = np.stack([L * t, A * rho * np.cos(phi), B * rho * np.sin(phi)], axis=-1)
        normal = _unit(np.stack([t / L, rho * np.cos(phi) / A, rho * np.sin(phi) / B], axis=-1))
        points = (
            self.center + (local + np.asarray(lift, dtype=float)[..., None] * normal) @ self.rot.T
        )
        return points, normal @ self.rot.T

    def tangents(self, t: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Surface derivatives ``dP/dt`` and ``dP/dphi`` (mm per unit), each ``(n, 3)``."""
        L, A, B = self.axes
        t = np.clip(t, -0.999, 0.999)
        rho = np.sqrt(1.0 - t**2)
        d_t = np.stack(
            [np.full_like(t, L), -A * t / rho * np.cos(phi), -B * t / rho * np.sin(phi)], -1
        )
        d_phi = np.stack([np.zeros_like(t), -A * rho * np.sin(phi), B * rho * np.cos(phi)], -1)
        return d_t @ self.rot.T, d_phi @ self.rot.T

    def local(self, x: np.ndarray) -> np.ndarray:
        """World mm ``(..., 3)`` -> heart-frame mm ``(..., 3)``."""
        return (x - self.center) @ self.rot


def _hounsfield(rng: np.random.Generator) -> dict[str, float]:
    """Per-case Hounsfield values of the tissues (and of their variants)."""
    blood = rng.uniform(340.0, 480.0)
    return {
        "air": -1000.0,
        "lung": rng.uniform(-880.0, -800.0),
        "fat": rng.uniform(-115.0, -80.0),
        "muscle": rng.uniform(35.0, 60.0),
        "liver": rng.uniform(55.0, 80.0),
        "csf": rng.uniform(5.0, 20.0),
        "bone": rng.uniform(180.0, 300.0),
        "cortex": rng.uniform(750.0, 1100.0),
        "myocardium": rng.uniform(85.0, 130.0),
        "blood": blood,
        "blood_right": max(310.0, blood * rng.uniform(0.72, 0.95)),
        "lumen": float(np.clip(blood * rng.uniform(0.82, 0.97), 280.0, 430.0)),
        "calcium": rng.uniform(800.0, 1200.0),
    }


@dataclass
class _Anatomy:
    """Sampled, scaled anatomy (mm in the grid frame) of one case."""

    heart: _Heart
    lv: tuple[np.ndarray, np.ndarray]  # centre, semi-axes in the heart frame
    rv: tuple[np.ndarray, np.ndarray]
    atria: tuple[np.ndarray, np.ndarray]
    root_center: np.ndarray
    root_radius: float
    ascending: tuple[np.ndarray, np.ndarray, float]  # start, direction, radius
    fat_layer: float
    body: dict[str, float]
    phi: dict[str, float]
    t_av: float
    t_root: float


def _sample_anatomy(rng: np.random.Generator, scale: float, min_root_radius: float) -> _Anatomy:
    """Draw the thorax and heart of one case (reference anatomy scaled by ``scale``).

    ``min_root_radius`` (mm) keeps the aortic root wide enough for both ostia when the
    coronary radii are floored on a small grid.
    """
    s = scale
    jitter = lambda a: rng.uniform(-a, a)  # noqa: E731
    # Heart: long axis from base (right, posterior, superior) to apex (left, anterior, inferior).
    long_axis = _unit(np.array([0.58 + jitter(0.1), -0.45 + jitter(0.1), -0.62 + jitter(0.1)]))
    anterior = np.array([0.0, -1.0, 0.0])
    e2 = _unit(anterior - (anterior @ long_axis) * long_axis)
    rot = np.stack([long_axis, e2, np.cross(long_axis, e2)], axis=1)
    spin = _rotation(long_axis, jitter(0.2))
    rot = spin @ rot
    axes = np.array([58.0, 44.0, 37.0]) * rng.uniform(0.9, 1.08) * s
    center = np.array([6.0 + jitter(6), -6.0 + jitter(6), -3.0 + jitter(5)]) * s
    heart = _Heart(center, axes, rot)

    # Azimuths on the heart surface: the right ventricle faces anterior-right, the LV the
    # opposite side; the interventricular grooves lie between them.
    right = np.array([-1.0, 0.0, 0.0])
    phi_right = math.atan2(right @ rot[:, 2], right @ rot[:, 1])
    phi_rv = 0.5 * phi_right + jitter(0.1)
    phi = {
        "rv": phi_rv,
        "lv": phi_rv + math.pi,
        "aiv": phi_rv - math.pi / 2,
        "piv": phi_rv + math.pi / 2,
        "root": phi_rv - math.radians(40) + jitter(0.1),
    }
    t_av = -0.45 + jitter(0.05)
    t_root = -0.8 + jitter(0.04)

    A = axes[1]
    # LV and RV centres in the heart frame, offset towards their azimuths.
    lv_c = np.array(
        [0.08 * axes[0], 0.2 * A * math.cos(phi["lv"]), 0.2 * axes[2] * math.sin(phi["lv"])]
    )
    rv_c = np.array(
        [-0.05 * axes[0], 0.42 * A * math.cos(phi_rv), 0.42 * axes[2] * math.sin(phi_rv)]
    )
    lv = (lv_c, np.array([0.66, 0.47, 0.5]) * axes)
    rv = (rv_c, np.array([0.55, 0.3, 0.42]) * axes)
    atria = (np.array([-0.72 * axes[0], 0.0, 0.0]), np.array([0.3, 0.5, 0.52]) * axes)

    root_radius = max(rng.uniform(12.0, 15.0) * s, min_root_radius)
    surf, normal = heart.surface(np.array([t_root]), np.array([phi["root"]]))
    root_center = surf[0] + 0.25 * root_radius * normal[0]
    up = _unit(np.array([-0.15 + jitter(0.1), -0.1 + jitter(0.1), 1.0]))
    ascending = (root_center + 0.3 * root_radius * up, up, 0.9 * root_radius)

    body = {
        "cu": (-25.0 + jitter(8)) * s,
        "cv": (30.0 + jitter(6)) * s,
        "au": rng.uniform(150.0, 170.0) * s,
        "av": rng.uniform(112.0, 125.0) * s,
        "fat": rng.uniform(8.0, 18.0) * s,
        "muscle": rng.uniform(8.0, 14.0) * s,
        "spine_u": (-12.0 + jitter(5)) * s,
        "spine_v": 80.0 * s,
        "spine_r": rng.uniform(15.0, 19.0) * s,
        "aorta_u": (16.0 + jitter(4)) * s,
        "aorta_v": (50.0 + jitter(4)) * s,
        "aorta_r": rng.uniform(10.0, 13.0) * s,
        "dome_u": (-45.0 + jitter(10)) * s,
        "dome_v": (5.0 + jitter(10)) * s,
        "dome_w": center[2] - (42.0 + jitter(6)) * s,
        "dome_k": rng.uniform(0.008, 0.014) / s,
        "disc_period": rng.uniform(24.0, 28.0) * s,
        "disc_phase": rng.uniform(0.0, 1.0),
    }
    return _Anatomy(
        heart, lv, rv, atria, root_center, root_radius, ascending,
        fat_layer=rng.uniform(4.0, 7.0) * s, body=body, phi=phi, t_av=t_av, t_root=t_root,
    )  # fmt: skip


class _Canvas:
    """The tissue map (uint8 ``Tissue`` codes) and the noise-free image (float32 HU), painted
    together so that tissue variants (right-heart blood, liver, CSF) keep their own HU."""

    def __init__(self, tissue: np.ndarray, image: np.ndarray, hu: dict[str, float]) -> None:
        self.tissue, self.image, self.hu = tissue, image, hu

    def paint(
        self, box: tuple[slice, ...] | None, mask: np.ndarray, tissue: Tissue, hu: str
    ) -> None:
        sel = () if box is None else box
        self.tissue[sel][mask] = tissue
        self.image[sel][mask] = self.hu[hu]


_PLANE_TISSUES = {
    "air": Tissue.AIR, "lung": Tissue.LUNG, "fat": Tissue.FAT, "muscle": Tissue.SOFT_TISSUE,
    "liver": Tissue.SOFT_TISSUE, "csf": Tissue.SOFT_TISSUE, "bone": Tissue.BONE,
    "cortex": Tissue.CORTICAL_BONE, "blood": Tissue.BLOOD,
}  # fmt: skip


def _render_anatomy(grid: _Grid, anat: _Anatomy, hu: dict[str, float], fat_layer: float) -> _Canvas:
    """Paint the thorax and the heart (no coronaries) on the grid."""
    X, Y, Z = grid.shape
    b = anat.body
    s = anat.heart.axes[0] / 58.0  # anatomy scale, close enough for the small parts
    u, v = grid.axes[0][:, None], grid.axes[1][None, :]

    def ellipse(cu: float, cv: float, au: float, av: float) -> np.ndarray:
        return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1.0

    # --- an axial template (names of _PLANE_TISSUES), extruded along z ---
    names = list(_PLANE_TISSUES)
    plane = np.zeros((X, Y), dtype=np.uint8)

    def put(mask: np.ndarray, name: str) -> None:
        plane[mask] = names.index(name)

    put(ellipse(b["cu"], b["cv"], b["au"], b["av"]), "fat")
    inner_u, inner_v = b["au"] - b["fat"], b["av"] - b["fat"]
    put(ellipse(b["cu"], b["cv"], inner_u, inner_v), "muscle")
    cav_u, cav_v = inner_u - b["muscle"], inner_v - b["muscle"]
    cavity = ellipse(b["cu"], b["cv"], cav_u, cav_v)
    put(cavity, "lung")
    put(cavity & ellipse(b["cu"] + 18.0 * s, b["cv"] - 30.0 * s, 30.0 * s, 70.0 * s), "fat")
    su, sv, sr = b["spine_u"], b["spine_v"], b["spine_r"]
    body = plane != names.index("air")
    put(ellipse(su, sv + 0.6 * sr, 2.4 * sr, 2.0 * sr) & body, "muscle")
    put(ellipse(b["aorta_u"], b["aorta_v"], b["aorta_r"] + 3 * s, b["aorta_r"] + 3 * s), "fat")
    put(ellipse(b["aorta_u"], b["aorta_v"], b["aorta_r"], b["aorta_r"]), "blood")
    sternum_v = b["cv"] - cav_v - 0.5 * b["muscle"]
    put(ellipse(b["cu"] + 12 * s, sternum_v, 14.0 * s, 6.0 * s), "cortex")
    put(ellipse(b["cu"] + 12 * s, sternum_v, 11.5 * s, 3.5 * s), "bone")
    vertebra = ellipse(su, sv, sr, 0.9 * sr) & body
    spongy = ellipse(su, sv, sr - 2.0 * s, 0.9 * sr - 2.0 * s) & body
    canal = ellipse(su, sv + 1.55 * sr, 0.5 * sr, 0.45 * sr) & body
    put((vertebra | ellipse(su, sv + 1.55 * sr, 0.75 * sr, 0.7 * sr)) & body, "cortex")
    put(spongy, "bone")
    put(canal, "csf")

    lut_tissue = np.array([_PLANE_TISSUES[n] for n in names], dtype=np.uint8)
    lut_hu = np.array([hu[n] for n in names], dtype=np.float32)
    canvas = _Canvas(
        np.repeat(lut_tissue[plane][:, :, None], Z, axis=2),
        np.repeat(lut_hu[plane][:, :, None], Z, axis=2),
        hu,
    )

    # Intervertebral discs: soft tissue in the vertebral body every few centimetres.
    zz = grid.axes[2]
    disc = ((zz / b["disc_period"] + b["disc_phase"]) % 1.0) < 0.2
    for k in np.flatnonzero(disc):
        canvas.paint(
            (slice(None), slice(None), slice(k, k + 1)),
            (vertebra | spongy)[:, :, None],
            Tissue.SOFT_TISSUE,
            "muscle",
        )

    # Diaphragm: below a dome, the cavity holds the liver (right) and the upper abdomen (left).
    dome = b["dome_w"] - b["dome_k"] * ((u - b["dome_u"]) ** 2 + (v - b["dome_v"]) ** 2)
    k1 = int(np.searchsorted(zz, dome.max(), side="right"))
    if k1 > 0:
        box = (slice(None), slice(None), slice(0, k1))
        t = canvas.tissue[box]
        soft = (zz[None, None, :k1] < dome[:, :, None]) & ((t == Tissue.LUNG) | (t == Tissue.FAT))
        right = (u < b["dome_u"] + 40 * s)[:, :, None]
        canvas.paint(box, soft & right, Tissue.SOFT_TISSUE, "liver")
        canvas.paint(box, soft & ~right, Tissue.SOFT_TISSUE, "muscle")

    # Ascending aorta, wrapped in fat where it crosses the lungs.
    start, up, radius = anat.ascending
    top = start + up * ((grid.axes[2][-1] - start[2]) / up[2] + radius)
    box = grid.box(
        np.minimum(start, top) - radius - fat_layer, np.maximum(start, top) + radius + fat_layer
    )
    if box is not None:
        x, y, z = grid.coords(box)
        dx, dy, dz = x - float(start[0]), y - float(start[1]), z - float(start[2])
        along = dx * float(up[0]) + dy * float(up[1]) + dz * float(up[2])
        dist2 = dx * dx + dy * dy + dz * dz - along * along
        t = canvas.tissue[box]
        wrap = (dist2 <= (radius + fat_layer) ** 2) & (along > 0)
        canvas.paint(
            box, wrap & ((t == Tissue.LUNG) | (t == Tissue.SOFT_TISSUE)), Tissue.FAT, "fat"
        )
        canvas.paint(box, (dist2 <= radius**2) & (along > 0), Tissue.BLOOD, "blood")

    # Heart: epicardial fat, myocardium, then the chambers, each in its own bounding box.
    heart = anat.heart
    outer_axes = heart.axes + fat_layer
    box = _ellipsoid_box(grid, heart.center, heart.rot, outer_axes)
    if box is not None:
        canvas.paint(
            box,
            _ellipsoid_value(grid, box, heart.center, heart.rot, outer_axes) <= 1,
            Tissue.FAT,
            "fat",
        )
    box = _ellipsoid_box(grid, heart.center, heart.rot, heart.axes)
    if box is not None:
        canvas.paint(
            box,
            _ellipsoid_value(grid, box, heart.center, heart.rot, heart.axes) <= 1,
            Tissue.MYOCARDIUM,
            "myocardium",
        )
    world = lambda c: heart.center + heart.rot @ c  # noqa: E731
    lv_c, lv_a = world(anat.lv[0]), anat.lv[1]
    rv_c, rv_a = world(anat.rv[0]), anat.rv[1]
    septum = 0.14 * heart.axes[1]
    box = _ellipsoid_box(grid, rv_c, heart.rot, rv_a)
    if box is not None:
        in_rv = _ellipsoid_value(grid, box, rv_c, heart.rot, rv_a) <= 1
        in_rv &= _ellipsoid_value(grid, box, lv_c, heart.rot, lv_a + septum) > 1
        canvas.paint(box, in_rv, Tissue.BLOOD, "blood_right")
    for c, a in ((lv_c, lv_a), (world(anat.atria[0]), anat.atria[1])):
        box = _ellipsoid_box(grid, c, heart.rot, a)
        if box is not None:
            canvas.paint(
                box, _ellipsoid_value(grid, box, c, heart.rot, a) <= 1, Tissue.BLOOD, "blood"
            )

    # Aortic root (sinuses of Valsalva).
    rc, rr = anat.root_center, anat.root_radius
    box = grid.box(rc - rr, rc + rr)
    if box is not None:
        canvas.paint(box, _ball(grid, box, rc, rr), Tissue.BLOOD, "blood")
    return canvas


def _paint_lung_vessels(
    canvas: _Canvas, grid: _Grid, anat: _Anatomy, rng: np.random.Generator
) -> None:
    """Contrast-filled pulmonary vessel trees branching out from both hila (not labelled).

    They are bright tubes like the coronaries, which keeps a model from learning "bright and
    thin means coronary".
    """
    s = anat.heart.axes[0] / 58.0
    floor = 0.6 * float(np.linalg.norm(grid.spacing))
    pad = 2.0 * grid.spacing
    hu = np.float32(canvas.hu["blood_right"] * rng.uniform(0.8, 1.0))
    base = anat.heart.center + np.array([0.0, 25.0 * s, 25.0 * s])
    stack = []
    for side in (-1.0, 1.0):
        start = base + np.array(
            [side * rng.uniform(40, 55) * s, rng.uniform(-8, 8) * s, rng.uniform(-10, 10) * s]
        )
        for _ in range(3):
            d = _unit(np.array([side, rng.uniform(-0.5, 0.7), rng.uniform(-1.0, 1.0)]))
            stack.append((start, d, rng.uniform(3.0, 4.5) * s, rng.uniform(25, 40) * s, 0))
    while stack:
        a, d, r, length, gen = stack.pop()
        b = a + d * length
        r_end = 0.75 * r
        box, depth = _segment_depth(grid, a, b, max(r, floor), max(r_end, floor), pad)
        if box is not None:
            lung = canvas.tissue[box] == Tissue.LUNG
            occ = np.clip(depth / float(grid.spacing.mean()) + 0.5, 0.0, 1.0) * lung
            view = canvas.image[box]
            view += occ * (hu - view)
            canvas.tissue[box][lung & (occ >= 0.5)] = Tissue.BLOOD
        if gen < 4:
            for turn in (-1.0, 1.0):
                nd = _unit(
                    d + turn * rng.uniform(0.3, 0.7) * _unit(np.cross(d, rng.normal(size=3)))
                )
                stack.append((b, nd, r_end, 0.75 * length, gen + 1))
