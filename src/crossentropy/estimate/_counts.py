"""Counting samples: the :class:`Counts` accumulator and :func:`counts`.

Symbols are told apart as Python's dictionaries (and ``collections.Counter``) tell them
apart: ``1``, ``1.0``, ``True``, ``np.int64(1)`` and ``np.float32(1.0)`` are one symbol,
because they are equal. Every symbol is first put in one canonical form
(:func:`_canonical`: a number equal to an integer becomes that Python ``int``, a NumPy
scalar its Python value), so that each path (lists, integer and float arrays, mappings,
merges) keys it the same way.

Non-negative integers below ``_DENSE_LIMIT`` are then counted in a dense array indexed by
the symbol (``np.bincount``: as fast as counting gets); every other hashable value
(strings, negative or huge integers, non-integral floats, tuples) is kept in a
dictionary, filled from ``np.unique`` where the batch is an array, so that no Python loop
runs over the samples. Which of the two holds a symbol depends only on the symbol, so
merging is exact. Python integers beyond int64 are kept exact (never turned into floats).
"""

from __future__ import annotations

import collections
import numbers
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .._array import check_axis
from ._validate import check_positive_int

__all__ = ["Counts", "counts"]

# 2**20 symbols (a vocabulary of a million tokens): a dense table of at most 8 MiB, which
# one sample near the limit already allocates (and every merge copies). Larger ids go to
# the dictionary.
_DENSE_LIMIT = 1 << 20
# Samples per counting block: 2 MiB of int64, a core's L2 cache here.
_BLOCK = 1 << 18
_INT64_MAX = (1 << 63) - 1
# counts(..., axis=...) builds a (rows, K) table of at most this many counts per sample
# (and at least _TABLE_MIN: 128 MiB of int64).
_TABLE_FACTOR = 16
_TABLE_MIN = 1 << 24


def _canonical(symbol: Any) -> Any:
    """The one form a symbol is keyed by: equal numbers get the same key.

    A NumPy number becomes its Python value; any number equal to an integer (``1.0``,
    ``True``, ``Fraction(2)``, ``2 + 0j``) becomes that ``int``; NaN is refused (it is
    not equal to itself, so it could never be looked up). Everything else is unchanged:
    a dictionary compares it by ``==`` anyway.
    """
    if type(symbol) is int:
        return symbol
    if isinstance(symbol, (np.number, np.bool_)):
        symbol = symbol.item()
    if isinstance(symbol, numbers.Integral):
        return int(symbol)
    if isinstance(symbol, float):
        if symbol != symbol:
            raise ValueError("samples contain NaN: drop missing values before counting")
        return int(symbol) if symbol.is_integer() else symbol
    if isinstance(symbol, numbers.Number):
        if symbol != symbol:  # Decimal("NaN"), complex NaN
            raise ValueError("samples contain NaN: drop missing values before counting")
        try:
            real = symbol.real if symbol.imag == 0 else symbol  # type: ignore[attr-defined]
            whole = int(real)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError, AttributeError):
            return symbol
        return whole if whole == symbol else symbol
    return symbol


def _is_dense(key: Any) -> bool:
    """Whether a canonical key lives in the dense table."""
    return type(key) is int and 0 <= key < _DENSE_LIMIT


def _sort_key(item: tuple[Hashable, int]) -> tuple[str, Any]:
    # Ints and floats are ordered together, by value; other types by type name, then value.
    key = item[0]
    if isinstance(key, (int, float)):
        return ("", key)
    return (type(key).__name__, key)


