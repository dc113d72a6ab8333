// Validates edgeguard's Istio and Gateway API manifests with the typed models published on npm
// (`@kubernetes-models/istio`, `@kubernetes-models/gateway-api`): every YAML document under
// istio/ whose API group one of them covers is loaded into the matching model class and
// `.validate()`d (JSON schema of the CRD, enums, required fields, types). Other documents
// (core Kubernetes, Envoy Gateway) are left to validate.py; a document of a covered group
// without a model class is an error.
//
//   node tests/manifests/validate.mjs        (the packages come from .tools/npm, see Makefile)
//
// Prints `ok` / `FAIL <file> <object> <path>: <message>` lines; exit status 1 on any failure.

import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const NPM = process.env.EDGEGUARD_NPM_DIR ?? path.join(ROOT, ".tools", "npm");
const require = createRequire(path.join(NPM, "package.json"));

let YAML;
try {
  YAML = require("yaml");
} catch {
  console.error(`the npm packages are not installed in ${NPM}: run 'make validate-manifests'`);
  process.exit(2);
}

const MODELS = [
  { match: (g) => g.endsWith(".istio.io"), pkg: "@kubernetes-models/istio" },
  { match: (g) => g === "gateway.networking.k8s.io" || g === "gateway.networking.x-k8s.io", pkg: "@kubernetes-models/gateway-api" },
];

function version(pkg) {
  return JSON.parse(readFileSync(path.join(NPM, "node_modules", pkg, "package.json"), "utf8")).version;
}

function* yamlFiles(dir) {
  for (const name of readdirSync(dir).sort()) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) yield* yamlFiles(p);
    else if (name.endsWith(".yaml") && name !== "kustomization.yaml") yield p;
  }
}

function objName(doc) {
  const m = doc.metadata ?? {};
  return `${doc.kind}/${m.namespace ? m.namespace + "/" : ""}${m.name}`;
}

let ok = 0;
const failures = [];
const fail = (file, obj, where, msg) => {
  const line = `FAIL  ${file}  ${obj}  ${where || "/"}: ${msg}`;
  failures.push(line);
  console.log(line);
};

for (const file of yamlFiles(path.join(ROOT, "istio"))) {
  const rel = path.relative(ROOT, file);
  const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
  for (const d of docs) {
    if (d.errors.length) {
      fail(rel, "-", "/", `YAML: ${d.errors.map((e) => e.message).join("; ")}`);
      continue;
    }
    const doc = d.toJS();
    if (doc == null) continue;
    const [group, ver] = (doc.apiVersion ?? "").includes("/") ? doc.apiVersion.split("/") : ["", doc.apiVersion];
    const model = MODELS.find((m) => m.match(group));
    if (!model) continue; // core Kubernetes and Envoy Gateway: validate.py
    const modelFile = path.join(NPM, "node_modules", model.pkg, group, ver, `${doc.kind}.js`);
    if (!existsSync(modelFile)) {
      fail(rel, objName(doc), "/apiVersion", `${model.pkg} ${version(model.pkg)} has no model ${group}/${ver} ${doc.kind}`);
      continue;
    }
    const mod = await import(pathToFileURL(modelFile).href);
    const Model = mod[doc.kind];
    try {
      new Model(doc).validate();
      ok += 1;
      console.log(`ok    ${rel}  ${objName(doc)}  [${model.pkg} ${version(model.pkg)}]`);
    } catch (e) {
      const errors = e.errors ?? [{ instancePath: "", message: e.message }];
      for (const err of errors) {
        const extra = err.params?.allowedValues ? ` (${err.params.allowedValues.join(", ")})` : "";
        fail(rel, objName(doc), err.instancePath, `${err.message}${extra}`);
      }
    }
  }
}

console.log();
if (failures.length) {
  console.log(`npm models: ${failures.length} error(s)`);
  process.exit(1);
}
console.log(`npm models: ${ok} objects valid`);
