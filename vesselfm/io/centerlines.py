"""ImageCAS-X centrelines: legacy VTK polydata, read and written without the ``vtk`` package.

ImageCAS-X ships ``<id>.coronary_{left,right}_centerline.vtk`` (legacy VTK, file version 5.1,
ASCII or BINARY). Its own code reads them with ``vtk.vtkPolyDataReader`` and relies on:

- points in **LPS** mm of the original scan (ITK/DICOM world; NIfTI's RAS is ``(-x, -y, z)``:
  :func:`lps_to_ras` converts, explicitly, wherever a centreline meets a NIfTI affine);
- line cells, each a run of point ids between two branch points, **in either orientation**:
  the ids index one shared point array, so a point id is a graph node, and proximal/distal
  comes only from ``start_points``;
- point arrays ``segment_label`` (1..14), ``segment_name`` (strings: ``LM``, ``LAD``, …),
  ``start_points`` (ostia, 0/1), ``end_points`` and ``branch_points`` (0/1); no radius array
  (radius, where needed, comes from the ground truth's distance transform).

:func:`read_centerlines` reads any legacy polydata file: version 4.x (``LINES n size``) or 5.x
(``OFFSETS``/``CONNECTIVITY``), ASCII or BINARY (big-endian), point arrays stored as ``FIELD``
arrays or as ``SCALARS``/``VECTORS``/``NORMALS``, string arrays, ``METADATA`` blocks; cell data
and other cell kinds are read past and dropped. :func:`write_centerlines` writes what VTK 9's
``vtkPolyDataWriter`` writes for such a polydata (version 5.1, every point array in the
``FIELD`` block), BINARY by default; the tests read it back with VTK itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vesselfm.utils.errors import UserError
from vesselfm.utils.io import atomic_path

#: the point arrays of an ImageCAS-X centreline file
POINT_ARRAYS = ("segment_label", "segment_name", "start_points", "end_points", "branch_points")

#: legacy VTK type names -> big-endian NumPy dtypes (``long`` is 8 bytes, as VTK writes it on
#: 64-bit Linux and macOS)
_VTK_TYPES: dict[str, str] = {
    "unsigned_char": ">u1",
    "char": ">i1",
    "signed_char": ">i1",
    "unsigned_short": ">u2",
    "short": ">i2",
    "unsigned_int": ">u4",
    "int": ">i4",
    "vtktypeint32": ">i4",
    "vtktypeuint32": ">u4",
    "unsigned_long": ">u8",
    "long": ">i8",
    "vtktypeint64": ">i8",
    "vtktypeuint64": ">u8",
    "vtkidtype": ">i8",
    "float": ">f4",
    "double": ">f8",
}
#: NumPy kind+size -> the type name written (VTK's writer spelling)
_NUMPY_TO_VTK: dict[str, str] = {
    "u1": "unsigned_char",
    "i1": "char",
    "u2": "unsigned_short",
    "i2": "short",
    "u4": "unsigned_int",
    "i4": "int",
    "u8": "vtktypeuint64",
    "i8": "vtktypeint64",
    "f4": "float",
    "f8": "double",
    "b1": "unsigned_char",
}
_TOKEN = re.compile(rb"\S+")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


class CenterlineError(UserError, ValueError):
    """A centreline file that cannot be read, or a :class:`Centerlines` that cannot be written."""


@dataclass
class Centerlines:
    """A centreline tree as ImageCAS-X stores it.

    Attributes:
        points_lps: ``(N, 3)`` float64 points in LPS mm of the scan.
        lines: line cells, each an int64 array of point ids (a run between branch points, in
            either orientation).
        point_data: per-point arrays of length ``N`` (first axis), by name; ``segment_name``
            holds strings.

    Example:
        >>> c = Centerlines(np.zeros((2, 3)), [np.array([0, 1])], {"start_points": np.array([1, 0])})
        >>> c.n_points
        2
    """

    points_lps: np.ndarray
    lines: list[np.ndarray] = field(default_factory=list)
    point_data: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return int(len(self.points_lps))


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """LPS (ITK, DICOM, ImageCAS-X centrelines) to RAS (NIfTI world, :attr:`Volume.affine`), mm."""
    return np.asarray(points, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """RAS to LPS, mm (the same flip of x and y)."""
    return lps_to_ras(points)


# ------------------------------------------------------------------------------------ reading --


class _Cursor:
    """Reads a legacy VTK file: header lines are ASCII in both encodings, data ASCII or binary."""

    def __init__(self, data: bytes, path: Path, binary: bool) -> None:
        self.data = data
        self.pos = 0
        self.path = path
        self.binary = binary

    def fail(self, what: str) -> CenterlineError:
        return CenterlineError(
            f"{self.path}: {what}; expected a legacy VTK polydata centreline "
            "(ImageCAS-X's <id>.coronary_{left,right}_centerline.vtk)"
        )

    def at_end(self) -> bool:
        return not self.data[self.pos :].strip()

    def raw_line(self) -> str:
        end = self.data.find(b"\n", self.pos)
        end = len(self.data) if end < 0 else end
        line = self.data[self.pos : end].decode("latin-1").rstrip("\r")
        self.pos = end + 1
        return line

    def line(self) -> str:
        """The next non-blank line, stripped."""
        while self.pos < len(self.data):
            line = self.raw_line().strip()
            if line:
                return line
        raise self.fail("it ends early")

    def peek_line(self) -> str | None:
        pos = self.pos
        try:
            return self.line() if not self.at_end() else None
        finally:
            self.pos = pos

    def values(self, count: int, vtk_type: str) -> np.ndarray:
        """``count`` numbers of ``vtk_type``, native byte order."""
        dtype_name = _VTK_TYPES.get(vtk_type.lower())
        if dtype_name is None:
            raise self.fail(f"data type {vtk_type!r} is not supported")
        dtype = np.dtype(dtype_name)
        if self.binary:
            # the data begins right after the header line's newline
            nbytes = count * dtype.itemsize
            if self.pos + nbytes > len(self.data):
                raise self.fail(f"{count} {vtk_type} values run past the end of the file")
            out = np.frombuffer(self.data, dtype, count, self.pos)
            self.pos += nbytes
            return out.astype(dtype.newbyteorder("="))
        out = np.empty(count, dtype=dtype.newbyteorder("="))
        tokens = _TOKEN.finditer(self.data, self.pos)
        try:
            for i in range(count):
                match = next(tokens)
                out[i] = float(match.group()) if dtype.kind == "f" else int(match.group())
        except StopIteration:
            raise self.fail(f"it holds fewer than {count} {vtk_type} values") from None
        except ValueError as err:
            raise self.fail(f"a {vtk_type} value is not a number ({err})") from err
        if count:
            self.pos = match.end()
        return out

    def strings(self, count: int) -> np.ndarray:
        out: list[str] = []
        if self.binary:
            for _ in range(count):
                if self.pos >= len(self.data):
                    raise self.fail(f"it holds fewer than {count} strings")
                head = self.data[self.pos]
                # VTK's length prefix: the top two bits give its size (3: 1 byte ... 0: 8 bytes)
                size = {3: 1, 2: 2, 1: 4, 0: 8}[head >> 6]
                length = int.from_bytes(self.data[self.pos : self.pos + size], "big")
                length &= (1 << (8 * size - 2)) - 1
                self.pos += size
                out.append(self.data[self.pos : self.pos + length].decode("utf-8"))
                self.pos += length
        else:
            for _ in range(count):
                if self.pos >= len(self.data):
                    raise self.fail(f"it holds fewer than {count} strings")
                text = self.raw_line().strip()
                out.append(_PERCENT.sub(lambda m: chr(int(m.group(1), 16)), text))
        return np.array(out, dtype=str)


def _int(cursor: _Cursor, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError as err:
        raise cursor.fail(f"{what} is {text!r}, not a count") from err


def _array(cursor: _Cursor, vtk_type: str, count: int) -> np.ndarray:
    if vtk_type.lower() == "string":
        return cursor.strings(count)
    return cursor.values(count, vtk_type)


def _skip_metadata(cursor: _Cursor) -> None:
    """``METADATA`` blocks (component names, information keys) end at a blank line."""
    if cursor.peek_line() != "METADATA":
        return
    cursor.line()
    while cursor.pos < len(cursor.data) and cursor.raw_line().strip():
        pass


def _read_cells(cursor: _Cursor, words: list[str], legacy: bool) -> list[np.ndarray]:
    """``LINES``/``POLYGONS``/…: ``n size`` + counted ids (v4) or OFFSETS + CONNECTIVITY (v5)."""
    if len(words) != 3:
        raise cursor.fail(f"the line {' '.join(words)!r} is not '{words[0]} <n> <size>'")
    first, second = _int(cursor, words[1], words[0]), _int(cursor, words[2], words[0])
    if legacy:
        flat = cursor.values(second, "int").astype(np.int64)
        cells, i = [], 0
        for _ in range(first):
            if i >= len(flat):
                raise cursor.fail(f"{words[0]} holds fewer cells than {first}")
            n = int(flat[i])
            cells.append(flat[i + 1 : i + 1 + n].copy())
            i += 1 + n
        return cells
    offsets_head = cursor.line().split()
    if offsets_head[0] != "OFFSETS" or len(offsets_head) != 2:
        raise cursor.fail(f"{words[0]} is not followed by 'OFFSETS <type>'")
    offsets = cursor.values(first, offsets_head[1]).astype(np.int64)
    conn_head = cursor.line().split()
    if conn_head[0] != "CONNECTIVITY" or len(conn_head) != 2:
        raise cursor.fail(f"{words[0]} has no 'CONNECTIVITY <type>' after its offsets")
    conn = cursor.values(second, conn_head[1]).astype(np.int64)
    if first and (offsets[0] != 0 or offsets[-1] != second or np.any(np.diff(offsets) < 0)):
        raise cursor.fail(f"the {words[0]} offsets do not index the connectivity")
    return [conn[a:b].copy() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _read_attributes(cursor: _Cursor, n: int, keep: bool) -> dict[str, np.ndarray]:
    """A ``POINT_DATA``/``CELL_DATA`` section of ``n`` tuples, up to the next section."""
    arrays: dict[str, np.ndarray] = {}
    sections = ("POINT_DATA", "CELL_DATA", "POINTS", "LINES", "VERTICES", "POLYGONS")
    while (peek := cursor.peek_line()) is not None and peek.split()[0] not in sections:
        words = cursor.line().split()
        kind = words[0].upper()
        if kind == "FIELD":
            n_arrays = _int(cursor, words[-1], "FIELD's array count")
            for _ in range(n_arrays):
                head = cursor.line().split()
                if len(head) == 2 and head[1] == "NULL_ARRAY":
                    continue
                if len(head) != 4:
                    raise cursor.fail(f"the FIELD array line {' '.join(head)!r} is malformed")
                name, ncomp, ntup = head[0], _int(cursor, head[1], head[0]), int(head[2])
                values = _array(cursor, head[3], ncomp * ntup)
                arrays[_decode_name(name)] = values.reshape(ntup, ncomp) if ncomp > 1 else values
                _skip_metadata(cursor)
        elif kind == "SCALARS":
            ncomp = _int(cursor, words[3], "SCALARS components") if len(words) > 3 else 1
            table = cursor.line().split()
            if table[0] != "LOOKUP_TABLE":
                raise cursor.fail(f"SCALARS {words[1]} has no LOOKUP_TABLE line")
            values = _array(cursor, words[2], ncomp * n)
            arrays[_decode_name(words[1])] = values.reshape(n, ncomp) if ncomp > 1 else values
            _skip_metadata(cursor)
        elif kind in ("VECTORS", "NORMALS"):
            arrays[_decode_name(words[1])] = _array(cursor, words[2], 3 * n).reshape(n, 3)
            _skip_metadata(cursor)
        elif kind == "TCOORDS":
            dim = _int(cursor, words[2], "TCOORDS dimension")
            arrays[_decode_name(words[1])] = _array(cursor, words[3], dim * n).reshape(n, dim)
            _skip_metadata(cursor)
        elif kind == "LOOKUP_TABLE":
            size = _int(cursor, words[2], "LOOKUP_TABLE size")
            if cursor.binary:
                cursor.values(4 * size, "unsigned_char")
            else:
                cursor.values(4 * size, "float")
        elif kind in ("GLOBAL_IDS", "PEDIGREE_IDS"):
            _array(cursor, words[2], n)
            _skip_metadata(cursor)
        elif kind == "METADATA":
            while cursor.pos < len(cursor.data) and cursor.raw_line().strip():
                pass
        else:
            raise cursor.fail(f"the section {words[0]!r} is not supported")
    return arrays if keep else {}


def _decode_name(name: str) -> str:
    return _PERCENT.sub(lambda m: chr(int(m.group(1), 16)), name)


def read_centerlines(path: str | Path) -> Centerlines:
    """Read a legacy VTK polydata centreline file (ImageCAS-X's format).

    Args:
        path: the ``.vtk`` file.

    Returns:
        :class:`Centerlines`: points in the file's frame (LPS mm for ImageCAS-X), the line
        cells (vertices, polygons and strips are dropped), every point array.

    Raises:
        CenterlineError: not a legacy VTK polydata file, truncated, a cell indexing no point,
            an array of the wrong length.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CenterlineError(f"{path}: cannot read the centreline file ({err})") from err
    if not data.startswith(b"# vtk DataFile Version"):
        raise CenterlineError(
            f"{path}: not a legacy VTK file (no '# vtk DataFile Version' line); "
            "ImageCAS-X centrelines are legacy .vtk polydata"
        )
    cursor = _Cursor(data, path, binary=False)
    version_text = cursor.raw_line().split()[-1]
    try:
        legacy = float(version_text) < 5.0
    except ValueError:
        raise cursor.fail(f"the version {version_text!r} is not a number") from None
    cursor.raw_line()  # title
    encoding = cursor.line().upper()
    if encoding not in ("ASCII", "BINARY"):
        raise cursor.fail(f"the third line is {encoding!r}, not ASCII or BINARY")
    cursor.binary = encoding == "BINARY"
    dataset = cursor.line().split()
    if dataset[:1] != ["DATASET"] or dataset[1:2] != ["POLYDATA"]:
        raise cursor.fail(f"the dataset is {' '.join(dataset[1:]) or 'missing'}, not POLYDATA")

    points: np.ndarray | None = None
    lines: list[np.ndarray] = []
    point_data: dict[str, np.ndarray] = {}
    while not cursor.at_end():
        words = cursor.line().split()
        kind = words[0].upper()
        if kind == "FIELD":  # dataset-level field data (time values, …): read past
            n_arrays = _int(cursor, words[-1], "FIELD's array count")
            for _ in range(n_arrays):
                head = cursor.line().split()
                if len(head) == 4:
                    _array(cursor, head[3], int(head[1]) * int(head[2]))
                    _skip_metadata(cursor)
        elif kind == "POINTS":
            count = _int(cursor, words[1], "POINTS")
            points = cursor.values(3 * count, words[2]).astype(np.float64).reshape(count, 3)
            _skip_metadata(cursor)
        elif kind in ("LINES", "VERTICES", "POLYGONS", "TRIANGLE_STRIPS"):
            cells = _read_cells(cursor, words, legacy)
            if kind == "LINES":
                lines.extend(cells)
        elif kind in ("POINT_DATA", "CELL_DATA"):
            n = _int(cursor, words[1], kind)
            arrays = _read_attributes(cursor, n, keep=kind == "POINT_DATA")
            point_data.update(arrays)
        elif kind == "METADATA":
            while cursor.pos < len(cursor.data) and cursor.raw_line().strip():
                pass
        else:
            raise cursor.fail(f"the section {words[0]!r} is not supported")
    if points is None:
        raise cursor.fail("it has no POINTS section")
    n_points = len(points)
    for cell in lines:
        if len(cell) and (cell.min() < 0 or cell.max() >= n_points):
            raise cursor.fail(f"a line cell indexes point {int(cell.max())} of {n_points}")
    for name, values in point_data.items():
        if len(values) != n_points:
            raise cursor.fail(f"the point array {name!r} has {len(values)} values, not {n_points}")
    return Centerlines(points_lps=points, lines=lines, point_data=point_data)


# ------------------------------------------------------------------------------------ writing --


def _check(c: Centerlines, path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    points = np.asarray(c.points_lps, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
        raise CenterlineError(
            f"{path}: points_lps must be a finite (N, 3) array in mm, got shape {points.shape}"
        )
    lines = [np.asarray(cell, dtype=np.int64).ravel() for cell in c.lines]
    for cell in lines:
        if len(cell) and (cell.min() < 0 or cell.max() >= len(points)):
            raise CenterlineError(
                f"{path}: a line cell indexes point {int(cell.max())} of {len(points)}"
            )
    for name, values in c.point_data.items():
        if len(values) != len(points):
            raise CenterlineError(
                f"{path}: point array {name!r} has {len(values)} values for {len(points)} points"
            )
        if re.search(r"\s", name) or not name:
            raise CenterlineError(f"{path}: point array name {name!r} must be a non-empty word")
    return points, lines


def _encode_string_ascii(text: str) -> bytes:
    # VTK's ASCII writer %-escapes whitespace, '%' and non-printable bytes
    out = []
    for byte in text.encode("utf-8"):
        if byte <= 32 or byte >= 127 or byte in (ord("%"), ord('"')):
            out.append(f"%{byte:02X}".encode())
        else:
            out.append(bytes([byte]))
    return b"".join(out)


def _encode_string_binary(text: str) -> bytes:
    raw = text.encode("utf-8")
    n = len(raw)
    if n < 1 << 6:
        head = (0b11 << 6 | n).to_bytes(1, "big")
    elif n < 1 << 14:
        head = (0b10 << 14 | n).to_bytes(2, "big")
    elif n < 1 << 30:
        head = (0b01 << 30 | n).to_bytes(4, "big")
    else:
        head = n.to_bytes(8, "big")
    return head + raw


def _numbers(values: np.ndarray, binary: bool) -> bytes:
    values = np.asarray(values)
    if binary:
        return values.astype(values.dtype.newbyteorder(">")).tobytes() + b"\n"
    flat = values.ravel()
    if values.dtype.kind == "f":
        text = " ".join(repr(float(v)) for v in flat)
    else:
        text = " ".join(str(int(v)) for v in flat)
    return text.encode() + b"\n"


def write_centerlines(path: str | Path, c: Centerlines, *, binary: bool = True) -> None:
    """Write ``c`` as ImageCAS-X does: legacy VTK 5.1 polydata, point arrays in ``FIELD``.

    Points are written as ``double`` (LPS mm, unchanged); integer arrays keep their width
    (``int32`` → ``int``, ``int64`` → ``vtktypeint64``, bool → ``unsigned_char``); string arrays
    (``segment_name``) as ``string``. The file is written atomically.

    Args:
        path: the ``.vtk`` file to write.
        c: the centrelines.
        binary: BINARY (default) or ASCII encoding; :func:`read_centerlines` and VTK read both.

    Raises:
        CenterlineError: points that are not a finite ``(N, 3)`` array, a cell indexing no
            point, an array whose length is not ``N``.
    """
    path = Path(path)
    points, lines = _check(c, path)
    chunks = [
        b"# vtk DataFile Version 5.1\n",
        b"vtk output\n",
        b"BINARY\n" if binary else b"ASCII\n",
        b"DATASET POLYDATA\n",
        f"POINTS {len(points)} double\n".encode(),
        _numbers(points, binary),
    ]
    if lines:
        offsets = np.concatenate([[0], np.cumsum([len(cell) for cell in lines])]).astype(np.int64)
        conn = np.concatenate(lines).astype(np.int64)
        chunks += [
            f"LINES {len(offsets)} {len(conn)}\n".encode(),
            b"OFFSETS vtktypeint64\n",
            _numbers(offsets, binary),
            b"CONNECTIVITY vtktypeint64\n",
            _numbers(conn, binary),
        ]
    if c.point_data:
        chunks.append(f"POINT_DATA {len(points)}\nFIELD FieldData {len(c.point_data)}\n".encode())
        for name, values in c.point_data.items():
            values = np.asarray(values)
            ncomp = 1 if values.ndim == 1 else int(np.prod(values.shape[1:]))
            if values.dtype.kind in "UO":
                chunks.append(f"{name} {ncomp} {len(values)} string\n".encode())
                texts = [str(v) for v in values.ravel()]
                if binary:
                    chunks.append(b"".join(_encode_string_binary(t) for t in texts) + b"\n")
                else:
                    chunks.append(b"".join(_encode_string_ascii(t) + b"\n" for t in texts) + b"\n")
                continue
            if values.dtype.kind == "b":
                values = values.astype(np.uint8)
            key = f"{values.dtype.kind}{values.dtype.itemsize}"
            if key not in _NUMPY_TO_VTK:
                raise CenterlineError(
                    f"{path}: point array {name!r} has dtype {values.dtype}; "
                    "use an integer, float, bool or string array"
                )
            chunks.append(f"{name} {ncomp} {len(values)} {_NUMPY_TO_VTK[key]}\n".encode())
            chunks.append(_numbers(values, binary))
    with atomic_path(path, record=False) as tmp:
        Path(tmp).write_bytes(b"".join(chunks))
