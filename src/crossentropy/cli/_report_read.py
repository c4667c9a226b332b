"""The report's inputs: CSV, Parquet and NumPy .npz, read in batches of rows.

Every reader yields ``(values, labels, groups)`` batches: ``values`` a (b, K) float array
in the file's form (probabilities, logits or log-probabilities), ``labels`` and
``groups`` as read (pyarrow or NumPy arrays; ``groups`` None without ``--group``).
Files are only ever opened for reading.

Layouts
-------
CSV / TSV / Parquet
    One row per example: a label column (``--label``, default ``label``), optionally a
    group column (``--group``), and one numeric column per class, named by the class.
    The class columns are all the other columns, or those named by ``--classes``.
.npz (``numpy.savez`` or ``numpy.savez_compressed``)
    ``label`` (n,) integer or string labels (another name with ``--label``) and
    optionally ``group`` (n,) (another name with ``--group``), then either

    * one matrix: one of ``probs``, ``logits``, ``log_probs`` (n, K) -- the array's name
      is the form, or ``--form`` picks one -- and optionally ``classes`` (K,) class
      names; without ``classes`` the classes are 0..K-1 and the labels class indices; or
    * the table's layout: one (n,) array per class, named by the class (all the other
      arrays, in the order they were saved, or those named by ``--classes``).

    Arrays of Python objects (pickles) are refused.

Columns that pandas writes for its index (an unnamed column, ``Unnamed: 0``,
``__index_level_0__``, and the index columns named in a Parquet file's pandas metadata)
are never taken for classes.

Labels name classes: a label matches the class whose name is the label's text (3 and
"3" both name the class column "3").
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._files import os_problem
from ._report_stats import FORMS

# Values (rows x classes) per batch: the unit of memory.  --batch-size overrides the rows.
BATCH_VALUES = 2**21
PARQUET_BUFFER = 1 << 18
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".npz": "npz",
}

Batch = tuple[np.ndarray, Any, Any]


def default_batch_rows(num_classes: int) -> int:
    return max(64, BATCH_VALUES // max(num_classes, 1))


@dataclass
class Source:
    """An opened input: what it holds and how to read it in batches."""

    path: str
    format: str
    form: str
    class_names: list[str]
    label: str
    group: str | None
    num_rows: int | None
    dtype: Any
    # CSV: data row r (from 0) is on line r + line_offset; None where lines mean nothing.
    line_offset: int | None
    _read: Callable[[int], Iterator[Batch]] = field(repr=False)

    def batches(self, batch_rows: int) -> Iterator[Batch]:
        rows = 0
        try:
            for batch in self._read(batch_rows):
                self._check_groups(batch[2], rows)
                rows += len(batch[0])
                yield batch
        except _READ_ERRORS as error:
            raise _unreadable(self.path, self.format, error) from None

    def _check_groups(self, groups: Any, first_row: int) -> None:
        """A group value missing (null) in a Parquet or CSV batch: name its row."""
        if groups is None or isinstance(groups, np.ndarray) or not groups.null_count:
            return
        i = int(np.flatnonzero(np.asarray(groups.is_null().to_pylist()))[0])
        row = first_row + i
        where = (
            f"row {row}"
            if self.line_offset is None
            else f"row {row} (line {row + self.line_offset})"
        )
        raise ValueError(
            f"missing group value in column {self.group!r} of {self.path!r}, "
            f"{where}: every row needs a group"
        )


def _read_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        UnicodeDecodeError,
        csv.Error,
    ]
    with contextlib.suppress(ImportError):
        import pyarrow as pa

        errors.append(pa.ArrowException)
    return tuple(errors)


_READ_ERRORS = _read_errors()


def _unreadable(path: str, fmt: str, error: BaseException) -> ValueError:
    what = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet", "npz": ".npz"}[fmt]
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"cannot read {path!r} as {what}: {detail}")


def _needs(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"reading this input needs {module.split('.')[0]}: pip install 'crossentropy[cli]'"
        ) from None


def detect_format(path: str) -> str:
    """The format from the file name, else from its first bytes."""
    if path == "":
        raise ValueError("the input path is empty")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"no such file: {path!r}") from None
    except NotADirectoryError:
        raise ValueError(f"no such file: {path!r} (a part of the path is a file)") from None
    except PermissionError:
        raise ValueError(
            f"cannot read {path!r}: permission denied (on a directory of the path)"
        ) from None
    except OSError as error:
        raise ValueError(f"cannot read {path!r}: {os_problem(error)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path!r} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path!r} is not a regular file (the report reads a file twice)")
    if st.st_size == 0:
        raise ValueError(f"{path!r} is empty")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as error:
        raise ValueError(f"cannot read {path!r}: {os_problem(error)}") from None
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is not None:
        return fmt
    if head == b"PAR1":
        return "parquet"
    if head[:2] == b"PK":
        return "npz"
    raise ValueError(f"cannot tell the format of {path!r}: name it .csv, .tsv, .parquet or .npz")


def open_source(
    path: str,
    *,
    label: str = "label",
    group: str | None = None,
    form: str | None = None,
    classes: list[str] | None = None,
) -> Source:
    """Open ``path`` for reading and check its layout (not yet its values)."""
    fmt = detect_format(path)
    opener = {"csv": _open_table, "tsv": _open_table, "parquet": _open_table, "npz": _open_npz}[fmt]
    try:
        return opener(path, fmt, label=label, group=group, form=form, classes=classes)
    except _READ_ERRORS as error:
        raise _unreadable(path, fmt, error) from None


# -- CSV and Parquet -------------------------------------------------------------------

# Index columns pandas writes beside the data: to_csv's unnamed first column, read back as
# "Unnamed: 0", and to_parquet's "__index_level_0__".  They are never classes.
_INDEX_COLUMN = re.compile(r"|Unnamed: \d+|__index_level_\d+__")


def _choose_columns(
    path: str,
    names: list[str],
    label: str,
    group: str | None,
    classes: list[str] | None,
    index: frozenset[str] = frozenset(),
) -> list[str]:
    seen: set[str] = set()
    duplicates = [n for n in names if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
    if duplicates:
        raise ValueError(f"{path!r} has more than one column named {duplicates[0]!r}")
    shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
    if label not in names:
        raise ValueError(
            f"no label column {label!r} in {path!r} (columns: {shown}); name it with --label"
        )
    if group is not None and group not in names:
        raise ValueError(f"no group column {group!r} in {path!r} (columns: {shown})")
    if group == label:
        raise ValueError("--group and --label name the same column")
    if classes is not None:
        missing = [c for c in classes if c not in names]
        if missing:
            raise ValueError(f"no class column {missing[0]!r} in {path!r} (columns: {shown})")
        if label in classes or (group is not None and group in classes):
            raise ValueError("--classes must not name the label or group column")
        chosen = list(classes)
    else:
        chosen = [
            n
            for n in names
            if n not in (label, group) and n not in index and not _INDEX_COLUMN.fullmatch(n)
        ]
    if not chosen:
        raise ValueError(
            f"{path!r} has no class columns: one numeric column per class is "
            "needed besides the label"
        )
    return chosen


def _open_table(
    path: str,
    fmt: str,
    *,
    label: str,
    group: str | None,
    form: str | None,
    classes: list[str] | None,
) -> Source:
    pa = _needs("pyarrow")
    form = form or "probs"
    if fmt == "parquet":
        pq = _needs("pyarrow.parquet")
        with pq.ParquetFile(path) as pf:
            schema = pf.schema_arrow
            num_rows = pf.metadata.num_rows
        names = list(schema.names)
        index = (schema.pandas_metadata or {}).get("index_columns", [])
        class_names = _choose_columns(
            path, names, label, group, classes, frozenset(c for c in index if isinstance(c, str))
        )
        for role, name in (("label", label), ("group", group)):
            if name is not None:
                _check_key_type(path, role, name, schema.field(name).type)
        types = [schema.field(c).type for c in class_names]
        for name, typ in zip(class_names, types, strict=True):
            if not (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
                raise ValueError(
                    f"class column {name!r} in {path!r} is not numeric ({typ}); "
                    "choose the class columns with --classes"
                )
        single = all(pa.types.is_float32(t) or pa.types.is_float16(t) for t in types)
        dtype = np.dtype(np.float32 if single else np.float64)
        columns = [label, *([group] if group else []), *class_names]

        def read(batch_rows: int) -> Iterator[Batch]:
            # Buffered, unprefetched reads: memory is a 256 KiB buffer and about a page per
            # column, not a whole row group (pyarrow's default reads the row group's column
            # chunks at once: 2.2 GiB for 1M-row groups of 100 float32 columns).
            with pq.ParquetFile(path, buffer_size=PARQUET_BUFFER, pre_buffer=False) as pf:
                for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                    yield _table_batch(batch, label, group, class_names, dtype)

        return Source(path, fmt, form, class_names, label, group, num_rows, dtype, None, read)

    pacsv = _needs("pyarrow.csv")
    delimiter = "\t" if fmt == "tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f, delimiter=delimiter), None)
    if not header or not any(h.strip() for h in header):
        raise ValueError(f"{path!r} has no header line: the first line must name the columns")
    names = list(header)
    class_names = _choose_columns(path, names, label, group, classes)
    column_types = {label: pa.string(), **{c: pa.float64() for c in class_names}}
    if group:
        column_types[group] = pa.string()
    columns = [label, *([group] if group else []), *class_names]

    def read_csv(batch_rows: int) -> Iterator[Batch]:
        # About batch_rows rows of ~10 characters per value per block.
        size = int(min(max(batch_rows * len(class_names) * 10, 1 << 16), 1 << 26))
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=size),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types, include_columns=columns
            ),
        )
        with contextlib.closing(reader):
            for batch in reader:
                yield _table_batch(batch, label, group, class_names, np.dtype(np.float64))

    return Source(
        path, fmt, form, class_names, label, group, None, np.dtype(np.float64), 2, read_csv
    )


def _check_key_type(path: str, role: str, name: str, typ: Any) -> None:
    """A label or group column holds strings, numbers or booleans, not lists or structs."""
    import pyarrow as pa

    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if not (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_integer(typ)
        or pa.types.is_floating(typ)
        or pa.types.is_boolean(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    ):
        raise ValueError(
            f"{role} column {name!r} in {path!r} holds {typ}; it must hold strings or numbers"
        )


def _numpy(arr: Any) -> np.ndarray:
    """A pyarrow numeric array as NumPy, nulls as NaN; zero-copy when there are none.

    Reading the buffer directly also keeps pyarrow from importing pandas (half a second).
    """
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    dtype = _NUMPY_TYPES.get(str(arr.type))
    if dtype is None or arr.null_count:
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.frombuffer(arr.buffers()[1], dtype, len(arr), arr.offset * dtype.itemsize)


_NUMPY_TYPES = {
    name: np.dtype(t)
    for name, t in (
        ("halffloat", np.float16),
        ("float", np.float32),
        ("double", np.float64),
        ("int8", np.int8),
        ("int16", np.int16),
        ("int32", np.int32),
        ("int64", np.int64),
        ("uint8", np.uint8),
        ("uint16", np.uint16),
        ("uint32", np.uint32),
        ("uint64", np.uint64),
    )
}


def _table_batch(
    batch: Any, label: str, group: str | None, class_names: list[str], dtype: Any
) -> Batch:
    values = np.empty((batch.num_rows, len(class_names)), dtype=dtype)
    for j, name in enumerate(class_names):
        values[:, j] = _numpy(batch.column(name))
    groups = batch.column(group) if group else None
    return values, batch.column(label), groups


# -- .npz --------------------------------------------------------------------------------


class _NpyMember:
    """One array of an .npz archive, read row block by row block (never all at once)."""

    def __init__(self, archive: zipfile.ZipFile, member: str, name: str, path: str) -> None:
        self.name = name
        self._file = archive.open(member)
        fmt = np.lib.format
        version = fmt.read_magic(self._file)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(self._file)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(self._file)
        else:
            shape, fortran, dtype = fmt._read_array_header(  # type: ignore[attr-defined]
                self._file, version
            )
        if dtype.hasobject:
            raise ValueError(
                f"array {name!r} in {path!r} holds Python objects, which are "
                "not read (no pickles); save strings as a fixed-width str array"
            )
        self.shape, self.dtype = tuple(shape), dtype
        self._fortran = fortran and len(shape) > 1
        self._whole: np.ndarray | None = None
        self._row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        self._path = path

    def read(self, rows: int) -> np.ndarray:
        if self._fortran:
            # Column-major rows are not contiguous: such an array is read whole.
            if self._whole is None:
                count = int(np.prod(self.shape, dtype=np.int64))
                data = self._file.read(count * self.dtype.itemsize)
                self._whole = np.frombuffer(data, self.dtype, count).reshape(self.shape, order="F")
            out, self._whole = self._whole[:rows], self._whole[rows:]
            return np.ascontiguousarray(out)
        data = self._file.read(rows * self._row_bytes)
        if len(data) != rows * self._row_bytes:
            raise ValueError(f"array {self.name!r} in {self._path!r} is truncated")
        out = np.frombuffer(
            data,
            self.dtype,
            rows * self._row_bytes // self.dtype.itemsize if self.dtype.itemsize else 0,
        )
        out = out.reshape((rows, *self.shape[1:]))
        if not self.dtype.isnative:
            out = out.astype(self.dtype.newbyteorder("="))
        return out

    def close(self) -> None:
        self._file.close()


def _open_npz(
    path: str,
    fmt: str,
    *,
    label: str,
    group: str | None,
    form: str | None,
    classes: list[str] | None,
) -> Source:
    with zipfile.ZipFile(path) as archive:
        # The archive's order is the order numpy.savez was given the arrays in.
        members = {m[:-4]: m for m in archive.namelist() if m.endswith(".npy")}
        shown = ", ".join(members) or "none"
        present = [f for f in FORMS if f in members]
        if form is None and len(present) > 1:
            raise ValueError(
                f"{path!r} holds more than one of the arrays probs, logits, "
                f"log_probs ({', '.join(present)}): pick one with --form"
            )
        matrix = form if form in members else (present[0] if form is None and present else None)
        if matrix is None and present:
            raise ValueError(f"{path!r} has no array {form!r} (arrays: {shown})")
        if label not in members:
            raise ValueError(
                f"no label array {label!r} in {path!r} (arrays: {shown}); name it with --label"
            )
        if group is not None and group not in members:
            raise ValueError(f"no group array {group!r} in {path!r} (arrays: {shown})")
        labels = _npy_header(archive, members, label, path)
        if len(labels.shape) != 1:
            raise ValueError(
                f"array {label!r} in {path!r} must be 1-D (one label per row); "
                f"its shape is {labels.shape}"
            )
        (n,) = labels.shape
        if group is not None and _npy_header(archive, members, group, path).shape != (n,):
            raise ValueError(
                f"array {group!r} in {path!r} must have shape ({n},) to match {label!r}"
            )
        if matrix is not None:
            form = matrix
            arrays = [matrix]
            values = _npy_header(archive, members, matrix, path)
            _check_numeric(values, path)
            if len(values.shape) != 2:
                raise ValueError(
                    f"array {matrix!r} in {path!r} must be 2-D (rows, classes); "
                    f"its shape is {values.shape}"
                )
            if values.shape[0] != n:
                raise ValueError(
                    f"array {label!r} in {path!r} must have shape "
                    f"({values.shape[0]},) to match {matrix!r}; its shape is "
                    f"{labels.shape}"
                )
            k = values.shape[1]
            if classes is None and "classes" in members and "classes" not in (label, group):
                with archive.open(members["classes"]) as f:
                    names = np.load(f, allow_pickle=False)
                if names.ndim != 1:
                    raise ValueError(f"array 'classes' in {path!r} must be 1-D")
                classes = [_text(c) for c in names.tolist()]
            if classes is None:
                classes = [str(i) for i in range(k)]
            if len(classes) != k:
                raise ValueError(
                    f"{len(classes)} class names for {k} columns of {matrix!r} in {path!r}"
                )
            if len(set(classes)) != k:
                raise ValueError(f"the class names in {path!r} repeat")
            single = values.dtype in (np.float32, np.float16)
        else:
            # The table layout: one 1-D array per class, named by the class.
            form = form or "probs"
            candidates = [m for m in members if m != "classes"]
            if classes is None and not set(candidates) - {label, group}:
                raise ValueError(
                    f"{path!r} has no predictions: save one of the arrays probs, "
                    f"logits, log_probs (n, K), or one (n,) array per class; it "
                    f"holds: {shown}"
                )
            arrays = _choose_columns(path, candidates, label, group, classes)
            classes = arrays
            single = True
            for name in arrays:
                column = _npy_header(archive, members, name, path)
                _check_numeric(column, path)
                if column.shape != (n,):
                    raise ValueError(
                        f"class array {name!r} in {path!r} must have shape "
                        f"({n},) like {label!r}; its shape is {column.shape}"
                    )
                single = single and column.dtype in (np.float32, np.float16)
    dtype = np.dtype(np.float32 if single else np.float64)

    def read(batch_rows: int) -> Iterator[Batch]:
        with zipfile.ZipFile(path) as archive:
            names = [*arrays, label, *([group] if group is not None else [])]
            parts = [_NpyMember(archive, members[name], name, path) for name in names]
            try:
                for start in range(0, n, batch_rows):
                    rows = min(batch_rows, n - start)
                    if matrix is not None:
                        block = parts[0].read(rows).astype(dtype, copy=False)
                    else:
                        block = np.empty((rows, len(arrays)), dtype=dtype)
                        for j, part in enumerate(parts[: len(arrays)]):
                            block[:, j] = part.read(rows)
                    lab = parts[len(arrays)].read(rows)
                    grp = parts[-1].read(rows) if group is not None else None
                    yield block, lab, grp
            finally:
                for p in parts:
                    p.close()

    return Source(path, fmt, form, classes, label, group, n, dtype, None, read)


def _npy_header(
    archive: zipfile.ZipFile, members: dict[str, str], name: str, path: str
) -> _NpyMember:
    """The shape and dtype of one array (its header only; the data is not read)."""
    member = _NpyMember(archive, members[name], name, path)
    member.close()
    return member


def _check_numeric(member: _NpyMember, path: str) -> None:
    if member.dtype.kind not in "fiu":
        raise ValueError(f"array {member.name!r} in {path!r} is not numeric ({member.dtype})")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- labels --------------------------------------------------------------------------------


class LabelMap:
    """Labels (any type) to class indices, by the labels' text; unknown labels are errors."""

    def __init__(self, class_names: list[str], line_offset: int | None = None) -> None:
        self.class_names = class_names
        self._index = {name: i for i, name in enumerate(class_names)}
        self._cache: dict[Any, int] = {}
        self._line_offset = line_offset
        self._integer_names = class_names == [str(i) for i in range(len(class_names))]

    def _where(self, row: int) -> str:
        if self._line_offset is None:
            return f"row {row}"
        return f"row {row} (line {row + self._line_offset})"

    def _lookup(self, value: Any) -> int:
        if value in self._cache:
            return self._cache[value]
        index = self._index.get(_text(value), -1)
        if index < 0 and isinstance(value, float) and not value.is_integer():
            index = self._index.get(str(value), -1)
        if index < 0 and isinstance(value, str):
            # "1.0" in a CSV names the class "1".
            with contextlib.suppress(ValueError, OverflowError):
                number = float(value)
                if number.is_integer():
                    index = self._index.get(str(int(number)), -1)
        self._cache[value] = index
        return index

    def __call__(self, raw: Any, first_row: int) -> np.ndarray:
        if isinstance(raw, np.ndarray) and raw.dtype.kind in "iu" and self._integer_names:
            labels = raw.astype(np.int64, copy=False)
            bad = (labels < 0) | (labels >= len(self.class_names))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                self._unknown(raw[i].item(), first_row + i)
            return labels
        if isinstance(raw, np.ndarray):
            uniques, indices = np.unique(raw, return_inverse=True)
            values = uniques.tolist()
            return self._apply(values, indices.reshape(-1), first_row)
        import pyarrow as pa

        if isinstance(raw, pa.ChunkedArray):
            raw = raw.combine_chunks()
        if raw.null_count:
            i = int(np.flatnonzero(raw.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"missing label in {self._where(first_row + i)}")
        encoded = raw if pa.types.is_dictionary(raw.type) else raw.dictionary_encode()
        return self._apply(encoded.dictionary.to_pylist(), _numpy(encoded.indices), first_row)

    def _apply(self, dictionary: list[Any], indices: np.ndarray, first_row: int) -> np.ndarray:
        lut = np.array([self._lookup(v) for v in dictionary], dtype=np.int64)
        labels = lut[indices] if len(lut) else np.empty(0, dtype=np.int64)
        if (labels < 0).any():
            i = int(np.flatnonzero(labels < 0)[0])
            self._unknown(dictionary[indices[i]], first_row + i)
        return labels

    def _unknown(self, value: Any, row: int) -> None:
        names = self.class_names
        shown = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
        raise ValueError(
            f"label {_text(value)!r} in {self._where(row)} is not among the "
            f"{len(names)} classes ({shown})"
        )
