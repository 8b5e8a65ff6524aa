"""ImageCAS-X centreline files: written here, read by VTK itself; written by VTK, read here."""

from __future__ import annotations

import numpy as np
import pytest
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from vesselfm.io.centerlines import (
    CenterlineError,
    Centerlines,
    lps_to_ras,
    read_centerlines,
    write_centerlines,
)


def _tree() -> Centerlines:
    """LM (ostium at 0) splitting at point 2 into LAD and LCx; the LCx cell runs distal→proximal,
    as ImageCAS-X's cells may; one name needs VTK's %-escaping."""
    points = np.array(
        [
            [10.125, -20.5, 30.0],
            [10.5, -20.0, 31.0],
            [11.0, -19.25, 32.0],
            [12.0, -18.0, 33.5],
            [13.0, -17.0, 35.0],
            [10.0, -18.5, 33.0],
            [9.0, -17.75, 34.0625],
        ]
    )
    names = np.array(["LM", "LM", "LM", "LAD", "LAD", "LCx", "L Cx%"])
    return Centerlines(
        points_lps=points,
        lines=[np.array([0, 1, 2]), np.array([2, 3, 4]), np.array([6, 5, 2])],
        point_data={
            "segment_label": np.array([1, 1, 1, 2, 2, 3, 3], dtype=np.int32),
            "segment_name": names,
            "start_points": np.array([1, 0, 0, 0, 0, 0, 0], dtype=np.int32),
            "end_points": np.array([0, 0, 0, 0, 1, 0, 1], dtype=np.int32),
            "branch_points": np.array([0, 0, 1, 0, 0, 0, 0], dtype=np.int32),
        },
    )


def _vtk_read(path) -> tuple[np.ndarray, list[list[int]], dict[str, np.ndarray]]:
    """ImageCAS-X's own way of reading a centreline (vtkPolyDataReader, all arrays)."""
    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.ReadAllScalarsOn()
    reader.ReadAllFieldsOn()
    reader.Update()
    poly = reader.GetOutput()
    points = vtk_to_numpy(poly.GetPoints().GetData())
    cells, ids = [], vtk.vtkIdList()
    lines = poly.GetLines()
    lines.InitTraversal()
    while lines.GetNextCell(ids):
        cells.append([ids.GetId(i) for i in range(ids.GetNumberOfIds())])
    data = poly.GetPointData()
    arrays = {}
    for i in range(data.GetNumberOfArrays()):
        array = data.GetAbstractArray(i)
        if isinstance(array, vtk.vtkStringArray):
            arrays[array.GetName()] = np.array(
                [array.GetValue(j) for j in range(array.GetNumberOfValues())]
            )
        else:
            arrays[array.GetName()] = vtk_to_numpy(array)
    return points, cells, arrays


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_written_file_reads_back_in_vtk(tmp_path, binary):
    tree = _tree()
    path = tmp_path / "1.coronary_left_centerline.vtk"
    write_centerlines(path, tree, binary=binary)
    head = path.read_bytes()[:80]
    assert head.startswith(b"# vtk DataFile Version 5.1\n")
    assert (b"\nBINARY\n" in head) == binary
    points, cells, arrays = _vtk_read(path)
    np.testing.assert_array_equal(points, tree.points_lps)  # double: exact
    assert cells == [[0, 1, 2], [2, 3, 4], [6, 5, 2]]
    assert set(arrays) == set(tree.point_data)
    assert arrays["segment_name"].tolist() == ["LM", "LM", "LM", "LAD", "LAD", "LCx", "L Cx%"]
    for name in ("segment_label", "start_points", "end_points", "branch_points"):
        np.testing.assert_array_equal(arrays[name], tree.point_data[name])
        assert arrays[name].dtype == np.int32
    # no radius array: ImageCAS-X's files have none
    assert "radius" not in arrays

    back = read_centerlines(path)
    np.testing.assert_array_equal(back.points_lps, tree.points_lps)
    assert [cell.tolist() for cell in back.lines] == cells
    assert back.point_data["segment_name"].tolist() == arrays["segment_name"].tolist()
    np.testing.assert_array_equal(back.point_data["end_points"], tree.point_data["end_points"])


