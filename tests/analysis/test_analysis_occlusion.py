"""Total occlusions on analytic tubes: a gap in a straight or curved vessel is one 100 % lesion as
long as the gap (CAD-RADS 5); two unrelated tubes are not joined."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_phantoms import FLIPPED, narrowed, tube, world_grid

from vesselfm.analysis import analyse_mask
from vesselfm.analysis.occlusion import end_course

SHAPE = (48, 48, 96)


def _arc_tube(world, centre, bend_mm, angles, radius):
    """Voxels within ``radius(angle)`` mm of a circular arc (in the grid's first and third world
    axes) of radius ``bend_mm`` about ``centre``, between ``angles`` (radians)."""
    rel = world - centre
    theta = np.clip(_angle(rel), *angles)
    nearest = np.stack([bend_mm * np.cos(theta), 0 * theta, bend_mm * np.sin(theta)], -1)
    return np.linalg.norm(rel - nearest, axis=-1) <= radius(theta)


def _angle(rel):
    """Angle (radians, 0 to 2 pi) of ``rel`` in the plane of the first and third world axes."""
    theta = np.arctan2(rel[..., 2], rel[..., 0])
    return np.where(theta < 0, theta + 2 * np.pi, theta)


def _single_occlusion(result):
    found = [s for s in result["stenoses"] if s["degree_percent"] == 100.0]
    assert len(found) == 1
    assert result["cad_rads"] == "5"
    return found[0]


def test_gap_in_straight_tube_is_an_occlusion():
    world = world_grid(SHAPE, FLIPPED)
    p0, p1 = world[24, 24, 2], world[24, 24, 93]
    u = (p1 - p0) / np.linalg.norm(p1 - p0)
    length = float(np.linalg.norm(p1 - p0))
    mask = tube(world, p0, p1, narrowed(2.0, 1.6, length, []))
    s = (world - p0) @ u
    mask &= ~((s > 20.0) & (s < 28.0))  # an 8 mm gap, its middle 24 mm from the ostium
    result = analyse_mask(mask, FLIPPED)
    lesion = _single_occlusion(result)
    assert lesion["grade"] == "100"
    assert lesion["length_mm"] == pytest.approx(8.0, abs=1.0)
    assert lesion["arc_mm"] == pytest.approx(24.0, abs=1.5)
    assert np.linalg.norm(np.asarray(lesion["position_mm"]) - (p0 + 24.0 * u)) < 1.5
    assert lesion["reference_diameter_mm"] == pytest.approx(3.6, abs=0.4)
    # the piece beyond is the same vessel going on: one tree, its arc carried across the gap
    first, second = result["branches"]
    assert second["parent_id"] == first["id"] and second["name"] == first["name"]
    gap = second["arc_start_mm"] - (first["arc_start_mm"] + first["length_mm"])
    assert gap == pytest.approx(lesion["length_mm"], abs=0.01)


def test_gap_in_curved_tube_is_an_occlusion():
    world = world_grid(SHAPE, FLIPPED)
    centre = world[24, 24, 48] + np.array([12.0, 0.0, 0.0])  # bend of 13 mm about this point
    a, b = np.radians(120.0), np.radians(240.0)  # 27 mm of arc
    # tapering from 1.9 to 1.4 mm: the thick end is the ostium
    mask = _arc_tube(world, centre, 13.0, (a, b), lambda t: 1.9 - 0.5 * (t - a) / (b - a))
    theta = _angle(world - centre)
    cut = (theta > np.radians(165.0)) & (theta < np.radians(195.0))  # 30 degrees: 6.8 mm of arc
    result = analyse_mask(mask & ~cut, FLIPPED)
    lesion = _single_occlusion(result)
    chord = 2 * 13.0 * np.sin(np.radians(15.0))
    # the centreline is carried straight on to each cut face; on a bend it drifts outwards and
    # meets the face off the axis, so the gap reads up to a radius (1.6 mm) or so longer
    assert chord - 1.0 <= lesion["length_mm"] <= chord + 2.5
    middle = centre + 13.0 * np.array([-1.0, 0.0, 0.0])
    assert np.linalg.norm(np.asarray(lesion["position_mm"]) - middle) < 1.5


def test_unrelated_tubes_are_not_an_occlusion():
    world = world_grid(SHAPE, FLIPPED)
    # side by side, 9.6 mm apart, their ends 6 mm apart along the axis: not in line
    mask = tube(world, world[12, 24, 2], world[12, 24, 50], 1.5)
    mask |= tube(world, world[36, 24, 60], world[36, 24, 93], 1.5)
    # and a tube crossing the first one's course beyond its end, at right angles
    mask |= tube(world, world[4, 10, 62], world[20, 40, 62], 1.5)
    result = analyse_mask(mask, FLIPPED)
    assert result["stenoses"] == []
    assert result["cad_rads"] == "0"
    assert all(b["parent_id"] is None for b in result["branches"])


def test_end_course_skips_the_curl():
    # a straight path along +x that curls sideways over its last 1 mm
    path = np.array([[x, 0.0, 0.0] for x in np.arange(0.0, 10.0, 0.5)] + [[10.0, 0.6, 0.0]])
    position, direction = end_course(path)
    assert position == pytest.approx([10.0, 0.6, 0.0])
    assert direction == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)
