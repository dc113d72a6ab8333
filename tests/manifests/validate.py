#!/usr/bin/env python3
"""Offline validation of edgeguard's deployment manifests (`make validate-manifests`).

Checks, and prints one line per object / file:

* core Kubernetes objects (istio/kubernetes): `kubernetes-validate`, Kubernetes 1.30, strict
  (unknown fields are errors, as `kubectl apply` with server-side field validation makes them);
* custom resources (Istio, Gateway API, Envoy Gateway) against the `openAPIV3Schema` of the
  served version in the CRD files of ../shared/schemas (plus EnvoyProxy, vendored here), with
  unknown fields refused and the CRDs' `x-kubernetes-validations` CEL rules evaluated
  (cel-python); Istio's MeshConfig (not a CRD) against a schema written from istio/api
  mesh/v1alpha1/config.proto;
* kustomizations: every resource and patch exists, every manifest in a directory is listed,
  each directory only needs the APIs of its target (so `kubectl apply -k` works on its own), no
  object twice;
* cross-references: Service names and ports the policies, filters and clusters point at, the
  AuthorizationPolicy's provider, Envoy Gateway targetRefs;
* compose: bind-mount sources, build contexts and Dockerfiles exist, depends_on names services,
  Prometheus scrapes services and ports that exist, Grafana's datasource uid matches the
  dashboard's, and every peas_* / edgeguard_* metric the dashboard queries is defined in the
  sidecars' or filters' source.

Without ../shared/schemas (outside CI) the CRD checks are skipped, and the script says so.
Exit status 1 on any error, each printed as `FAIL <file> <object> <path>: <message>`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import yaml

try:
    import celpy  # cel-python
except ImportError:  # pragma: no cover - the Makefile installs it
    celpy = None

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EDGEGUARD_SHARED_SCHEMAS", ROOT.parent / "shared" / "schemas"))
K8S_VERSION = "1.30"

# Which API groups each kustomization directory may use: each must apply on a cluster that
# has only its target's CRDs.
CORE_GROUPS = {"", "apps", "autoscaling", "policy", "rbac.authorization.k8s.io", "networking.k8s.io"}
DIR_GROUPS = {
    "istio/kubernetes": CORE_GROUPS,
    "istio/istio": {"extensions.istio.io", "networking.istio.io", "security.istio.io"},
    "istio/envoy-gateway": {"gateway.networking.k8s.io", "gateway.envoyproxy.io"},
}
# YAML files that are not cluster objects and so are in no kustomization.
NOT_APPLIED = {"istio/istio/ext-authz/mesh-config.yaml", "istio/istio/native/proxy-modules-patch.yaml"}
# Of those, strategic-merge patches for a user's Deployment (not objects).
POD_PATCHES = {"istio/istio/native/proxy-modules-patch.yaml"}

CRD_FILES = {
    "istio-crds.gen.yaml": "Istio CRDs (istio/api @ b8f8791d)",
    "gatewayapi-crds.yaml": "Gateway API CRDs (bundled by Envoy Gateway v1.9.0)",
    "envoy-gateway-envoyextensionpolicies.yaml": "Envoy Gateway v1.9.0 CRD",
    "envoy-gateway-securitypolicies.yaml": "Envoy Gateway v1.9.0 CRD",
    "envoy-gateway-backendtrafficpolicies.yaml": "Envoy Gateway v1.9.0 CRD",
    "envoy-gateway-envoypatchpolicies.yaml": "Envoy Gateway v1.9.0 CRD",
    # not in ../shared/schemas today; used when it appears there
    "envoy-gateway-envoyproxies.yaml": "Envoy Gateway v1.9.0 CRD",
}


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.count = 0

    def ok(self, what: str, how: str) -> None:
        self.count += 1
        print(f"ok    {what}  [{how}]")

    def fail(self, file: str, obj: str, path: str, msg: str) -> None:
        line = f"FAIL  {file}  {obj}  {path or '/'}: {msg}"
        self.errors.append(line)
        print(line)

    def skip(self, what: str, why: str) -> None:
        line = f"SKIP  {what}: {why}"
        self.notes.append(line)
        print(line)


R = Report()


def rel(p: Path) -> str:
    return str(p.resolve().relative_to(ROOT))


def json_path(parts: Any) -> str:
    return "/" + "/".join(str(p) for p in parts)


def documents(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open() as f:
        for i, doc in enumerate(yaml.safe_load_all(f)):
            if doc is not None:
                yield i, doc


def obj_name(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def group_version(api_version: str) -> tuple[str, str]:
    if "/" in api_version:
        g, v = api_version.split("/", 1)
        return g, v
    return "", api_version


# ----------------------------------------------------------------------------- CRD schemas


def strict(schema: Any) -> Any:
    """Refuses unknown fields where the API server would prune or reject them."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def load_crds() -> dict[tuple[str, str, str], tuple[dict, str]]:
    """(group, version, kind) -> (openAPIV3Schema, source)."""
    out: dict[tuple[str, str, str], tuple[dict, str]] = {}
    for name, what in CRD_FILES.items():
        path = SHARED / name
        if not path.exists():
            continue
        for _, crd in documents(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for v in spec["versions"]:
                if v.get("served") and "schema" in v:
                    key = (spec["group"], v["name"], spec["names"]["kind"])
                    out[key] = (v["schema"]["openAPIV3Schema"], f"{what}: {path.name}")
    return out


def cel_rules(schema: dict, value: Any, path: list) -> Iterator[tuple[list, dict, Any]]:
    """Every (path, rule, self) the CRD's x-kubernetes-validations apply to."""
    if not isinstance(schema, dict):
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path, rule, value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for k, v in value.items():
            if k in props:
                yield from cel_rules(props[k], v, path + [k])
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from cel_rules(schema["additionalProperties"], v, path + [k])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            yield from cel_rules(schema["items"], v, path + [i])


CEL_ENV = celpy.Environment() if celpy else None
CEL_STATS = {"evaluated": 0, "transition_skipped": 0, "unsupported": []}
# Property names Kubernetes escapes in CEL (apiextensions "Escaping" rules).
CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
    "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
}


