#!/usr/bin/env python3
"""Build the Cumulocity upload archive: a ZIP holding ``cumulocity.json`` and ``image.tar`` at its root.

    python deploy/cumulocity-package.py [--image-tar FILE] [--output tocsin.zip] [--version V] [--manifest F]

Without ``--image-tar`` it builds the image with Docker (linux/amd64) and saves it. The manifest and the
image are checked first; every problem is reported naming the field or file. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "cumulocity-manifest.json"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PLATFORM = "linux/amd64"
PORT = 80  # the one port Cumulocity sends requests and probes to

_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER = re.compile(rf"^(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)(?:-{_ID}(?:\.{_ID})*)?$")
API_V2 = re.compile(r"^v?2$")
ROLE = re.compile(r"^ROLE_[A-Z0-9]+(?:_[A-Z0-9]+)*$")
OFFERED_ROLE = re.compile(r"^ROLE_[A-Z0-9]+(?:_[A-Z0-9]+)*_(?:READ|ADMIN|CREATE)$")
CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
MEMORY = re.compile(r"^(\d+)(E|P|T|G|M|K|Ei|Pi|Ti|Gi|Mi|Ki)?$")
MEMORY_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
MEMORY_UNITS.update({u + "i": 2 ** (10 * (i + 1)) for i, u in enumerate("KMGTPE")})
PROBE_COUNTS = (
    "initialDelaySeconds",
    "periodSeconds",
    "successThreshold",
    "timeoutSeconds",
    "failureThreshold",
)


class PackageError(Exception):
    """Packaging cannot go on; the message names the field or file at fault."""


def check_version(version: object) -> list[str]:
    if not isinstance(version, str) or not version:
        return ["version: required, a SemVer string such as 1.2.0 or 1.2.0-SNAPSHOT"]
    if "+" in version:
        return [f"version: {version!r}: '+' (build metadata) is not allowed by Cumulocity"]
    if not SEMVER.match(version):
        return [f"version: {version!r} is not SemVer (MAJOR.MINOR.PATCH, optionally -PRERELEASE)"]
    return []


def _millicores(cpu: str) -> float | None:
    m = CPU.match(cpu)
    return None if m is None else float(m[1]) * (1 if m[2] else 1000)


def _bytes(memory: str) -> int | None:
    m = MEMORY.match(memory)
    return None if m is None else int(m[1]) * MEMORY_UNITS[m[2] or ""]


def _check_probe(name: str, probe: object, path: str) -> list[str]:
    if probe is None:
        return [f"{name}: required: httpGet {path} on port {PORT}"]
    if not isinstance(probe, dict):
        return [f"{name}: must be an object"]
    problems = []
    get = probe.get("httpGet")
    if not isinstance(get, dict):
        problems.append(f"{name}.httpGet: required: {{'path': {path!r}, 'port': {PORT}}}")
    else:
        if get.get("path") != path:
            problems.append(f"{name}.httpGet.path: must be {path!r}, got {get.get('path')!r}")
        if get.get("port", PORT) != PORT:
            problems.append(f"{name}.httpGet.port: must be {PORT}, the port the container serves")
        if get.get("scheme", "HTTP") != "HTTP":
            problems.append(f"{name}.httpGet.scheme: must be HTTP (the container serves no TLS)")
    for key in PROBE_COUNTS:
        value = probe.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append(f"{name}.{key}: must be a whole number of seconds or times, got {value!r}")
    return problems


def _check_roles(field: str, roles: object, pattern: re.Pattern[str], shape: str) -> list[str]:
    if roles is None:
        return []
    if not isinstance(roles, list):
        return [f"{field}: must be a list of role names"]
    return [
        f"{field}[{i}]: {role!r} is not shaped {shape}"
        for i, role in enumerate(roles)
        if not isinstance(role, str) or not pattern.match(role)
    ]


def _check_resources(manifest: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    parsed: dict[str, tuple[float | None, int | None]] = {}
    for field in ("resources", "requestedResources"):
        res = manifest.get(field)
        if res is None:
            continue
        if not isinstance(res, dict):
            problems.append(f"{field}: must be an object {{cpu, memory}}")
            continue
        cpu = _millicores(res["cpu"]) if isinstance(res.get("cpu"), str) else None
        memory = _bytes(res["memory"]) if isinstance(res.get("memory"), str) else None
        if "cpu" in res and (cpu is None or cpu < 100):
            problems.append(f"{field}.cpu: {res['cpu']!r}: a CPU count or millicores of at least 0.1 / 100m")
        if "memory" in res and (memory is None or memory < 10**7):
            problems.append(
                f"{field}.memory: {res['memory']!r}: at least 10M, units E P T G M K or Ei ... Ki"
            )
        parsed[field] = (cpu, memory)
    limit, request = parsed.get("resources"), parsed.get("requestedResources")
    if limit and request:
        for i, what in enumerate(("cpu", "memory")):
            asked, cap = request[i], limit[i]
            if asked is not None and cap is not None and asked > cap:
                problems.append(f"requestedResources.{what}: more than resources.{what}")
    return problems


def check_manifest(manifest: object) -> list[str]:
    """Every problem of the manifest, each naming its field; empty when it can be uploaded."""
    if not isinstance(manifest, dict):
        return ["manifest: must be a JSON object"]
    problems = []
    api = manifest.get("apiVersion")
    if not isinstance(api, str) or not API_V2.match(api):
        problems.append(f'apiVersion: must be "2" (the restricted capability set), got {api!r}')
    problems += check_version(manifest.get("version"))
    provider = manifest.get("provider")
    if not isinstance(provider, dict) or not isinstance(provider.get("name"), str) or not provider["name"]:
        problems.append("provider.name: required")
    for field in ("name", "contextPath"):
        value = manifest.get(field)
        if value is not None and (not isinstance(value, str) or not re.match(r"^[a-z0-9][a-z0-9-]*$", value)):
            problems.append(f"{field}: {value!r}: lower-case letters, digits and '-'")
    if manifest.get("isolation", "MULTI_TENANT") not in ("MULTI_TENANT", "PER_TENANT"):
        problems.append(f"isolation: {manifest['isolation']!r}: MULTI_TENANT or PER_TENANT")
    if manifest.get("scale", "NONE") not in ("AUTO", "NONE"):
        problems.append(f"scale: {manifest['scale']!r}: AUTO or NONE")
    replicas = manifest.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
        problems.append(f"replicas: {replicas!r}: 1 to 5")
    problems += _check_roles("requiredRoles", manifest.get("requiredRoles"), ROLE, "ROLE_<NAME>")
    problems += _check_roles(
        "roles",
        manifest.get("roles"),
        OFFERED_ROLE,
        "ROLE_<NAME>_READ, _ADMIN or _CREATE (the UI shows no other)",
    )
    problems += _check_probe("livenessProbe", manifest.get("livenessProbe"), "/health")
    problems += _check_probe("readinessProbe", manifest.get("readinessProbe"), "/health/ready")
    problems += _check_resources(manifest)
    settings = manifest.get("settings", [])
    if not isinstance(settings, list):
        problems.append("settings: must be a list of {key, defaultValue}")
    else:
        for i, option in enumerate(settings):
            if not isinstance(option, dict) or not isinstance(option.get("key"), str) or not option["key"]:
                problems.append(f"settings[{i}].key: required")
            elif not isinstance(option.get("defaultValue"), str):
                problems.append(f"settings[{i}].defaultValue: required, a string")
    return problems


def load_manifest(path: Path, version: str | None = None) -> dict[str, Any]:
    """The manifest at ``path`` with ``version`` set when given, checked; PackageError lists its problems."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PackageError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: not valid JSON: {exc}") from None
    if version is not None:
        if problems := check_version(version):
            raise PackageError(f"--version: {problems[0]}")
        if isinstance(manifest, dict):
            manifest["version"] = version
    if problems := check_manifest(manifest):
        raise PackageError(f"{path} is not a valid Cumulocity manifest:\n" + "\n".join(problems))
    assert isinstance(manifest, dict)
    return manifest


