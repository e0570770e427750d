"""Configurations held as columns: one numpy array per Config field, a Config made only for a row that is read.

Why: a forked worker's rows cross a pipe pickled (llmsim.executor.ForkExecutor, search.Rows.__reduce__). The
70B training plan keeps 202,347 rows per hardware choice; their Config objects took 1.2 s to pickle and 2.8 s
to unpickle (9 MB), their fields as columns 0.04 s and 0.05 s. The planner reads a few hundred rows one by
one (the best, their neighbours, one per distinct split or precision) and the rest column by column
(Rows.field), so the parent never needs the other Configs.

`ChainedConfigs` holds the candidates a search enumerates the same way from the start: a Config per chain (its
first member) and the micro-batch size and count per row, which is all that varies along a chain; a priced
table's kept rows then become ConfigColumns (search.table_rows) without a Config made per row on the way.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import overload

import numpy as np

from llmsim.planner.space import Config, make_config

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(Config))  # Config's fields, in its order


class LazyConfigs(Sequence[Config]):
    """A sequence of Configs made one at a time as they are read (`_at`), from columns held by the subclass:
    indexing (negative too), slices (a list) and iteration, once for ConfigColumns and ChainedConfigs."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _at(self, i: int) -> Config:
        """Configuration i, -len(self) <= i < len(self)."""
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> Config: ...

    @overload
    def __getitem__(self, i: slice) -> list[Config]: ...

    def __getitem__(self, i: int | slice) -> Config | list[Config]:
        n = len(self)
        if isinstance(i, slice):
            return [self._at(j) for j in range(*i.indices(n))]
        if not -n <= i < n:
            raise IndexError(f"configuration {i} of {n}")
        return self._at(i)

    def __iter__(self) -> Iterator[Config]:
        return (self._at(i) for i in range(len(self)))


class ConfigColumns(LazyConfigs):
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

    def _at(self, i: int) -> Config:
        # numpy scalars (int64, bool_) back to Python's int and bool: names, YAML and equality see the same values
        return make_config(*(v.item() if isinstance(v := column[i], np.generic) else v for column in self._columns))


_NUMERIC_FIELDS = {"int": np.int64, "bool": np.bool_}