class Counts(Mapping):
    """How often each symbol occurred: a mergeable accumulator of counts.

    Counts can be built from any hashable values (integers, strings, tuples), from integer
    arrays (counted with :func:`numpy.bincount`) and from string arrays (counted with
    :func:`numpy.unique`), in batches, and merged exactly: shards counted on different
    workers add up to the counts of the whole data set. Every estimator in
    :mod:`crossentropy.estimate` accepts a ``Counts``.

    Parameters
    ----------
    samples : array_like or iterable of hashable, optional
        A first batch of samples, as for :meth:`update`.
    alphabet_size : int, optional
        The number of possible symbols K, seen or not. Without it the alphabet is the set
        of observed symbols; with it, :meth:`to_array` pads with zeros up to K, which the
        estimators that depend on K (``nsb``, ``shrinkage``) need.

    Notes
    -----
    A ``Counts`` is a read-only :class:`~collections.abc.Mapping` from symbol to count
    (unseen symbols are absent). Symbols are compared as Python compares dictionary keys
    (as :class:`collections.Counter` does): equal values are one symbol, so ``1``,
    ``1.0``, ``True`` and ``numpy.int64(1)`` are counted together, whatever the path
    (lists, arrays of integers or floats, merges); a number equal to an integer is
    reported as that ``int``. Python integers of any size are kept exact. A count is at
    most 2**63 - 1.

    Examples
    --------
    >>> from crossentropy.estimate import Counts
    >>> a = Counts(["the", "cat", "the"])
    >>> b = Counts(["the", "dog"])
    >>> merged = a + b
    >>> merged["the"], merged.total, len(merged)
    (3, 5, 3)
    >>> merged == Counts(["the", "cat", "the", "the", "dog"])
    True
    >>> Counts([0, 2, 2, 5], alphabet_size=6).to_array()
    array([1, 0, 2, 0, 0, 1])
    """

    __slots__ = ("_dense", "_other", "alphabet_size")

    def __init__(self, samples: Any = None, *, alphabet_size: int | None = None) -> None:
        self._dense = np.zeros(0, dtype=np.int64)
        self._other: dict[Hashable, int] = {}
        self.alphabet_size = (
            None if alphabet_size is None else check_positive_int(alphabet_size, "alphabet_size")
        )
        if samples is not None:
            self.update(samples)

    # ------------------------------------------------------------------ filling

    def add(self, symbol: Hashable, count: int = 1) -> Counts:
        """Count ``symbol`` ``count`` more times; returns ``self``."""
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        count = int(count)
        try:
            key = _canonical(symbol)
            hash(key)
        except TypeError as error:
            raise ValueError(f"symbol must be hashable: {error}") from None
        self._add_items([(key, count)])
        return self

    def update(self, samples: Any) -> Counts:
        """Count a batch of samples (array or iterable of hashables); returns ``self``.

        Integer arrays are counted with :func:`numpy.bincount`, other arrays with
        :func:`numpy.unique`; a ``Counts`` or a mapping of counts is added in.
        """
        if isinstance(samples, Counts):
            return self._merge_in(samples)
        if isinstance(samples, Mapping):
            for symbol, count in samples.items():
                self.add(symbol, count)
            return self
        if isinstance(samples, (str, bytes)):
            raise ValueError(
                "samples must be a sequence of symbols; got a single string "
                f"{samples!r} (wrap it in a list, or pass list(text) to count characters)"
            )
        array = _as_sample_array(samples)
        if array is None:
            self._update_hashables(samples)
        else:
            self._update_array(array)
        return self

    def _update_array(self, array: np.ndarray) -> None:
        array = array.reshape(-1)
        if array.size == 0:
            return
        if array.dtype == np.bool_:
            array = array.view(np.uint8)
        if np.issubdtype(array.dtype, np.integer):
            counted = self._bincount_in_blocks(array)
            array = array[counted:]
            if array.size == 0:
                return
            dense = (array >= 0) & (array < _DENSE_LIMIT)
            if dense.any():
                self._add_bincount(np.bincount(array[dense].astype(np.int64)))
                array = array[~dense]
            # What is left is negative or at least 2**20: .tolist() gives exact Python
            # ints (uint64 above 2**63 - 1 included), already canonical.
            values, numbers_ = np.unique(array, return_counts=True)
            self._add_other(zip(values.tolist(), numbers_.tolist(), strict=True))
            return
        if np.issubdtype(array.dtype, np.floating):
            if np.isnan(array).any():
                raise ValueError(
                    f"samples contain NaN at index {int(np.flatnonzero(np.isnan(array))[0])}: "
                    "drop missing values before counting"
                )
            values, numbers_ = np.unique(array, return_counts=True)
            # A float equal to a small non-negative integer is that integer's symbol.
            dense = (values >= 0) & (values < _DENSE_LIMIT) & (values == np.floor(values))
            if dense.any():
                self._add_dense(values[dense].astype(np.int64), numbers_[dense])
            values, numbers_ = values[~dense], numbers_[~dense]
            self._add_items(zip(values.tolist(), numbers_.tolist(), strict=True))
            return
        values, numbers_ = np.unique(array, return_counts=True)
        self._add_other(zip(values.tolist(), numbers_.tolist(), strict=True))

    def _bincount_in_blocks(self, array: np.ndarray) -> int:
        """Count the leading samples that bincount can take; return how many it took.

        Block by block, the largest symbol is checked (so a huge id never makes bincount
        allocate a huge table) and the block, still in cache, is counted: the samples
        come from memory once, and narrow integers are widened a block at a time rather
        than copied whole as ``np.bincount`` does. A block with a negative or huge symbol
        stops it; the rest takes the general path.
        """
        size = array.size
        # Seen as unsigned, a negative symbol is at least 2**(bits - 1): one max checks
        # both bounds.
        bits = 8 * array.dtype.itemsize
        unsigned = array.view(np.dtype(f"u{array.dtype.itemsize}"))
        limit = _DENSE_LIMIT if array.dtype.kind == "u" else min(_DENSE_LIMIT, 1 << (bits - 1))
        tally = np.zeros(0, dtype=np.int64)
        start = 0
        while start < size:
            # A block fills the core's L2 cache, and outweighs the tally it is added to.
            stop = start + max(_BLOCK, 8 * tally.size)
            if int(unsigned[start:stop].max()) >= limit:
                break
            block = array[start:stop]
            part = np.bincount(block.astype(np.intp, copy=False), minlength=tally.size)
            if part.size > tally.size:
                part[: tally.size] += tally
                tally = part
            else:
                tally += part
            start += block.size
        self._add_bincount(tally)
        return start

    def _update_hashables(self, samples: Iterable[Any]) -> None:
        try:
            tally = collections.Counter(samples)
        except TypeError as error:
            raise ValueError(f"samples must be hashable values: {error}") from None
        # Counter has merged equal symbols already; the canonical keys route them.
        self._add_items((_canonical(s), c) for s, c in tally.items())

    def _add_items(self, items: Iterable[tuple[Hashable, int]]) -> None:
        """Add (symbol, count) pairs: canonical keys, dense ones into the table."""
        dense_symbols: list[int] = []
        dense_amounts: list[int] = []
        rest = []
        for symbol, count in items:
            key = _canonical(symbol)
            if _is_dense(key):
                dense_symbols.append(key)
                dense_amounts.append(count)
            else:
                rest.append((key, count))
        if dense_symbols:
            if max(dense_amounts) > _INT64_MAX:
                raise ValueError(f"count must be at most 2**63 - 1, got {max(dense_amounts)}")
            self._add_dense(np.array(dense_symbols), np.array(dense_amounts, dtype=np.int64))
        self._add_other(rest)

    def _add_other(self, items: Iterable[tuple[Hashable, int]]) -> None:
        """Add (canonical key, count) pairs outside the dense table: exact Python ints."""
        other = self._other
        for symbol, count in items:
            total = other.get(symbol, 0) + count
            if total > _INT64_MAX:
                raise ValueError(
                    f"the count of symbol {symbol!r} would be {total}, above 2**63 - 1"
                )
            other[symbol] = total

    def _add_bincount(self, tally: np.ndarray) -> None:
        size = min(tally.size, self._dense.size)
        if size and int(tally[:size].max()) > _INT64_MAX - int(self._dense[:size].max()):
            overflow = tally[:size] > _INT64_MAX - self._dense[:size]
            if overflow.any():
                symbol = int(np.flatnonzero(overflow)[0])
                raise ValueError(
                    f"the count of symbol {symbol} would be "
                    f"{int(tally[symbol]) + int(self._dense[symbol])}, above 2**63 - 1"
                )
        if tally.size > self._dense.size:
            tally = tally.astype(np.int64, copy=True)
            tally[: self._dense.size] += self._dense
            self._dense = tally
        else:
            self._dense[: tally.size] += tally

    def _add_dense(self, symbols: np.ndarray, amounts: np.ndarray) -> None:
        """Add counts ``amounts`` (int64, each at most 2**63 - 1) of dense ``symbols``."""
        symbols = symbols.astype(np.int64)
        amounts = amounts.astype(np.int64)
        distinct = np.unique(symbols)
        if distinct.size < symbols.size:  # repeated symbols: sum them exactly first
            summed: dict[int, int] = {}
            for symbol, amount in zip(symbols.tolist(), amounts.tolist(), strict=True):
                summed[symbol] = summed.get(symbol, 0) + amount
            if max(summed.values()) > _INT64_MAX:
                raise ValueError("a count would exceed 2**63 - 1")
            symbols = np.array(list(summed), dtype=np.int64)
            amounts = np.array(list(summed.values()), dtype=np.int64)
        tally = np.zeros(int(distinct[-1]) + 1, dtype=np.int64)
        tally[symbols] = amounts
        self._add_bincount(tally)

    def _merge_in(self, other: Counts) -> Counts:
        self._add_bincount(other._dense)
        self._add_other(other._other.items())
        return self

    def merge(self, other: Counts) -> Counts:
        """A new ``Counts`` holding the counts of both (``self + other``).

        The alphabet size is kept when both agree or only one has one.
        """
        if not isinstance(other, Counts):
            raise TypeError(f"other must be a Counts, got {type(other).__name__}")
        sizes = {s for s in (self.alphabet_size, other.alphabet_size) if s is not None}
        if len(sizes) > 1:
            raise ValueError(
                f"cannot merge Counts over alphabets of different sizes {sorted(sizes)}"
            )
        result = Counts(alphabet_size=sizes.pop() if sizes else None)
        result._merge_in(self)
        result._merge_in(other)
        return result

    def __add__(self, other: Any) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        return self.merge(other)

    def __iadd__(self, other: Any) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        return self._merge_in(other)

    def copy(self) -> Counts:
        """An independent copy."""
        return Counts(alphabet_size=self.alphabet_size)._merge_in(self)

    # ------------------------------------------------------------------ reading

    @property
    def total(self) -> int:
        """The number of samples counted, N."""
        return int(self._dense.sum()) + sum(self._other.values())

    def _dense_symbols(self) -> np.ndarray:
        return np.flatnonzero(self._dense)

    def _other_items(self) -> list[tuple[Hashable, int]]:
        items = [(s, c) for s, c in self._other.items() if c]
        try:
            return sorted(items, key=_sort_key)
        except TypeError:
            return sorted(items, key=lambda item: (type(item[0]).__name__, repr(item[0])))

    def __getitem__(self, symbol: Hashable) -> int:
        try:
            key = _canonical(symbol)
        except ValueError:  # NaN: never counted
            raise KeyError(symbol) from None
        if _is_dense(key):
            if key < self._dense.size and self._dense[key]:
                return int(self._dense[key])
            raise KeyError(symbol)
        if self._other.get(key, 0):
            return self._other[key]
        raise KeyError(symbol)

    def __iter__(self) -> Iterator[Hashable]:
        yield from self._dense_symbols().tolist()
        yield from (s for s, _ in self._other_items())

    def __len__(self) -> int:
        """The observed support: how many distinct symbols were seen."""
        return int(np.count_nonzero(self._dense)) + sum(1 for c in self._other.values() if c)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counts):
            return NotImplemented
        a, b = self._dense, other._dense
        size = max(a.size, b.size)
        if not np.array_equal(np.pad(a, (0, size - a.size)), np.pad(b, (0, size - b.size))):
            return False
        return {k: v for k, v in self._other.items() if v} == {
            k: v for k, v in other._other.items() if v
        }

    __hash__ = None  # type: ignore[assignment]  # mutable

    def symbols(self) -> list[Hashable]:
        """The observed symbols, in the order of :meth:`to_array` (integers first)."""
        return list(self)

    def to_array(self) -> np.ndarray:
        """The counts as an int64 vector, the form every estimator works on.

        Without ``alphabet_size``: the counts of the observed symbols, in the order of
        :meth:`symbols`. With it: a vector of length K, where the integer symbol ``k``
        (when all symbols are integers below K) sits at index ``k`` and the unseen symbols
        are zeros.
        """
        other = self._other_array()
        K = self.alphabet_size
        if K is not None:
            seen = len(self)
            if seen > K:
                raise ValueError(
                    f"alphabet_size {K} is smaller than the {seen} distinct symbols counted"
                )
            if other.size == 0 and self._dense.size <= K:
                return np.pad(self._dense, (0, K - self._dense.size))
        observed = np.concatenate([self._dense[self._dense > 0], other])
        if K is not None:
            observed = np.pad(observed, (0, K - observed.size))
        return observed

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = self.to_array()
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        items = list(zip(self.symbols()[:6], self._observed_array()[:6].tolist(), strict=False))
        body = ", ".join(f"{s!r}: {c}" for s, c in items)
        more = ", ..." if len(self) > 6 else ""
        size = "" if self.alphabet_size is None else f", alphabet_size={self.alphabet_size}"
        return f"Counts({{{body}{more}}}, total={self.total}{size})"

    def _observed_array(self) -> np.ndarray:
        """The counts of the observed symbols only, in the order of :meth:`symbols`."""
        return np.concatenate([self._dense[self._dense > 0], self._other_array()])

    def _other_array(self) -> np.ndarray:
        return np.array([c for _, c in self._other_items()], dtype=np.int64)