def apply_defaults(schema: Any, value: Any) -> Any:
    """The API server fills in `default`s before it runs the CEL rules; so do we."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        out = dict(value)
        props = schema.get("properties") or {}
        for k, sub in props.items():
            if k not in out and isinstance(sub, dict) and "default" in sub:
                out[k] = copy.deepcopy(sub["default"])
        for k, v in list(out.items()):
            if k in props:
                out[k] = apply_defaults(props[k], v)
            elif isinstance(schema.get("additionalProperties"), dict):
                out[k] = apply_defaults(schema["additionalProperties"], v)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def cel_escape(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = k
            if k in CEL_RESERVED:
                key = f"__{k}__"
            elif not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                key = k.replace("__", "__underscores__").replace(".", "__dot__").replace("-", "__dash__").replace("/", "__slash__")
            out[key] = cel_escape(v)
        return out
    if isinstance(value, list):
        return [cel_escape(v) for v in value]
    return value


def _cel_url_functions() -> dict:
    """Kubernetes' CEL URL library (isURL, url(..).getScheme() ...), which cel-python lacks."""
    from urllib.parse import urlsplit

    from celpy import celtypes

    def is_url(s: Any) -> Any:
        try:
            u = urlsplit(str(s))
        except ValueError:
            return celtypes.BoolType(False)
        return celtypes.BoolType(bool(u.scheme) or str(s).startswith("/"))

    def part(fn):  # url(s) is the string itself; its getters parse it
        return lambda s: celtypes.StringType(fn(urlsplit(str(s))) or "")

    return {
        "isURL": is_url,
        "url": lambda s: celtypes.StringType(str(s)),
        "getScheme": part(lambda u: u.scheme),
        "getHost": part(lambda u: u.netloc.rsplit("@", 1)[-1]),
        "getHostname": part(lambda u: u.hostname),
        "getPort": part(lambda u: str(u.port) if u.port else ""),
        "getEscapedPath": part(lambda u: u.path),
    }


CEL_FUNCTIONS = _cel_url_functions() if celpy else {}


def check_cel(file: str, obj: str, schema: dict, doc: dict) -> None:
    if CEL_ENV is None:
        return
    for path, rule, value in cel_rules(schema, apply_defaults(schema, doc), []):
        expr = rule["rule"]
        if "oldSelf" in expr:  # transition rules only run on update
            CEL_STATS["transition_skipped"] += 1
            continue
        try:
            program = CEL_ENV.program(CEL_ENV.compile(expr), functions=CEL_FUNCTIONS)
            result = program.evaluate({"self": celpy.json_to_cel(cel_escape(value))})
        except Exception as e:  # a Kubernetes CEL library function cel-python lacks
            CEL_STATS["unsupported"].append(f"{file} {obj} {json_path(path)}: {expr!r} ({type(e).__name__}: {e})")
            continue
        if isinstance(result, Exception):  # cel-python returns evaluation errors as values
            CEL_STATS["unsupported"].append(f"{file} {obj} {json_path(path)}: {expr!r} ({result})")
            continue
        CEL_STATS["evaluated"] += 1
        if not bool(result):
            R.fail(file, obj, json_path(path), f"{rule.get('message') or expr} (CEL rule: {expr})")


