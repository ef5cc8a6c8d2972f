"""A walflow filter written in Python, built into a component with componentize-py.

Config: {"drop_ops": ["d"], "drop_tables": ["public.audit_log"]} (both optional).
Drops events whose op letter is in `drop_ops` or whose `schema.table` is in `drop_tables`.

Build: componentize-py -d ../../wit -w walflow:plugin/filter@0.2.1 componentize app -o python_filter.wasm
(scripts/build-plugins does this).
"""

import json
from typing import List, Optional

from wit_world import exports
from wit_world.imports import types
from componentize_py_types import Err

OP_LETTERS = {
    types.Op.CREATE: "c",
    types.Op.UPDATE: "u",
    types.Op.DELETE: "d",
    types.Op.READ: "r",
    types.Op.TRUNCATE: "t",
    types.Op.MESSAGE: "m",
}

drop_ops = set()
drop_tables = set()


class FilterApi(exports.FilterApi):
    def init(self, config: str) -> types.Needs:
        global drop_ops, drop_tables
        try:
            parsed = json.loads(config)
        except ValueError as e:
            raise Err(f"python-filter config is not JSON: {e}")
        unknown = set(parsed) - {"drop_ops", "drop_tables"}
        if unknown:
            raise Err(f"python-filter config: unknown keys {sorted(unknown)}")
        drop_ops = set(parsed.get("drop_ops", []))
        drop_tables = set(parsed.get("drop_tables", []))
        # Only the op and the table matter here: the host may leave the rows out.
        return types.Needs(rows=False)

    def columns(self, table: types.Relation) -> Optional[List[int]]:
        # Which columns of `table` to send (their positions); None sends them all. This filter
        # reads no row, so init already asked for none.
        return None

    def keep_table(self, db: str, table: types.Relation) -> Optional[bool]:
        # A dropped table is dropped whatever the op, and without dropped ops every other table
        # is kept: the host then settles such batches without calling `filter`. None leaves
        # the decision to `filter`, event by event.
        if f"{table.schema}.{table.table}" in drop_tables:
            return False
        return None if drop_ops else True

    def filter(self, batch: types.Batch) -> List[bool]:
        names = [f"{r.schema}.{r.table}" for r in batch.relations]
        return [
            OP_LETTERS[e.op] not in drop_ops and names[e.relation] not in drop_tables
            for e in batch.events
        ]
