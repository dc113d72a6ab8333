#!/usr/bin/env python3
"""Fill {{NAME}} placeholders of an Envoy bootstrap template.

usage: render.py TEMPLATE NAME=value ... NAME=@file.json ... NAME=@filter:<filter>:<config.json>[:ENV,...]

- A value given as @file is read and inserted as a one-line JSON string literal (a valid YAML
  double-quoted scalar), which is how filter configurations are embedded.
- A value given as @filter:<filter>:<config.json>[:ENV,...] becomes the `typed_config` of an
  edgeguard HTTP filter (`jwt_shape`, `portal_auth`) in the build FLAVOUR names: `wasm` (the
  proxy-wasm filter <filter>.wasm from WASM_DIR, FAIL_RELOAD, the ENV variables passed into the
  VM) or `native` (the dynamic module libedgeguard_<filter>.so, found through Envoy's
  ENVOY_DYNAMIC_MODULES_SEARCH_PATH). Both get the same configuration JSON.
"""
import json
import re
import sys


def filter_config(flavour, wasm_dir, spec):
    parts = spec.split(":")
    name, config_file = parts[0], parts[1]
    env = [e for e in (parts[2].split(",") if len(parts) > 2 else []) if e]
    with open(config_file, encoding="utf-8") as f:
        configuration = json.dumps(json.load(f), separators=(",", ":"))
    string_value = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration}
    if flavour == "native":
        return {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": f"edgeguard_{name}", "do_not_close": True, "metrics_namespace": "edgeguard"},
            "filter_name": name,
            "filter_config": string_value,
        }
    if flavour != "wasm":
        raise SystemExit(f"render.py: FLAVOUR must be wasm or native, not {flavour!r}")
    vm = {
        "vm_id": name,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": f"{wasm_dir}/{name}.wasm"}},
    }
    if env:
        vm["environment_variables"] = {"host_env_keys": env}
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name,
            "failure_policy": "FAIL_RELOAD",
            "reload_config": {"backoff": {"base_interval": "1s", "max_interval": "10s"}},
            "configuration": string_value,
            "vm_config": vm,
        },
    }


def main() -> int:
    template = open(sys.argv[1], encoding="utf-8").read()
    raw = dict(arg.partition("=")[::2] for arg in sys.argv[2:])
    flavour = raw.get("FLAVOUR", "wasm")
    values = {}
    for name, value in raw.items():
        if value.startswith("@filter:"):
            value = json.dumps(filter_config(flavour, raw.get("WASM_DIR", ""), value[len("@filter:"):]))
        elif value.startswith("@"):
            with open(value[1:], encoding="utf-8") as f:
                value = json.dumps(json.dumps(json.load(f), separators=(",", ":")))
        values[name] = value
    missing = sorted(set(re.findall(r"{{(\w+)}}", template)) - set(values))
    if missing:
        print(f"render.py: no value for {', '.join(missing)}", file=sys.stderr)
        return 2
    sys.stdout.write(re.sub(r"{{(\w+)}}", lambda m: values[m.group(1)], template))
    return 0


if __name__ == "__main__":
    sys.exit(main())