def check_image_tar(path: Path) -> str:
    """What the docker-save archive at ``path`` holds, e.g. "tocsin:1.0.0, linux/amd64"; else PackageError."""
    if not path.is_file():
        raise PackageError(f"image tar {path}: no such file")
    if not tarfile.is_tarfile(path):
        raise PackageError(f"image tar {path}: not a tar archive (expected the output of `docker save`)")
    with tarfile.open(path) as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
        if "manifest.json" not in names:
            raise PackageError(
                f"image tar {path}: no manifest.json at its root: not the output of `docker save`"
            )
        try:
            images = json.loads(_read(tar, "manifest.json"))
            if not isinstance(images, list) or len(images) != 1:
                raise ValueError("it must list exactly one image")
            image = images[0]
            config_name, layers = image["Config"], image["Layers"]
            if not isinstance(config_name, str) or not isinstance(layers, list) or not layers:
                raise ValueError("Config must name a file and Layers list at least one")
        except (ValueError, KeyError, TypeError) as exc:
            raise PackageError(
                f"image tar {path}: manifest.json is not a docker-save manifest: {exc}"
            ) from None
        missing = [n for n in [config_name, *layers] if n not in names]
        if missing:
            raise PackageError(f"image tar {path}: manifest.json names files it does not hold: {missing}")
        try:
            config = json.loads(_read(tar, config_name))
            platform = f"{config['os']}/{config['architecture']}"
        except (ValueError, KeyError, TypeError):
            raise PackageError(f"image tar {path}: {config_name} is not an image configuration") from None
    if platform != PLATFORM:
        raise PackageError(
            f"image tar {path}: the image is {platform}; Cumulocity runs {PLATFORM} "
            f"(build with docker build --platform {PLATFORM})"
        )
    tags = ", ".join(image.get("RepoTags") or ["untagged"])
    return f"{tags}, {platform}"


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    for candidate in (name, f"./{name}"):
        try:
            member = tar.extractfile(candidate)
        except KeyError:
            continue
        if member is not None:
            return member.read()
    raise KeyError(name)


