"""Configurations held as columns: one numpy array per Config field, a Config made only for a row that is read.

Why: a forked worker's rows cross a pipe pickled (llmsim.executor.ForkExecutor, search.Rows.__reduce__). The
70B training plan keeps 202,347 rows per hardware choice; their Config objects took 1.2 s to pickle and 2.8 s
to unpickle (9 MB), their fields as columns 0.04 s and 0.05 s. The planner reads a few hundred rows one by
one (the best, their neighbours, one per distinct split or precision) and the rest column by column
(Rows.field), so the parent never needs the other Configs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import overload

import numpy as np

from llmsim.planner.space import Config, make_config

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(Config))  # Config's fields, in its order


class ConfigColumns(Sequence[Config]):
    """A read-only sequence of Configs over `columns`: every Config field (CONFIG_FIELDS) as a numpy array of
    one length; an int or bool field as int64 or bool, any other as objects holding the Python values (as
    search.Rows.field reads them). Row i is `make_config` of the row's values as Python objects: equal to,
    and hashing as, the Config the columns were read from (a new object at each read)."""

    def __init__(self, columns: Mapping[str, np.ndarray]) -> None:
        missing = [name for name in CONFIG_FIELDS if name not in columns]
        if missing:
            raise ValueError(f"ConfigColumns needs every Config field; missing: {', '.join(missing)}")
        self._columns = [columns[name] for name in CONFIG_FIELDS]
        self._n = len(self._columns[0])

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Config: ...

    @overload
    def __getitem__(self, i: slice) -> list[Config]: ...

    def __getitem__(self, i: int | slice) -> Config | list[Config]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(f"configuration {i} of {self._n}")
        # numpy scalars (int64, bool_) back to Python's int and bool: names, YAML and equality see the same values
        return make_config(*(v.item() if isinstance(v := column[i], np.generic) else v for column in self._columns))

    def __iter__(self) -> Iterator[Config]:
        return (self[i] for i in range(self._n))