def count_vector(counts: Counts, name: str) -> np.ndarray:
    """``counts.to_array()``, with errors naming the argument ``name``."""
    try:
        return counts.to_array()
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _as_sample_array(samples: Any) -> np.ndarray | None:
    """``samples`` as a NumPy array of scalars, or None to count them as hashables."""
    if isinstance(samples, np.ndarray):
        array = samples
    elif isinstance(samples, (list, tuple)):
        if not samples:
            return np.zeros(0, dtype=np.int64)
        first = type(samples[0])
        # A list of one scalar type is an array; anything else (tuples, mixed types,
        # which np.asarray would turn into strings) is counted value by value.
        if not all(type(s) is first for s in samples) or first not in (int, str, float, bool):
            return None
        if first is int:
            # Python ints beyond int64 would become uint64, float64 (mixed with negative
            # ones: 2**53 + 1 and 2**53 become one symbol) or object: count those
            # exactly, value by value.
            try:
                return np.asarray(samples, dtype=np.int64)
            except OverflowError:
                return None
        array = np.asarray(samples)
    elif hasattr(samples, "__array__") or hasattr(samples, "__array_namespace__"):
        array = np.asarray(samples)
    else:
        return None
    if array.dtype == object:
        return None
    if array.dtype.kind not in "biufUS":
        raise ValueError(f"samples of dtype {array.dtype} cannot be counted")
    return array