def check_custom(file: str, doc: dict, crds: dict) -> None:
    group, version = group_version(doc.get("apiVersion", ""))
    kind = doc.get("kind", "")
    obj = obj_name(doc)
    entry = crds.get((group, version, kind))
    if entry is None:
        R.fail(file, obj, "/apiVersion", f"no served CRD version {group}/{version} {kind} in {SHARED}")
        return
    schema, source = entry
    check_metadata(file, doc)
    root = copy.deepcopy(schema)
    # Some CRDs (Istio's) leave apiVersion/kind/metadata out of the schema; the API server
    # handles them itself.
    root.setdefault("properties", {})
    for key in ("apiVersion", "kind"):
        root["properties"].setdefault(key, {"type": "string"})
    root["properties"].setdefault("metadata", {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    validator = jsonschema.Draft4Validator(strict(root))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    for e in errors:
        R.fail(file, obj, json_path(e.absolute_path), e.message)
    check_cel(file, obj, schema, doc)
    if not errors:
        R.ok(f"{file}  {obj}", f"{source}, strict, CEL")


DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_metadata(file: str, doc: dict) -> None:
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        R.fail(file, obj_name(doc), "/metadata/name", "required")
        return
    if not DNS1123.match(meta["name"]) or len(meta["name"]) > 253:
        R.fail(file, obj_name(doc), "/metadata/name", f"{meta['name']!r} is not a DNS-1123 subdomain")


# ----------------------------------------------------------------------------- core objects


def check_core(file: str, doc: dict) -> None:
    obj = obj_name(doc)
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except jsonschema.ValidationError as e:
        R.fail(file, obj, json_path(e.absolute_path), e.message)
        return
    except kubernetes_validate.SchemaNotFoundError as e:
        R.fail(file, obj, "/apiVersion", f"no Kubernetes {K8S_VERSION} schema: {e}")
        return
    R.ok(f"{file}  {obj}", f"kubernetes-validate {kubernetes_validate.__version__}, Kubernetes {K8S_VERSION}, strict")


# ----------------------------------------------------------------------------- mesh config


def check_mesh_config(file: str, doc: dict) -> None:
    obj = obj_name(doc)
    schema = json.loads((HERE / "schemas" / "istio-meshconfig-extensionproviders.schema.json").read_text())
    mesh = ((doc.get("spec") or {}).get("meshConfig")) or {}
    providers = mesh.get("extensionProviders")
    if not providers:
        R.fail(file, obj, "/spec/meshConfig/extensionProviders", "missing")
        return
    v = jsonschema.Draft7Validator(schema)
    errs = list(v.iter_errors(providers))
    for e in errs:
        R.fail(file, obj, "/spec/meshConfig/extensionProviders" + json_path(e.absolute_path), e.message)
    if not errs:
        R.ok(f"{file}  {obj} meshConfig.extensionProviders", "istio/api mesh/v1alpha1/config.proto, strict")


# ----------------------------------------------------------------------------- kustomize

KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "namespace", "namePrefix", "nameSuffix", "labels", "commonLabels",
    "commonAnnotations", "resources", "components", "images", "patches", "configMapGenerator",
    "secretGenerator", "generatorOptions", "replicas",
}


def check_kustomizations(objects: dict[str, list[dict]]) -> None:
    istio_dir = ROOT / "istio"
    yaml_dirs = {p.parent for p in istio_dir.rglob("*.yaml")}
    for d in sorted(yaml_dirs):
        k = d / "kustomization.yaml"
        if not k.exists():
            R.fail(rel(d), "-", "/", "directory of manifests without kustomization.yaml")
            continue
        kust = yaml.safe_load(k.read_text())
        file = rel(k)
        if kust.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or kust.get("kind") != "Kustomization":
            R.fail(file, "Kustomization", "/apiVersion", "must be kustomize.config.k8s.io/v1beta1 Kustomization")
        for key in kust:
            if key not in KUSTOMIZATION_KEYS:
                R.fail(file, "Kustomization", f"/{key}", "unknown kustomization field")
        listed = set()
        for i, r in enumerate(kust.get("resources") or []):
            target = (d / r).resolve()
            if not target.exists():
                R.fail(file, "Kustomization", f"/resources/{i}", f"{r} does not exist")
            elif target.is_dir() and not (target / "kustomization.yaml").exists():
                R.fail(file, "Kustomization", f"/resources/{i}", f"{r} is a directory without kustomization.yaml")
            listed.add(target)
        for i, patch in enumerate(kust.get("patches") or []):
            if "path" in patch:
                target = (d / patch["path"]).resolve()
                if not target.is_file():
                    R.fail(file, "Kustomization", f"/patches/{i}/path", f"{patch['path']} does not exist")
                listed.add(target)
        for f in sorted(d.glob("*.yaml")):
            if f.name == "kustomization.yaml" or rel(f) in NOT_APPLIED:
                continue
            if f.resolve() not in listed:
                R.fail(file, "Kustomization", "/resources", f"{f.name} is not listed")
        # every object of the directory (resources only, recursively) uses the allowed APIs
        top = next((t for t in DIR_GROUPS if rel(d) == t or rel(d).startswith(t + "/")), None)
        seen: set[tuple] = set()
        for target in sorted(listed):
            files = [target] if target.is_file() else []
            for f in files:
                for doc in objects.get(rel(f), []):
                    g, _ = group_version(doc.get("apiVersion", ""))
                    if top and g not in DIR_GROUPS[top]:
                        R.fail(rel(f), obj_name(doc), "/apiVersion", f"{top} must only need {sorted(DIR_GROUPS[top])}")
                    ns = kust.get("namespace") or (doc.get("metadata") or {}).get("namespace")
                    key = (doc.get("apiVersion"), doc.get("kind"), ns, (doc.get("metadata") or {}).get("name"))
                    if key in seen:
                        R.fail(rel(f), obj_name(doc), "/metadata/name", "defined twice in one kustomization")
                    seen.add(key)
        R.ok(file, "kustomization: resources and patches exist, all manifests listed, target APIs only")


# ----------------------------------------------------------------------------- cross-references


def effective_ns(file: str, doc: dict) -> str | None:
    d = (ROOT / file).parent
    k = d / "kustomization.yaml"
    if k.exists():
        ns = (yaml.safe_load(k.read_text()) or {}).get("namespace")
        if ns:
            return ns
    return (doc.get("metadata") or {}).get("namespace")


def check_references(objects: dict[str, list[dict]]) -> None:
    services: dict[tuple[str, str], set[int]] = {}
    named: dict[tuple[str, str, str], str] = {}
    for file, docs in objects.items():
        for doc in docs:
            ns = effective_ns(file, doc) or "default"
            name = (doc.get("metadata") or {}).get("name")
            named[(doc.get("kind"), ns, name)] = file
            if doc.get("kind") == "Service":
                services[(ns, name)] = {p["port"] for p in doc["spec"].get("ports", [])}
    ours = {ns for ns, _ in services}

    def svc(file: str, obj: str, path: str, ns: str, name: str, port: int) -> None:
        if ns not in ours:
            return  # a user's service (Electric, PATH): not shipped here
        ports = services.get((ns, name))
        if ports is None:
            R.fail(file, obj, path, f"Service {ns}/{name} is not defined in istio/kubernetes")
        elif port not in ports:
            R.fail(file, obj, path, f"Service {ns}/{name} has no port {port} (has {sorted(ports)})")

    fqdn = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local$")
    providers: set[str] = set()
    checked = 0
    for file, docs in objects.items():
        for doc in docs:
            kind, obj = doc.get("kind"), obj_name(doc)
            ns = effective_ns(file, doc) or "default"
            spec = doc.get("spec") or {}
            if kind == "IstioOperator":
                for i, p in enumerate((spec.get("meshConfig") or {}).get("extensionProviders") or []):
                    providers.add(p.get("name"))
                    for key in ("envoyExtAuthzGrpc", "envoyExtAuthzHttp"):
                        if key in p:
                            m = fqdn.match(p[key].get("service", ""))
                            if m:
                                svc(file, obj, f"/spec/meshConfig/extensionProviders/{i}/{key}", m.group(2), m.group(1), p[key].get("port"))
                                checked += 1
            # socket addresses of Envoy clusters (EnvoyFilter, EnvoyPatchPolicy)
            for path, sa in find_key(doc, "socket_address"):
                m = fqdn.match(str(sa.get("address", "")))
                if m:
                    svc(file, obj, json_path(path), m.group(2), m.group(1), sa.get("port_value"))
                    checked += 1
            # Istio's own cluster names in a plugin configuration
            for path, v in find_strings(doc):
                m = re.match(r"^outbound\|(\d+)\|\|([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local$", v)
                if m:
                    svc(file, obj, json_path(path), m.group(3), m.group(2), int(m.group(1)))
                    checked += 1
            if kind == "SecurityPolicy":
                for proto in ("grpc", "http"):
                    for i, b in enumerate(((spec.get("extAuth") or {}).get(proto) or {}).get("backendRefs") or []):
                        svc(file, obj, f"/spec/extAuth/{proto}/backendRefs/{i}", b.get("namespace", ns), b["name"], b.get("port"))
                        checked += 1
            for i, t in enumerate(spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])):
                if t.get("group") == "gateway.networking.k8s.io" and (t.get("kind"), ns, t.get("name")) not in named:
                    R.fail(file, obj, f"/spec/targetRefs/{i}", f"{t.get('kind')} {ns}/{t.get('name')} is not defined")
                checked += 1
            if kind in ("HTTPRoute",):
                for i, p in enumerate(spec.get("parentRefs") or []):
                    if ("Gateway", p.get("namespace", ns), p["name"]) not in named:
                        R.fail(file, obj, f"/spec/parentRefs/{i}", f"Gateway {p['name']} is not defined")
                    checked += 1
            if kind == "Gateway":
                ref = (spec.get("infrastructure") or {}).get("parametersRef")
                if ref and (ref["kind"], ns, ref["name"]) not in named:
                    R.fail(file, obj, "/spec/infrastructure/parametersRef", f"{ref['kind']} {ref['name']} is not defined")
                checked += 1
    for file, docs in objects.items():
        for doc in docs:
            if doc.get("kind") == "AuthorizationPolicy" and doc["spec"].get("action") == "CUSTOM":
                name = (doc["spec"].get("provider") or {}).get("name")
                if name not in providers:
                    R.fail(file, obj_name(doc), "/spec/provider/name", f"{name!r} is not an extensionProvider of the mesh config ({sorted(providers)})")
                checked += 1
    R.ok("istio/**", f"cross-references: {checked} Service ports, providers, targetRefs, parentRefs")


