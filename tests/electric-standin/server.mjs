#!/usr/bin/env node
// An Electric stand-in: a small HTTP server that answers Electric's shape API (`/v1/shape`)
// well enough for the real `@electric-sql/client` (ShapeStream, requestSnapshot,
// fetchSnapshot), from an in-memory table. It lets edgeguard's tests (and a browser test) put
// jwt-shape in front of "Electric" without Postgres or Electric itself.
//
//   node tests/electric-standin/server.mjs --port 3000 [--secret S] [--live-hold-ms 20000]
//
// Prints `electric-standin listening on 127.0.0.1:<port>` once it accepts connections
// (`--port 0` picks a free port). What it answers:
//
// - GET /v1/shape?table=items&offset=-1 (log=full): the rows as `insert` messages, then an
//   `up-to-date` control message; with log=changes_only only the `up-to-date` message. Headers
//   `electric-handle`, `electric-offset`, `electric-schema`, `electric-cursor`,
//   `electric-up-to-date`, and `access-control-expose-headers` naming them (CORS: `*`).
// - GET ...&live=true: holds the request `--live-hold-ms` (default 20000, Electric's long poll),
//   then answers `[up-to-date]` (nothing ever changes here).
// - Subset snapshots: GET with `subset__*` parameters, or POST with a JSON body holding
//   `where`, `params`, `order_by`, `limit`, `offset`: `{"metadata": {...}, "data": [...]}`.
//   The subset's `where` and `order_by` are really applied to the table, over *all* its
//   columns (as Electric did before `queryable_columns`), and the rows are projected to the
//   shape's `columns`. Supported: column names (quoted or not), 'strings', numbers, $n, TRUE,
//   FALSE, NULL, = <> != < <= > >=, [NOT] LIKE/ILIKE, IS [NOT] NULL, IN (...), = ANY($n) with
//   a Postgres array literal, AND, OR, NOT, parentheses; ORDER BY col [ASC|DESC], ...
// - `secret`: with `--secret S` every /v1/shape request must carry `secret=S` (else 401), as
//   Electric in secure mode.
// - GET /__standin/requests: every /v1/shape request received so far, as JSON
//   `[{"method", "url", "body", "complete"}]` (logged when its headers arrive; `complete` once
//   its body was read whole, `body` is null until then), so a test can show what reached
//   "Electric"; DELETE /__standin/requests clears it.
//
// The table `items` (primary key `id`): id int4, title text, owner text, priority int4,
// salary int4 (the column a token is meant to hide). Only `items` exists (404 otherwise).

import http from "node:http";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const PORT = Number(arg("port", "3000"));
const SECRET = arg("secret", undefined);
const LIVE_HOLD_MS = Number(arg("live-hold-ms", "20000"));
const HANDLE = "standin-items-1";
const OFFSET = "0_0";

const SCHEMA = {
  id: { type: "int4", pk_index: 0, not_null: true },
  title: { type: "text" },
  owner: { type: "text" },
  priority: { type: "int4" },
  salary: { type: "int4" },
};

const ROWS = [
  { id: 1, title: "plan the launch", owner: "alice", priority: 3, salary: 120000 },
  { id: 2, title: "write the docs", owner: "bob", priority: 1, salary: 85000 },
  { id: 3, title: "fix the build", owner: "alice", priority: 2, salary: 120000 },
  { id: 4, title: "ship it", owner: "carol", priority: 3, salary: 150000 },
  { id: 5, title: null, owner: "dave", priority: null, salary: 70000 },
];

const EXPOSE = [
  "electric-handle",
  "electric-offset",
  "electric-schema",
  "electric-cursor",
  "electric-up-to-date",
];

const requests = [];

// ------------------------------------------------------------------ a tiny SQL evaluator