def counts(
    samples: Any, *, axis: int | None = None, alphabet_size: int | None = None
) -> Counts | np.ndarray:
    """Count the symbols in ``samples``.

    Parameters
    ----------
    samples : array_like or iterable of hashable
        Integers, strings or any hashable values. Non-negative integer arrays are counted
        at :func:`numpy.bincount` speed.
    axis : int, optional
        None (the default) counts all samples together into a :class:`Counts`. An integer
        counts every slice along ``axis`` separately and returns an array of counts.
    alphabet_size : int, optional
        The number of possible symbols K (see :class:`Counts`).

    Returns
    -------
    Counts or numpy.ndarray
        With ``axis=None`` a :class:`Counts`. With an axis, an int64 array of shape
        ``samples.shape`` without ``axis`` plus ``(K,)``: for non-negative integer samples
        whose largest value is small enough for that table (at most 16 counts per sample,
        or 2**24 in all), column ``k`` counts the symbol ``k`` and K is ``alphabet_size``
        or the largest symbol plus one; for other samples (``[[0, 2**40]]`` included)
        the columns follow the sorted distinct values (:func:`numpy.unique`), padded with
        zeros up to ``alphabet_size``.

    Raises
    ------
    ValueError
        When the table would exceed that size (many rows over many distinct values, or
        a huge ``alphabet_size``): count the rows one at a time then.

    Examples
    --------
    >>> import numpy as np
    >>> from crossentropy.estimate import counts
    >>> counts(np.array([3, 1, 3, 3])).to_array()
    array([1, 3])
    >>> counts(np.array([[0, 1, 1], [2, 2, 2]]), axis=1)
    array([[1, 2, 0],
           [0, 0, 3]])
    """
    if axis is None:
        return Counts(samples, alphabet_size=alphabet_size)
    array = np.asarray(samples)
    if array.ndim == 0:
        raise ValueError("samples must have at least one axis when axis is given")
    axis = check_axis(axis, array.ndim)
    array = np.moveaxis(array, axis, -1)
    if array.shape[-1] == 0:
        raise ValueError("samples are empty along axis: there is nothing to count")
    if array.dtype.kind not in "biufUS":
        raise ValueError(f"samples of dtype {array.dtype} cannot be counted along an axis")
    batch = array.shape[:-1]
    rows = int(np.prod(batch, dtype=np.int64))
    # Columns indexed by the symbol itself only while that table stays within a few
    # times the data's size: [[0, 2**40]] would otherwise ask for 8 TiB.
    bound = max(_TABLE_FACTOR * array.size, _TABLE_MIN)
    if array.dtype.kind in "biu" and array.min() >= 0 and rows * (int(array.max()) + 1) <= bound:
        symbols = array.reshape(rows, -1).astype(np.int64, copy=False)
        K = int(symbols.max()) + 1
    else:
        if array.dtype.kind == "f" and np.isnan(array).any():
            raise ValueError("samples contain NaN: drop missing values before counting")
        _, inverse = np.unique(array.reshape(-1), return_inverse=True)
        symbols = inverse.reshape(rows, -1).astype(np.int64)
        K = int(symbols.max()) + 1
    if alphabet_size is not None:
        alphabet_size = check_positive_int(alphabet_size, "alphabet_size")
        if alphabet_size < K:
            raise ValueError(f"alphabet_size {alphabet_size} is smaller than the {K} symbols")
        K = alphabet_size
    if rows * K > bound:
        what = "alphabet_size" if alphabet_size is not None else "samples"
        raise ValueError(
            f"{what}: counting {rows} rows over {K} symbols needs a table of {rows * K} "
            f"counts, more than {bound} (16 per sample); count the rows one at a time "
            "with axis=None"
        )
    offsets = (np.arange(rows, dtype=np.int64) * K)[:, None]
    flat = np.bincount((symbols + offsets).reshape(-1), minlength=rows * K)
    return flat.reshape(*batch, K).astype(np.int64, copy=False)