def find_key(o: Any, key: str, path: list | None = None) -> Iterator[tuple[list, Any]]:
    path = path or []
    if isinstance(o, dict):
        for k, v in o.items():
            if k == key and isinstance(v, dict):
                yield path + [k], v
            yield from find_key(v, key, path + [k])
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from find_key(v, key, path + [i])


def find_strings(o: Any, path: list | None = None) -> Iterator[tuple[list, str]]:
    path = path or []
    if isinstance(o, dict):
        for k, v in o.items():
            yield from find_strings(v, path + [k])
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from find_strings(v, path + [i])
    elif isinstance(o, str):
        yield path, o


# ----------------------------------------------------------------------------- compose


def check_compose() -> None:
    cdir = ROOT / "compose"
    file = "compose/docker-compose.yaml"
    compose = yaml.safe_load((cdir / "docker-compose.yaml").read_text())
    services = compose.get("services") or {}
    volumes = set((compose.get("volumes") or {}).keys())
    n = 0
    for name, s in services.items():
        b = s.get("build")
        if isinstance(b, dict):
            ctx = (cdir / b.get("context", ".")).resolve()
            if not ctx.is_dir():
                R.fail(file, f"services.{name}", "/build/context", f"{ctx} is not a directory")
            df = ctx / b.get("dockerfile", "Dockerfile")
            if not df.exists():
                R.fail(file, f"services.{name}", "/build/dockerfile", f"{df} does not exist")
            n += 1
        for i, v in enumerate(s.get("volumes") or []):
            src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source")
            if src.startswith((".", "/")):
                if not (cdir / src).exists():
                    R.fail(file, f"services.{name}", f"/volumes/{i}", f"bind-mount source {src} does not exist")
            elif src not in volumes:
                R.fail(file, f"services.{name}", f"/volumes/{i}", f"named volume {src} is not declared")
            n += 1
        deps = s.get("depends_on") or []
        for d in (deps if isinstance(deps, list) else deps.keys()):
            if d not in services:
                R.fail(file, f"services.{name}", "/depends_on", f"{d} is not a service")
            n += 1
    R.ok(file, f"compose references: {n} build contexts, mounts, depends_on")

    # Envoy bootstrap: cluster hosts are compose services; modules are what the wasm service copies
    boot = yaml.safe_load((cdir / "envoy" / "envoy.yaml").read_text())
    for path, sa in find_key(boot, "socket_address"):
        host = sa.get("address")
        if host not in ("0.0.0.0", "127.0.0.1") and host not in services:
            R.fail("compose/envoy/envoy.yaml", "bootstrap", json_path(path), f"{host} is not a compose service")
    for path, v in find_strings(boot):
        if v.startswith("/etc/envoy/wasm/"):
            crate = Path(v).stem.replace("_", "-")
            if not (ROOT / "filters" / crate / "Cargo.toml").exists():
                R.fail("compose/envoy/envoy.yaml", "bootstrap", json_path(path), f"no filter crate filters/{crate} builds {v}")
    R.ok("compose/envoy/envoy.yaml", "cluster hosts are compose services, modules are built filter crates (Envoy itself runs it in tests/tests/manifests.rs)")

    # Prometheus scrapes existing services on ports they serve
    prom = yaml.safe_load((cdir / "prometheus" / "prometheus.yml").read_text())
    served = {
        "envoy": {9901},
        "edgeguard-authz": {int(services["edgeguard-authz"]["environment"]["METRICS_PORT"])},
        "edgeguard-xds": {18001},
    }
    for i, job in enumerate(prom.get("scrape_configs") or []):
        for t in (job.get("static_configs") or [{}])[0].get("targets", []):
            host, port = t.rsplit(":", 1)
            if host not in services:
                R.fail("compose/prometheus/prometheus.yml", job["job_name"], f"/scrape_configs/{i}", f"{host} is not a compose service")
            elif int(port) not in served.get(host, set()):
                R.fail("compose/prometheus/prometheus.yml", job["job_name"], f"/scrape_configs/{i}", f"{host} serves metrics on {sorted(served.get(host, []))}, not {port}")
    R.ok("compose/prometheus/prometheus.yml", "targets are compose services and their metrics ports")

    # Grafana: datasource uid and dashboard metrics
    ds = yaml.safe_load((cdir / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {d["uid"] for d in ds["datasources"]}
    dash_file = "compose/grafana/dashboards/edgeguard.json"
    dash = json.loads((ROOT / dash_file).read_text())
    known = metric_names_in_source()
    exprs = 0
    for p in dash["panels"]:
        for t in p.get("targets", []):
            exprs += 1
            uid = (t.get("datasource") or p.get("datasource") or {}).get("uid")
            if uid not in uids:
                R.fail(dash_file, f"panel {p['title']!r}", "/datasource/uid", f"{uid} is not a provisioned datasource ({sorted(uids)})")
            for m in re.findall(r"\b((?:peas|edgeguard)_[a-z0-9_]+)", t["expr"]):
                if not metric_known(m, known):
                    R.fail(dash_file, f"panel {p['title']!r}", f"/targets/{t['refId']}", f"metric {m} is defined nowhere in sidecars/ or filters/")
    R.ok(dash_file, f"{len(dash['panels'])} panels, {exprs} queries: datasource provisioned, every peas_/edgeguard_ metric defined in the source")


def metric_names_in_source() -> set[str]:
    names: set[str] = set()
    for base in ("sidecars", "filters"):
        for f in (ROOT / base).rglob("*.rs"):
            for lit in re.findall(r'"((?:peas|edgeguard)_[a-z0-9_.{}]*)"', f.read_text(errors="replace")):
                names.add(re.sub(r"\{[^}]*\}.*$", "", lit).replace(".", "_"))
    return names


def metric_known(m: str, known: set[str]) -> bool:
    candidates = {m}
    for suffix in ("_bucket", "_sum", "_count"):
        if m.endswith(suffix):
            candidates.add(m[: -len(suffix)])
    if candidates & known:
        return True
    # a name prefix in a regex selector (edgeguard_jwt_shape_denied_.+), or a name built with format!
    return any((m.endswith("_") and k.startswith(m)) or (k.endswith("_") and m.startswith(k)) for k in known if len(k) > 10)


# ----------------------------------------------------------------------------- sidecar settings

# Where each `edgeguard` role declares its settings (clap `env = "..."`).
ROLE_SOURCES = {"authz": "sidecars/authz/src/config.rs", "xds": "sidecars/xds/src/lib.rs"}


def role_env_names(role: str) -> set[str] | None:
    src = ROOT / ROLE_SOURCES[role]
    if not src.exists():
        return None
    return set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', src.read_text()))


def check_sidecar_env(objects: dict[str, list[dict]]) -> None:
    """Every environment variable given to `edgeguard authz` / `edgeguard xds` is one it reads."""
    seen = 0

    def check(file: str, obj: str, role: str, names: list[str]) -> None:
        nonlocal seen
        known = role_env_names(role)
        if known is None:
            R.skip(f"{file} {obj} env", f"{ROLE_SOURCES[role]} does not exist yet")
            return
        for n in names:
            seen += 1
            if n not in known:
                R.fail(file, obj, f"/env/{n}", f"`edgeguard {role}` reads no {n} (it reads {sorted(known)})")

    for file, docs in objects.items():
        for doc in docs:
            if doc.get("kind") != "Deployment":
                continue
            for c in doc["spec"]["template"]["spec"]["containers"]:
                args = c.get("args") or c.get("command") or []
                role = next((a for a in args if a in ROLE_SOURCES), None)
                if role:
                    check(file, obj_name(doc), role, [e["name"] for e in c.get("env") or []])
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yaml").read_text())
    for name, svc in (compose.get("services") or {}).items():
        cmd = svc.get("command") or []
        role = cmd[0] if cmd and cmd[0] in ROLE_SOURCES else None
        if role:
            check("compose/docker-compose.yaml", f"services.{name}", role, list((svc.get("environment") or {}).keys()))
    R.ok("istio/kubernetes, compose", f"{seen} sidecar environment variables are settings `edgeguard authz` / `edgeguard xds` read")


# ----------------------------------------------------------------------------- main


def main() -> int:
    manifests = sorted((ROOT / "istio").rglob("*.yaml"))
    objects: dict[str, list[dict]] = {}
    for p in manifests:
        if p.name == "kustomization.yaml":
            continue
        try:
            objects[rel(p)] = [d for _, d in documents(p)]
        except yaml.YAMLError as e:
            R.fail(rel(p), "-", "/", f"YAML: {e}")

    have_shared = SHARED.is_dir()
    crds = load_crds()  # the vendored EnvoyProxy schema is there without ../shared too
    unchecked: list[str] = []

    for file, docs in objects.items():
        if file in POD_PATCHES:
            continue
        for doc in docs:
            group, _ = group_version(doc.get("apiVersion", ""))
            if doc.get("kind") == "IstioOperator":
                check_mesh_config(file, doc)
            elif group in CORE_GROUPS:
                check_core(file, doc)
            elif (group, group_version(doc["apiVersion"])[1], doc.get("kind")) in crds:
                check_custom(file, doc, crds)
            elif have_shared:
                R.skip(
                    f"{file} {obj_name(doc)}",
                    f"no CRD schema for {doc.get('kind')} ({doc.get('apiVersion')}) in {SHARED}; "
                    "only the npm models (if any) checked it",
                )
            else:
                unchecked.append(f"{file} {obj_name(doc)}")

    if unchecked:
        R.skip(
            f"CRD schema checks of {len(unchecked)} custom resources",
            f"{SHARED} is not here (CI has it beside the repository); Istio and Gateway API objects "
            "were checked by the npm models only, Envoy Gateway policies not at all",
        )
    check_kustomizations(objects)
    check_references(objects)
    check_sidecar_env(objects)
    check_compose()

    if CEL_ENV is None:
        R.skip("CEL rules (x-kubernetes-validations)", "cel-python is not installed")
    else:
        print(f"info  CEL rules: {CEL_STATS['evaluated']} evaluated, {CEL_STATS['transition_skipped']} transition rules skipped (update-only)")
        for u in CEL_STATS["unsupported"]:
            R.fail("-", "CEL", "-", f"rule could not be evaluated here: {u}")

    print()
    if R.errors:
        print(f"manifests: {len(R.errors)} error(s)")
        return 1
    print(f"manifests: {R.count} checks passed" + (f", {len(R.notes)} skipped (see SKIP above)" if R.notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