function tokenize(sql) {
  const out = [];
  let i = 0;
  while (i < sql.length) {
    const c = sql[i];
    if (/\s/.test(c)) { i++; continue; }
    if (c === "'") {
      let s = "";
      i++;
      for (;;) {
        if (i >= sql.length) throw new Error("unterminated string");
        if (sql[i] === "'") {
          if (sql[i + 1] === "'") { s += "'"; i += 2; continue; }
          i++; break;
        }
        s += sql[i++];
      }
      out.push({ t: "str", v: s });
      continue;
    }
    if (c === '"') {
      let s = "";
      i++;
      for (;;) {
        if (i >= sql.length) throw new Error("unterminated identifier");
        if (sql[i] === '"') {
          if (sql[i + 1] === '"') { s += '"'; i += 2; continue; }
          i++; break;
        }
        s += sql[i++];
      }
      out.push({ t: "id", v: s });
      continue;
    }
    if (c === "$") {
      const m = /^\$(\d+)/.exec(sql.slice(i));
      if (!m) throw new Error("bad parameter");
      out.push({ t: "param", v: m[1] });
      i += m[0].length;
      continue;
    }
    const num = /^\d+(\.\d+)?/.exec(sql.slice(i));
    if (num) { out.push({ t: "num", v: Number(num[0]) }); i += num[0].length; continue; }
    const word = /^[A-Za-z_][A-Za-z0-9_]*/.exec(sql.slice(i));
    if (word) {
      const w = word[0].toLowerCase();
      const kw = ["and", "or", "not", "is", "null", "true", "false", "like", "ilike", "in", "any", "asc", "desc", "nulls", "first", "last"];
      out.push(kw.includes(w) ? { t: "kw", v: w } : { t: "id", v: w });
      i += word[0].length;
      continue;
    }
    const op = /^(<>|!=|<=|>=|=|<|>|\(|\)|,|::)/.exec(sql.slice(i));
    if (op) { out.push({ t: "op", v: op[0] }); i += op[0].length; continue; }
    throw new Error(`unexpected character ${JSON.stringify(c)}`);
  }
  return out;
}

function pgArray(text) {
  const inner = String(text).trim().replace(/^\{/, "").replace(/\}$/, "");
  return inner === "" ? [] : inner.split(",").map((s) => s.trim().replace(/^"(.*)"$/, "$1"));
}

// Parses a condition into a function of a row.
function compileWhere(sql, params) {
  const toks = tokenize(sql);
  let p = 0;
  const peek = () => toks[p];
  const take = (t, v) => {
    const k = toks[p];
    if (!k || k.t !== t || (v !== undefined && k.v !== v)) {
      throw new Error(`expected ${v ?? t} at token ${p}`);
    }
    p++;
    return k;
  };
  const is = (t, v) => toks[p] && toks[p].t === t && (v === undefined || toks[p].v === v);
  const param = (n) => {
    if (!(n in params)) throw new Error(`no value for $${n}`);
    return params[n];
  };
  function primary() {
    const k = peek();
    if (!k) throw new Error("unexpected end");
    if (is("op", "(")) { p++; const e = or(); take("op", ")"); return e; }
    p++;
    if (k.t === "id") {
      if (!(k.v in SCHEMA)) throw new Error(`unknown column ${k.v}`);
      return (row) => row[k.v];
    }
    if (k.t === "str") return () => k.v;
    if (k.t === "num") return () => k.v;
    if (k.t === "param") return () => param(k.v);
    if (k.t === "kw" && k.v === "null") return () => null;
    if (k.t === "kw" && k.v === "true") return () => true;
    if (k.t === "kw" && k.v === "false") return () => false;
    throw new Error(`unexpected ${k.v}`);
  }
  const cmp = (a, b) => {
    if (a === null || a === undefined || b === null || b === undefined) return null;
    if (typeof a === "number" || typeof b === "number") { a = Number(a); b = Number(b); }
    return a < b ? -1 : a > b ? 1 : 0;
  };
  const like = (s, pat, ci) => {
    if (s === null || pat === null) return null;
    const re = "^" + String(pat).replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/%/g, ".*").replace(/_/g, ".") + "$";
    return new RegExp(re, ci ? "is" : "s").test(String(s));
  };
  function comparison() {
    const left = primary();
    if (is("kw", "is")) {
      p++;
      const neg = is("kw", "not") && (p++, true);
      take("kw", "null");
      return (row) => (left(row) === null || left(row) === undefined) !== neg;
    }
    let neg = false;
    if (is("kw", "not")) { p++; neg = true; }
    if (is("kw", "like") || is("kw", "ilike")) {
      const ci = toks[p++].v === "ilike";
      const right = primary();
      return (row) => { const r = like(left(row), right(row), ci); return r === null ? null : r !== neg; };
    }
    if (is("kw", "in")) {
      p++;
      take("op", "(");
      const items = [primary()];
      while (is("op", ",")) { p++; items.push(primary()); }
      take("op", ")");
      return (row) => items.some((it) => cmp(left(row), it(row)) === 0) !== neg;
    }
    if (neg) throw new Error("NOT must be followed by LIKE, ILIKE or IN here");
    if (is("op") && ["=", "<>", "!=", "<", "<=", ">", ">="].includes(peek().v)) {
      const op = toks[p++].v;
      if (op === "=" && is("kw", "any")) {
        p++;
        take("op", "(");
        const arr = primary();
        take("op", ")");
        return (row) => pgArray(arr(row)).some((v) => cmp(left(row), v) === 0);
      }
      const right = primary();
      return (row) => {
        const c = cmp(left(row), right(row));
        if (c === null) return null;
        return { "=": c === 0, "<>": c !== 0, "!=": c !== 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0 }[op];
      };
    }
    return (row) => left(row) === true;
  }
  function not() {
    if (is("kw", "not")) { p++; const e = not(); return (row) => { const v = e(row); return v === null ? null : !v; }; }
    return comparison();
  }
  function and() {
    let e = not();
    while (is("kw", "and")) { p++; const l = e, r = not(); e = (row) => l(row) === true && r(row) === true; }
    return e;
  }
  function or() {
    let e = and();
    while (is("kw", "or")) { p++; const l = e, r = and(); e = (row) => l(row) === true || r(row) === true; }
    return e;
  }
  const e = or();
  if (p !== toks.length) throw new Error(`unexpected ${toks[p].v}`);
  return (row) => e(row) === true;
}

