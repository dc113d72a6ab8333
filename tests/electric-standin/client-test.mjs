#!/usr/bin/env node
// Electric's own TypeScript client (`@electric-sql/client`) against Envoy + jwt-shape + the
// Electric stand-in: `requestSnapshot` and `fetchSnapshot` (GET and POST, SQL and structured
// expressions) with a token that allows subsets on the columns it grants, and the refusals
// (a hidden column, a token without `subsets`). Run by tests/tests/jwt_shape.rs with:
//
//   EDGEGUARD_ELECTRIC_CLIENT   folder of the installed @electric-sql/client package
//   SHAPE_URL                   Envoy's http://127.0.0.1:<port>/v1/shape
//   TOKEN_SUBSETS               token: items, columns id,title,priority, log changes_only, subsets
//   TOKEN_PLAIN                 the same shape without `subsets`
//
// Prints one `ok <what>` line per check and `N passed, 0 failed`; exits 1 on the first failure.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const dir = process.env.EDGEGUARD_ELECTRIC_CLIENT;
const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
const entry = pkg.exports["."].import?.default ?? pkg.exports["."].default ?? pkg.module;
const { ShapeStream, FetchError } = await import(pathToFileURL(join(dir, entry)).href);

const url = process.env.SHAPE_URL;
const columns = ["id", "title", "priority"];
let passed = 0;

function stream(token, subsetMethod) {
  const s = new ShapeStream({
    url,
    params: { table: "items", columns },
    log: "changes_only",
    headers: { Authorization: `Bearer ${token}` },
    subsetMethod,
    signal: controller.signal,
  });
  s.subscribe(
    () => {},
    (e) => streamErrors.push(e),
  );
  return s;
}

const controller = new AbortController();
const streamErrors = [];

function ids(data) {
  return data.map((m) => m.value.id);
}

function ok(what) {
  passed += 1;
  console.log(`ok ${what}`);
}

async function refused(promise, status, messagePart) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof FetchError, `expected a FetchError, got ${e}`);
    assert.equal(e.status, status, `status of ${e.url}: ${e.text ?? ""}`);
    const text = e.text ?? JSON.stringify(e.json ?? {});
    assert.ok(text.includes(messagePart), `${text} lacks ${messagePart}`);
    return e;
  }
  assert.fail("the request was not refused");
}

try {
  const s = stream(process.env.TOKEN_SUBSETS);
  const g = stream(process.env.TOKEN_SUBSETS, "GET");

  // requestSnapshot: rows injected into the stream, and returned
  const snap = await s.requestSnapshot({
    where: "priority >= $1",
    params: { 1: "2" },
    orderBy: "id DESC",
    limit: 10,
  });
  assert.deepEqual(ids(snap.data), [4, 3, 1]);
  assert.deepEqual(Object.keys(snap.data[0].value).sort(), ["id", "priority", "title"]);
  assert.equal(snap.data[0].value.title, "ship it");
  assert.equal(typeof snap.metadata.snapshot_mark, "number");
  ok("requestSnapshot (GET, SQL) returns the rows of the subset");

  // fetchSnapshot, GET and POST, SQL and the structured forms
  let r = await g.fetchSnapshot({ where: '"title" ILIKE $1', params: { 1: "%the%" }, orderBy: "id" });
  assert.deepEqual(ids(r.data), [1, 2, 3]);
  ok("fetchSnapshot GET (SQL)");
  r = await g.fetchSnapshot({
    where: "priority = $1",
    params: { 1: "3" },
    orderBy: "title",
    limit: 1,
    method: "POST",
  });
  assert.deepEqual(ids(r.data), [1]);
  ok("fetchSnapshot POST (SQL in the body)");
  const whereExpr = {
    type: "func",
    name: "and",
    args: [
      { type: "func", name: "gte", args: [{ type: "ref", column: "priority" }, { type: "val", paramIndex: 1 }] },
      { type: "func", name: "in", args: [{ type: "ref", column: "id" }, { type: "val", paramIndex: 2 }] },
    ],
  };
  const exprParams = { 1: "1", 2: "{1,2,4}" };
  for (const method of ["GET", "POST"]) {
    r = await g.fetchSnapshot({
      whereExpr,
      params: exprParams,
      orderByExpr: [{ column: "priority", direction: "desc" }, { column: "id" }],
      limit: 5,
      method,
    });
    assert.deepEqual(ids(r.data), [1, 4, 2]);
    ok(`fetchSnapshot ${method} (structured whereExpr / orderByExpr)`);
  }

  // the hidden column: refused by jwt-shape (403), whatever the form
  await refused(
    g.fetchSnapshot({ where: "salary > $1", params: { 1: "100000" } }),
    403,
    "column 'salary'",
  );
  ok("fetchSnapshot GET with a hidden column in where: 403");
  await refused(
    g.fetchSnapshot({ where: "priority > $1", params: { 1: "0" }, orderBy: "salary DESC", limit: 1, method: "POST" }),
    403,
    "column 'salary'",
  );
  ok("fetchSnapshot POST with a hidden column in order_by: 403");
  await refused(
    g.fetchSnapshot({
      whereExpr: { type: "func", name: "gt", args: [{ type: "ref", column: "salary" }, { type: "val", paramIndex: 1 }] },
      params: { 1: "100000" },
      method: "POST",
    }),
    403,
    "column 'salary'",
  );
  ok("fetchSnapshot POST with a hidden column in whereExpr: 403");
  await refused(
    s.requestSnapshot({ where: "salary > $1", params: { 1: "100000" }, orderBy: "id", limit: 1 }),
    403,
    "column 'salary'",
  );
  ok("requestSnapshot with a hidden column: 403");

  // a token without `subsets`
  const p = stream(process.env.TOKEN_PLAIN, "POST");
  await refused(p.fetchSnapshot({ where: "priority = $1", params: { 1: "3" } }), 403, "token does not allow subset requests");
  ok("a token without subsets: 403");

  // the stream itself kept working (its requests carry no subset)
  r = await g.fetchSnapshot({ where: "id = $1", params: { 1: "2" } });
  assert.deepEqual(ids(r.data), [2]);
  assert.deepEqual(streamErrors, []);
  ok("the good requests after the refusals still pass");
  controller.abort();
  console.log(`${passed} passed, 0 failed`);
  process.exit(0);
} catch (e) {
  console.log(`FAILED after ${passed} checks: ${e && e.stack ? e.stack : e}`);
  console.log(`${passed} passed, 1 failed`);
  controller.abort();
  process.exit(1);
}