def build_image(tag: str, directory: Path) -> Path:
    """Build the image for linux/amd64 with Docker and ``docker save`` it into ``directory``/image.tar."""
    docker = shutil.which("docker")
    if docker is None:
        raise PackageError(
            "docker is not installed (not on PATH): build and save the image where Docker runs "
            f"(docker build --platform {PLATFORM} -f deploy/Dockerfile -t {tag} . && "
            f"docker save -o image.tar {tag}) and pass --image-tar image.tar"
        )
    out = directory / "image.tar"
    for command in (
        [docker, "build", "--platform", PLATFORM, "-f", str(DOCKERFILE.relative_to(ROOT)), "-t", tag, "."],
        [docker, "save", "-o", str(out), tag],
    ):
        print(f"running: {' '.join(['docker', *command[1:]])}", flush=True)
        status = subprocess.run(command, cwd=ROOT, check=False).returncode
        if status != 0:
            raise PackageError(
                f"docker {command[1]} failed (exit status {status}): is the Docker daemon running? "
                "Or pass --image-tar FILE"
            )
    return out


def write_archive(manifest: dict[str, Any], image_tar: Path, output: Path) -> None:
    """``output``: a ZIP of exactly cumulocity.json and image.tar at its root, written whole or not at all."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("cumulocity.json", json.dumps(manifest, indent=2) + "\n")
            zf.write(image_tar, arcname="image.tar")
        os.replace(partial, output)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def package(manifest_path: Path, image_tar: Path | None, output: Path, version: str | None) -> Path:
    manifest = load_manifest(manifest_path, version)
    print(
        f"manifest: {manifest_path} ok ({manifest.get('name', 'tocsin')} {manifest['version']}, apiVersion 2)"
    )
    with tempfile.TemporaryDirectory(prefix="tocsin-package-") as tmp:
        if image_tar is None:
            image_tar = build_image(f"{manifest.get('name', 'tocsin')}:{manifest['version']}", Path(tmp))
        print(f"image: {image_tar} ({check_image_tar(image_tar)}, {image_tar.stat().st_size:,} bytes)")
        write_archive(manifest, image_tar, output)
    print(f"wrote {output} ({output.stat().st_size:,} bytes): cumulocity.json, image.tar")
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cumulocity-package.py",
        description="Build the Cumulocity upload archive (cumulocity.json and image.tar at the ZIP's root).",
    )
    parser.add_argument(
        "--image-tar", type=Path, help="the output of `docker save` (default: build with Docker)"
    )
    parser.add_argument("--output", type=Path, default=Path("tocsin.zip"), help="default: tocsin.zip")
    parser.add_argument("--version", help="the manifest's version in the archive (SemVer, no '+')")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="default: cumulocity-manifest.json")
    args = parser.parse_args(argv)
    try:
        package(args.manifest, args.image_tar, args.output, args.version)
    except PackageError as exc:
        print(f"cumulocity-package: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
