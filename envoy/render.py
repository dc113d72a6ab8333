#!/usr/bin/env python3
"""Fill {{NAME}} placeholders of an Envoy bootstrap template.

usage: render.py TEMPLATE NAME=value ... NAME=@file.json
A value given as @file is read and inserted as a one-line JSON string literal (a valid YAML
double-quoted scalar), which is how filter configurations are embedded.
"""
import json
import re
import sys


def main() -> int:
    template = open(sys.argv[1], encoding="utf-8").read()
    values = {}
    for arg in sys.argv[2:]:
        name, _, value = arg.partition("=")
        if value.startswith("@"):
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