function compileOrderBy(sql) {
  const keys = [];
  const toks = tokenize(sql);
  let p = 0;
  while (p < toks.length) {
    const k = toks[p++];
    if (k.t !== "id" || !(k.v in SCHEMA)) throw new Error(`order_by: unknown column ${k.v}`);
    let dir = 1;
    if (toks[p] && toks[p].t === "kw" && (toks[p].v === "asc" || toks[p].v === "desc")) {
      dir = toks[p++].v === "desc" ? -1 : 1;
    }
    if (toks[p] && toks[p].t === "kw" && toks[p].v === "nulls") p += 2;
    keys.push([k.v, dir]);
    if (toks[p] && toks[p].t === "op" && toks[p].v === ",") p++;
    else if (p < toks.length) throw new Error("order_by: expected ','");
  }
  return (a, b) => {
    for (const [col, dir] of keys) {
      const x = a[col], y = b[col];
      if (x === y) continue;
      if (x === null) return dir;
      if (y === null) return -dir;
      return (x < y ? -1 : 1) * dir;
    }
    return 0;
  };
}

// ------------------------------------------------------------------------------ answers

function parseColumns(param) {
  if (!param) return Object.keys(SCHEMA);
  const cols = [];
  const re = /"((?:[^"]|"")*)"|([^,]+)/g;
  let m;
  while ((m = re.exec(param))) cols.push(m[1] !== undefined ? m[1].replace(/""/g, '"') : m[2].toLowerCase());
  for (const c of cols) if (!(c in SCHEMA)) throw new Error(`unknown column ${c}`);
  if (!cols.includes("id")) cols.unshift("id");
  return cols;
}

function message(row, columns, headers) {
  const value = {};
  for (const c of columns) value[c] = row[c] === null ? null : String(row[c]);
  return { key: `"public"."items"/"${row.id}"`, value, headers };
}

function schemaFor(columns) {
  return Object.fromEntries(columns.map((c) => [c, SCHEMA[c]]));
}

function send(res, status, headers, body) {
  res.writeHead(status, {
    "content-type": "application/json",
    "access-control-allow-origin": "*",
    "access-control-expose-headers": EXPOSE.join(", "),
    "cache-control": "no-store",
    ...headers,
  });
  res.end(typeof body === "string" ? body : JSON.stringify(body));
}

function shapeHeaders(columns) {
  return {
    "electric-handle": HANDLE,
    "electric-offset": OFFSET,
    "electric-schema": JSON.stringify(schemaFor(columns)),
    "electric-cursor": String(Math.floor(Date.now() / 20000)),
  };
}

