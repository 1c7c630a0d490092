#!/usr/bin/env python3
"""Regenerate k8s/ (kustomize base + cpu/gpu overlays) from the Helm chart.

k8s/base is `helm template cacheroute helm/cacheroute` with the default values, one
object per file; k8s/overlays/<profile> adds the objects and JSON patches that turn
the base into the chart's output for helm/cacheroute/ci/<profile>-values.yaml. Helm's
own labels (helm.sh/chart, app.kubernetes.io/managed-by) are left out.
tests/unit/serving/deploy/test_helm.py builds every overlay with `kubectl kustomize` and
compares it with the chart's output, so the two cannot drift apart silently.

    tools/fetch-helm.sh && .venv/bin/python tools/gen_k8s.py   # or all of them: make generate
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "cacheroute"
K8S = ROOT / "k8s"
RELEASE = "cacheroute"
OVERLAYS = ("cpu", "gpu")
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
HEADER = ("# Generated from helm/cacheroute by tools/gen_k8s.py ({what}); "
          "regenerate rather than edit.\n")


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def helm_binary() -> str:
    local = ROOT / ".cache" / "tools" / "helm"
    if local.exists():
        return str(local)
    found = shutil.which("helm")
    if not found:
        sys.exit("gen_k8s: helm not found: run tools/fetch-helm.sh")
    return found


def helm_template(values_file: Path | None) -> list[dict]:
    """The chart's objects for a value set, Helm-only labels removed."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home,
               "HELM_DATA_HOME": home}
        cmd = [helm_binary(), "template", RELEASE, str(CHART)]
        if values_file is not None:
            cmd += ["-f", str(values_file)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [strip_helm_labels(d) for d in yaml.safe_load_all(out) if d]


def strip_helm_labels(obj: dict) -> dict:
    labels = obj.get("metadata", {}).get("labels")
    if labels:
        for key in HELM_ONLY_LABELS:
            labels.pop(key, None)
    return obj


def key(obj: dict) -> tuple[str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def filename(obj: dict) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def _escape(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def json_patch(old: Any, new: Any, path: str = "") -> list[dict]:
    """RFC 6902 operations turning `old` into `new`, as local as possible."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict] = []
        for k in old:
            if k not in new:
                ops.append({"op": "remove", "path": f"{path}/{_escape(k)}"})
        for k, v in new.items():
            if k not in old:
                ops.append({"op": "add", "path": f"{path}/{_escape(k)}", "value": v})
            else:
                ops.extend(json_patch(old[k], v, f"{path}/{_escape(k)}"))
        return ops
    if isinstance(old, list) and isinstance(new, list):
        if len(old) == len(new):
            return [op for i, (a, b) in enumerate(zip(old, new))
                    for op in json_patch(a, b, f"{path}/{i}")]
        if len(new) > len(old) and new[:len(old)] == old:
            return [{"op": "add", "path": f"{path}/-", "value": v} for v in new[len(old):]]
    if old == new and type(old) is type(new):
        return []
    return [{"op": "replace", "path": path, "value": new}]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def generate() -> None:
    base = helm_template(None)
    if (K8S / "base").exists():
        shutil.rmtree(K8S / "base")
    for obj in base:
        write(K8S / "base" / filename(obj), HEADER.format(what="default values") + dump(obj))
    write(K8S / "base" / "kustomization.yaml",
          HEADER.format(what="default values") + dump({
              "apiVersion": "kustomize.config.k8s.io/v1beta1",
              "kind": "Kustomization",
              "resources": [filename(o) for o in base],
          }))
    by_key = {key(o): o for o in base}
    for profile in OVERLAYS:
        what = f"ci/{profile}-values.yaml"
        target = helm_template(CHART / "ci" / f"{profile}-values.yaml")
        folder = K8S / "overlays" / profile
        if folder.exists():
            shutil.rmtree(folder)
        resources: list[str] = ["../../base"]
        patches: list[dict] = []
        for obj in target:
            old = by_key.get(key(obj))
            if old is None:
                resources.append(filename(obj))
                write(folder / filename(obj), HEADER.format(what=what) + dump(obj))
                continue
            ops = json_patch(old, obj)
            if ops:
                name = f"patch-{filename(obj)}"
                write(folder / name, HEADER.format(what=what) + dump(ops))
                api, _, ver = obj["apiVersion"].rpartition("/")
                tgt = {"group": api, "version": ver, "kind": obj["kind"],
                       "name": obj["metadata"]["name"]} if api else {
                    "version": ver, "kind": obj["kind"], "name": obj["metadata"]["name"]}
                patches.append({"path": name, "target": tgt})
        gone = set(by_key) - {key(o) for o in target}
        for k in sorted(gone):
            api, _, ver = k[0].rpartition("/")
            name = f"delete-{k[1].lower()}-{k[2]}.yaml"
            write(folder / name, HEADER.format(what=what) + dump(
                {"$patch": "delete", "apiVersion": k[0], "kind": k[1],
                 "metadata": {"name": k[2]}}))
            patches.append({"path": name})
        kust: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1",
                                "kind": "Kustomization", "resources": resources}
        if patches:
            kust["patches"] = patches
        write(folder / "kustomization.yaml", HEADER.format(what=what) + dump(kust))


if __name__ == "__main__":
    generate()
    print("k8s/ regenerated")
