// A walflow filter written in JavaScript, built into a component with componentize-js.
//
// Config: {"drop_ops": ["d"], "drop_tables": ["public.audit_log"]} (both optional).
// Drops events whose op letter is in `drop_ops` or whose `schema.table` is in `drop_tables`.
//
// Build (scripts/build-plugins does this):
//   componentize-js filter.js --wit ../../wit/walflow-plugin.wit --world-name filter \
//     -d http fetch-event -o js_filter.wasm
// `-d http fetch-event` leaves out WASI HTTP, which walflow's sandbox does not provide.

const OP_LETTERS = {
  create: "c",
  update: "u",
  delete: "d",
  read: "r",
  truncate: "t",
  message: "m",
};

let dropOps = new Set();
let dropTables = new Set();

export const filterApi = {
  // `result<needs, string>`: return the value, throw a string to fail.
  init(config) {
    let parsed;
    try {
      parsed = JSON.parse(config);
    } catch (e) {
      throw `js-filter config is not JSON: ${e}`;
    }
    const unknown = Object.keys(parsed).filter((k) => k !== "drop_ops" && k !== "drop_tables");
    if (unknown.length > 0) {
      throw `js-filter config: unknown keys ${unknown.join(", ")}`;
    }
    dropOps = new Set(parsed.drop_ops ?? []);
    dropTables = new Set(parsed.drop_tables ?? []);
    // Only the op and the table are read: the host can leave the rows out.
    return { rows: false };
  },

  // Which columns of `table` to send (their positions); undefined sends them all. This filter
  // reads no row, so init already asked for none.
  columns(_table) {
    return undefined;
  },

  // A dropped table is dropped whatever the op, and without dropped ops every other table is
  // kept: the host then settles such batches without calling `filter`. undefined leaves the
  // decision to `filter`, event by event.
  keepTable(_db, table) {
    if (dropTables.has(`${table.schema}.${table.table}`)) return false;
    return dropOps.size > 0 ? undefined : true;
  },

  // One boolean per event: true keeps it.
  filter(batch) {
    return batch.events.map((event) => {
      const relation = batch.relations[event.relation];
      const table = relation ? `${relation.schema}.${relation.table}` : "";
      return !dropOps.has(OP_LETTERS[event.op]) && !dropTables.has(table);
    });
  },
};