function subsetFrom(url, body) {
  const q = url.searchParams;
  const subset = {};
  for (const k of ["where", "params", "order_by", "limit", "offset"]) {
    if (q.has(`subset__${k}`)) subset[k] = q.get(`subset__${k}`);
  }
  if (body) Object.assign(subset, body);
  return Object.keys(subset).length > 0 ? subset : null;
}

function snapshot(subset, columns) {
  let params = subset.params ?? {};
  if (typeof params === "string") params = JSON.parse(params);
  let rows = ROWS.slice();
  if (subset.where) rows = rows.filter(compileWhere(subset.where, params));
  if (subset.order_by) rows.sort(compileOrderBy(subset.order_by));
  const offset = Number(subset.offset ?? 0);
  const limit = subset.limit === undefined || subset.limit === null ? rows.length : Number(subset.limit);
  rows = rows.slice(offset, offset + limit);
  const mark = 1 + Math.floor(Math.random() * 1e6);
  return {
    metadata: { xmin: "100", xmax: "101", xip_list: [], snapshot_mark: mark, database_lsn: "0" },
    data: rows.map((r) => message(r, columns, { operation: "insert", snapshot_mark: mark })),
  };
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString("utf8");
}

async function handle(req, res) {
  const url = new URL(req.url, "http://standin");
  if (url.pathname === "/__standin/requests") {
    if (req.method === "DELETE") requests.length = 0;
    return send(res, 200, {}, requests);
  }
  if (req.method === "OPTIONS") {
    res.writeHead(204, {
      "access-control-allow-origin": "*",
      "access-control-allow-methods": "GET, POST, HEAD, DELETE, OPTIONS",
      "access-control-allow-headers": "authorization, content-type",
      "access-control-max-age": "600",
    });
    return res.end();
  }
  if (url.pathname !== "/v1/shape") return send(res, 404, {}, { message: "not found" });
  // logged on arrival: a request whose body never comes (a proxy refused it and reset the
  // stream) stays `complete: false` with no body
  const entry = { method: req.method, url: req.url, body: null, complete: false };
  requests.push(entry);
  const raw = req.method === "POST" ? await readBody(req) : "";
  entry.body = raw;
  entry.complete = true;
  const q = url.searchParams;
  if (SECRET !== undefined && q.get("secret") !== SECRET) {
    return send(res, 401, {}, { message: "Unauthorized - Invalid API secret" });
  }
  if (q.get("table") !== "items" && q.get("table") !== "public.items") {
    return send(res, 400, {}, { message: "Invalid request", errors: { table: ["unknown table"] } });
  }
  let columns;
  let body = null;
  try {
    columns = parseColumns(q.get("columns"));
    if (raw !== "") body = JSON.parse(raw);
  } catch (e) {
    return send(res, 400, {}, { message: "Invalid request", errors: { request: [String(e.message)] } });
  }
  const headers = shapeHeaders(columns);
  const subset = subsetFrom(url, body);
  if (subset) {
    try {
      return send(res, 200, headers, snapshot(subset, columns));
    } catch (e) {
      return send(res, 400, {}, { message: "Invalid request", errors: { subset: [String(e.message)] } });
    }
  }
  if (q.get("live") === "true") {
    const timer = setTimeout(() => {
      send(res, 200, { ...headers, "electric-up-to-date": "" }, [{ headers: { control: "up-to-date", global_last_seen_lsn: "0" } }]);
    }, LIVE_HOLD_MS);
    req.on("close", () => clearTimeout(timer));
    return;
  }
  const initial = q.get("offset") === "-1" && q.get("log") !== "changes_only";
  const messages = initial ? ROWS.map((r) => message(r, columns, { operation: "insert" })) : [];
  messages.push({ headers: { control: "up-to-date", global_last_seen_lsn: "0" } });
  return send(res, 200, { ...headers, "electric-up-to-date": "" }, messages);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => send(res, 500, {}, { message: String(e && e.message) }));
});
server.listen(PORT, "127.0.0.1", () => {
  console.log(`electric-standin listening on 127.0.0.1:${server.address().port}`);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