def _vtk_polydata() -> vtk.vtkPolyData:
    tree = _tree()
    poly = vtk.vtkPolyData()
    points = vtk.vtkPoints()
    points.SetData(numpy_to_vtk(tree.points_lps.astype(np.float32), deep=True))
    poly.SetPoints(points)
    cells = vtk.vtkCellArray()
    for cell in tree.lines:
        line = vtk.vtkPolyLine()
        line.GetPointIds().SetNumberOfIds(len(cell))
        for i, point_id in enumerate(cell):
            line.GetPointIds().SetId(i, int(point_id))
        cells.InsertNextCell(line)
    poly.SetLines(cells)
    data = poly.GetPointData()
    for name, values in tree.point_data.items():
        if values.dtype.kind == "U":
            array = vtk.vtkStringArray()
            for value in values:
                array.InsertNextValue(str(value))
        else:
            array = numpy_to_vtk(values, deep=True)
        array.SetName(name)
        data.AddArray(array)
    # one array as the active scalars, so the file also has a SCALARS/LOOKUP_TABLE section
    data.SetActiveScalars("segment_label")
    return poly


@pytest.mark.parametrize("version", [42, 51])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_reads_files_written_by_vtk(tmp_path, version, binary):
    path = tmp_path / "vtk_written.vtk"
    writer = vtk.vtkPolyDataWriter()
    writer.SetInputData(_vtk_polydata())
    writer.SetFileName(str(path))
    writer.SetFileVersion(version)
    writer.SetFileType(vtk.VTK_BINARY if binary else vtk.VTK_ASCII)
    assert writer.Write() == 1
    points, cells, arrays = _vtk_read(path)

    ours = read_centerlines(path)
    tree = _tree()
    assert ours.points_lps.dtype == np.float64
    # float32 on disk: equal to VTK's own reading, and to the tree within float32 rounding
    np.testing.assert_array_equal(ours.points_lps, points.astype(np.float64))
    np.testing.assert_allclose(ours.points_lps, tree.points_lps, atol=1e-5)
    assert [cell.tolist() for cell in ours.lines] == cells == [[0, 1, 2], [2, 3, 4], [6, 5, 2]]
    assert set(ours.point_data) == set(arrays) == set(tree.point_data)
    for name, values in arrays.items():
        assert ours.point_data[name].tolist() == values.tolist(), name


def test_lps_to_ras_flips_x_and_y():
    np.testing.assert_array_equal(lps_to_ras(np.array([[1.0, -2.0, 3.0]])), [[-1.0, 2.0, 3.0]])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"solid stl\n", "not a legacy VTK file"),
        (b"# vtk DataFile Version 5.1\nt\nASCII\nDATASET STRUCTURED_POINTS\n", "not POLYDATA"),
        (
            b"# vtk DataFile Version 5.1\nt\nASCII\nDATASET POLYDATA\nPOINTS 3 float\n0 0 0\n",
            "fewer",
        ),
        (
            b"# vtk DataFile Version 4.2\nt\nASCII\nDATASET POLYDATA\nPOINTS 2 float\n"
            b"0 0 0 1 1 1\nLINES 1 3\n2 0 5\n",
            "indexes point 5",
        ),
    ],
    ids=["not-vtk", "not-polydata", "truncated", "bad-cell"],
)
def test_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.vtk"
    path.write_bytes(content)
    with pytest.raises(CenterlineError, match=message) as info:
        read_centerlines(path)
    assert str(path) in str(info.value)


def test_write_refuses_a_short_array_and_leaves_nothing(tmp_path):
    tree = _tree()
    tree.point_data["segment_label"] = tree.point_data["segment_label"][:3]
    path = tmp_path / "out.vtk"
    with pytest.raises(CenterlineError, match="segment_label"):
        write_centerlines(path, tree)
    assert not path.exists()