def config_columns(configs: Sequence[Config], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Config attributes `names` of each configuration as numpy arrays: int64 or bool for the fields annotated so
    (the Python values exactly), objects for any other (ConfigColumns' types). Several are read in one pass over
    the configurations (one attrgetter of them all per configuration, the tuples transposed: 2x sooner than a
    pass per name)."""
    if len(names) == 1:
        columns: list[Sequence] = [list(map(operator.attrgetter(names[0]), configs))]
    else:
        columns = list(zip(*map(operator.attrgetter(*names), configs))) or [()] * len(names)
    out = {}
    for name, values in zip(names, columns):
        dtype = _NUMERIC_FIELDS.get(Config.__annotations__.get(name, ""), object)
        out[name] = (np.fromiter(values, dtype=object, count=len(values)) if dtype is object
                     else np.array(values, dtype=dtype))
    return out


# The Config fields that vary along a chain (space.chains: a group's configurations that differ only in the
# micro-batch, and so in the micro-batch count); a chain's members share every other field.
CHAIN_VARIES = ("micro_batch", "microbatches")
_MICRO_BATCH_AT, _MICROBATCHES_AT = (CONFIG_FIELDS.index(name) for name in CHAIN_VARIES)
_every_field = operator.attrgetter(*CONFIG_FIELDS)


class ChainedConfigs(LazyConfigs):
    """Configurations laid out as chains (space.chain_heads: a chain's members differ only in the micro-batch size
    and count, CHAIN_VARIES): each chain's first member as a Config (`heads`), and per row its chain
    (`chain_of`), micro-batch size and micro-batch count (int64 columns), the rows of a chain one after the
    other. Row i is made only when read (make_config: equal to, and hashing as, the Config with the head's fields
    and the row's two).

    Why: the 70B training plan enumerates ~340,000 candidates per hardware choice in ~50,000 chains. A Config
    for each took ~0.4 s to make and as long again to read back into columns (planner.table, search.table_rows);
    here a field the chain members share is read once per chain (`columns`), the two that vary are columns
    from the start, and a Config is made for the few hundred rows the planner reads one by one."""

    def __init__(self, heads: Sequence[Config], chain_of: np.ndarray, micro_batch: np.ndarray,
                 microbatches: np.ndarray) -> None:
        self.heads = heads
        self.chain_of = chain_of
        self.micro_batch = micro_batch
        self.microbatches = microbatches

    @classmethod
    def of_chains(cls, heads: Sequence[Config], layouts: Sequence[Sequence[tuple[int, int]]]) -> "ChainedConfigs":
        """Chains given as their heads and, per chain, the (micro_batch, micro-batch count) of every member in
        order, the first the head's (space.chain_heads). The layouts lists recur (space._shapes keeps one per
        group shape): each distinct list is made an array once."""
        arrays: dict[int, np.ndarray] = {}
        per_chain = []
        for layout in layouts:
            a = arrays.get(id(layout))
            if a is None:
                a = arrays[id(layout)] = np.array(layout, dtype=np.int64).reshape(-1, 2)
            per_chain.append(a)
        flat = np.concatenate(per_chain) if per_chain else np.zeros((0, 2), dtype=np.int64)
        lengths = np.fromiter(map(len, per_chain), dtype=np.int64, count=len(per_chain))
        return cls(heads, np.repeat(np.arange(len(heads)), lengths), flat[:, 0].copy(), flat[:, 1].copy())

    @classmethod
    def of_configs(cls, configs: Sequence[Config]) -> "ChainedConfigs":
        """Any configurations, each a chain of its own."""
        if isinstance(configs, ChainedConfigs):
            return configs
        varies = config_columns(configs, CHAIN_VARIES)
        return cls(list(configs), np.arange(len(configs)), varies["micro_batch"], varies["microbatches"])

    def lengths(self) -> np.ndarray:
        """How many rows each chain has (0 for a chain none of whose rows is here, as after `take`)."""
        return np.bincount(self.chain_of, minlength=len(self.heads))

    def take(self, at: np.ndarray) -> "ChainedConfigs":
        """The rows at `at` (positions), in that order, over the same heads."""
        return ChainedConfigs(self.heads, self.chain_of[at], self.micro_batch[at], self.microbatches[at])

    def head_column(self, name: str) -> np.ndarray:
        """Config field `name` of each chain's head (config_columns' types): a field the members share."""
        return config_columns(self.heads, (name,))[name]

    def columns(self, names: Sequence[str] = CONFIG_FIELDS) -> dict[str, np.ndarray]:
        """Config fields `names` over the rows (config_columns' types, as ConfigColumns takes them): a shared
        one read once per chain from its head and repeated along it, the micro-batch size and count the rows'."""
        shared = [name for name in names if name not in CHAIN_VARIES]
        out = {name: column[self.chain_of] for name, column in config_columns(self.heads, shared).items()}
        for name in names:
            if name in CHAIN_VARIES:
                out[name] = getattr(self, name)
        return out

    def names(self) -> np.ndarray:
        """Each row's Config.name (objects): each chain's parts around the micro-batch
        (Config.name_around_micro_batch) built once and joined with each row's micro-batch, where Config.name
        row by row built every part of ~400,000 names of the 70B plan."""
        around = [c.name_around_micro_batch() for c in self.heads]
        before = np.fromiter((b for b, _ in around), dtype=object, count=len(around))
        after = np.fromiter((a for _, a in around), dtype=object, count=len(around))
        values, which = np.unique(self.micro_batch, return_inverse=True)  # few distinct micro-batches: each once
        text = np.array([str(v) for v in values.tolist()], dtype=object)[which.reshape(-1)]
        return before[self.chain_of] + text + after[self.chain_of]  # object arrays: Python's str + per row

    def __len__(self) -> int:
        return len(self.chain_of)

    def _at(self, i: int) -> Config:
        values = list(_every_field(self.heads[int(self.chain_of[i])]))
        values[_MICRO_BATCH_AT], values[_MICROBATCHES_AT] = int(self.micro_batch[i]), int(self.microbatches[i])
        return make_config(*values)
