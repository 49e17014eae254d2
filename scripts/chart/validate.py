"""Validates rendered Kubernetes manifests, strictly.

    validate.py CRD_SCHEMAS VERSIONS FILE...

Every object of every FILE (multi-document YAML from `helm template`) is
checked against the Kubernetes OpenAPI schemas of each version in VERSIONS
(comma-separated, e.g. 1.30.0,1.37.0) by kubernetes-validate in strict mode:
unknown fields are errors. Custom resources, whose CRD schemas cannot be
fetched here, are checked against the minimal schemas in CRD_SCHEMAS; a kind
in neither is an error, never a skip. Prints one line per file with its
object count by kind; exits 1 on the first file with an invalid object.
"""

import collections
import json
import sys

import jsonschema
import kubernetes_validate
import yaml


def main() -> int:
    crd_path, versions, files = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
    with open(crd_path) as f:
        crds = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    failed = False
    for path in files:
        with open(path) as f:
            objects = [o for o in yaml.safe_load_all(f) if o]
        kinds = collections.Counter(o.get("kind", "?") for o in objects)
        errors = []
        for obj in objects:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            key = f"{obj.get('apiVersion')}/{obj.get('kind')}"
            if key in crds:
                try:
                    jsonschema.validate(obj, crds[key])
                except jsonschema.ValidationError as e:
                    errors.append(f"{name}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
                continue
            for version in versions:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    errors.append(f"{name}: no schema for {key} in Kubernetes {version} nor in {crd_path}")
                except kubernetes_validate.ValidationError as e:
                    errors.append(f"{name} (Kubernetes {version}): {e.message} at {'/'.join(map(str, e.absolute_path))}")
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        if errors:
            failed = True
            print(f"FAILED {path}: {len(objects)} objects ({summary})")
            for error in errors:
                print(f"  {error}")
        else:
            print(f"ok {path}: {len(objects)} objects ({summary}), valid for {', '.join(versions)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
