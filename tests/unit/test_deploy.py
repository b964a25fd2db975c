"""The shipped configuration example and manifest stay valid."""

import copy
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest.mock import Mock

import pytest
import yaml
from aiohttp import web

from rules.loader import load_rules
from service.app import mqtt_enabled, rule_paths
from service.config import Config, load_config
from service.http.server import build_app
from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def test_example_configuration_is_valid_and_documents_every_section(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    text = (
        (ROOT / "deploy" / "config.example.yaml")
        .read_text()
        .replace("# password_file: /etc/tocsin/mqtt-password", f"password_file: {secret}")
    )
    f = tmp_path / "c.yaml"
    f.write_text(text)
    config = load_config(f, {})
    assert config.mqtt.password is not None and config.mqtt.embedded_broker == "never"
    assert set(yaml.safe_load(text)) == set(Config.model_fields)


def test_cumulocity_manifest_shape() -> None:
    m = json.loads((ROOT / "cumulocity-manifest.json").read_text())
    assert m["apiVersion"] == "2"
    assert "+" not in m["version"]
    assert m["provider"]["name"]
    assert m["isolation"] in ("MULTI_TENANT", "PER_TENANT")
    assert m["livenessProbe"]["httpGet"]["path"] == "/health"
    assert all(
        r.startswith("ROLE_") and r.rsplit("_", 1)[1] in ("READ", "ADMIN", "CREATE") for r in m["roles"]
    )


# --- Cumulocity: the manifest, the image definition and the upload archive (deploy/cumulocity-package.py) ---

SCRIPT = ROOT / "deploy" / "cumulocity-package.py"
MANIFEST = ROOT / "cumulocity-manifest.json"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cumulocity_package", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pkg = _load_script()


def manifest() -> dict[str, Any]:
    m: dict[str, Any] = json.loads(MANIFEST.read_text())
    return m


def docker_save_tar(path: Path, *, architecture: str = "amd64", with_manifest: bool = True) -> Path:
    """A small archive shaped like `docker save` output: manifest.json, the image config and one layer."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        data = b"print('hello')\n"
        info = tarfile.TarInfo("app/hello.py")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    files = {
        "blobs/sha256/" + "c" * 64: json.dumps({"architecture": architecture, "os": "linux"}).encode(),
        "blobs/sha256/" + "1" * 64: layer.getvalue(),
        "index.json": b'{"schemaVersion": 2, "manifests": []}',
    }
    if with_manifest:
        entry = {
            "Config": "blobs/sha256/" + "c" * 64,
            "RepoTags": ["tocsin:0.1.0-SNAPSHOT"],
            "Layers": ["blobs/sha256/" + "1" * 64],
        }
        files["manifest.json"] = json.dumps([entry]).encode()
    with tarfile.open(path, "w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_archive_holds_exactly_the_manifest_and_the_image_at_its_root(tmp_path: Path) -> None:
    image = docker_save_tar(tmp_path / "saved.tar")
    out = tmp_path / "dist" / "tocsin.zip"
    result = run_script("--image-tar", str(image), "--output", str(out))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["cumulocity.json", "image.tar"]
        assert json.loads(zf.read("cumulocity.json")) == manifest()
        assert zf.read("image.tar") == image.read_bytes()
    assert f"wrote {out} ({out.stat().st_size:,} bytes)" in result.stdout
    assert [p.name for p in out.parent.iterdir()] == ["tocsin.zip"]  # no partial file left behind


def test_version_override_changes_only_the_version(tmp_path: Path) -> None:
    out = tmp_path / "t.zip"
    assert (
        pkg.main(
            [
                "--image-tar",
                str(docker_save_tar(tmp_path / "i.tar")),
                "--output",
                str(out),
                "--version",
                "1.4.0-rc.1",
            ]
        )
        == 0
    )
    with zipfile.ZipFile(out) as zf:
        written = json.loads(zf.read("cumulocity.json"))
    assert written == {**manifest(), "version": "1.4.0-rc.1"}


@pytest.mark.parametrize("version", ["1.0.0+build.5", "1.0", "v1.0.0", "01.0.0", "1.0.0-"])
def test_refuses_a_version_cumulocity_refuses(
    tmp_path: Path, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.zip"
    args = [
        "--image-tar",
        str(docker_save_tar(tmp_path / "i.tar")),
        "--output",
        str(out),
        "--version",
        version,
    ]
    assert pkg.main(args) == 2
    err = capsys.readouterr().err
    assert "version" in err and repr(version) in err
    assert ("'+'" in err) == ("+" in version)
    assert not out.exists()


def _without(m: dict[str, Any], dotted: str) -> dict[str, Any]:
    m = copy.deepcopy(m)
    *parents, last = dotted.split(".")
    target = m
    for key in parents:
        target = target[key]
    del target[last]
    return m


def _with(m: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    m = copy.deepcopy(m)
    *parents, last = dotted.split(".")
    target = m
    for key in parents:
        target = target[key]
    target[last] = value
    return m


BAD_MANIFESTS = [
    (_without(manifest(), "apiVersion"), "apiVersion"),
    (_with(manifest(), "apiVersion", "1"), "apiVersion"),
    (_without(manifest(), "version"), "version"),
    (_with(manifest(), "version", "1.0.0+sha.abc"), "version"),
    (_without(manifest(), "provider.name"), "provider.name"),
    (_with(manifest(), "provider", "tocsin"), "provider.name"),
    (_without(manifest(), "livenessProbe"), "livenessProbe"),
    (_with(manifest(), "livenessProbe.httpGet.port", 8080), "livenessProbe.httpGet.port"),
    (_with(manifest(), "readinessProbe.httpGet.path", "/health"), "readinessProbe.httpGet.path"),
    (_with(manifest(), "readinessProbe.periodSeconds", -1), "readinessProbe.periodSeconds"),
    (_with(manifest(), "roles", ["ROLE_TOCSIN_READ", "ROLE_TOCSIN_WRITE"]), "roles[1]"),
    (_with(manifest(), "roles", ["tocsin_admin"]), "roles[0]"),
    (_with(manifest(), "requiredRoles", ["ROLE_ALARM_READ", "alarm admin"]), "requiredRoles[1]"),
    (_with(manifest(), "isolation", "SHARED"), "isolation"),
    (_with(manifest(), "resources.cpu", "50m"), "resources.cpu"),
    (_with(manifest(), "requestedResources.memory", "2G"), "requestedResources.memory"),
    (_with(manifest(), "settings", [{"key": "severityThreshold"}]), "settings[0].defaultValue"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_MANIFESTS, ids=[f for _, f in BAD_MANIFESTS])
def test_refuses_a_manifest_naming_the_field(
    tmp_path: Path, bad: dict[str, Any], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cumulocity-manifest.json"
    path.write_text(json.dumps(bad))
    out = tmp_path / "t.zip"
    args = [
        "--manifest",
        str(path),
        "--image-tar",
        str(docker_save_tar(tmp_path / "i.tar")),
        "--output",
        str(out),
    ]
    assert pkg.main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"{field}:") for line in lines), lines
    assert not out.exists()


def test_refuses_a_manifest_that_is_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"apiVersion": "2",')
    assert pkg.main(["--manifest", str(path), "--image-tar", str(docker_save_tar(tmp_path / "i.tar"))]) == 2
    assert f"{path}: not valid JSON" in capsys.readouterr().err


def _not_docker_save(tmp_path: Path) -> Path:
    path = tmp_path / "plain.tar"
    with tarfile.open(path, "w") as t:
        t.add(MANIFEST, arcname="cumulocity.json")
    return path


def _bad_layer_list(tmp_path: Path) -> Path:
    path = docker_save_tar(tmp_path / "i.tar", with_manifest=False)
    with tarfile.open(path, "a") as t:
        data = json.dumps(
            [{"Config": "blobs/sha256/" + "c" * 64, "Layers": ["blobs/sha256/missing"]}]
        ).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p / "nothing.tar", "no such file"),
        (
            lambda p: (p / "junk.tar").write_bytes(b"\x00not a tar" * 100) and p / "junk.tar",
            "not a tar archive",
        ),
        (_not_docker_save, "not the output of `docker save`"),
        (_bad_layer_list, "names files it does not hold"),
        (
            lambda p: docker_save_tar(p / "arm.tar", architecture="arm64"),
            "linux/arm64; Cumulocity runs linux/amd64",
        ),
    ],
    ids=["missing", "not-a-tar", "no-manifest-json", "missing-layer", "arm64"],
)
def test_refuses_an_image_tar_that_is_not_a_docker_save_for_amd64(
    tmp_path: Path, make: Callable[[Path], Path], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.zip"
    assert pkg.main(["--image-tar", str(make(tmp_path)), "--output", str(out)]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_without_docker_and_without_image_tar_says_to_pass_one(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "t.zip"
    result = run_script("--output", str(out), env={**os.environ, "PATH": str(empty)})
    assert result.returncode == 2
    assert "docker is not installed" in result.stderr and "--image-tar" in result.stderr
    assert not out.exists()


def test_without_image_tar_builds_for_amd64_and_saves_with_docker(tmp_path: Path) -> None:
    saved = docker_save_tar(tmp_path / "built.tar")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "docker"
    fake.write_text(
        f'#!/bin/sh\necho "$PWD | $*" >> "{calls}"\nif [ "$1" = save ]; then cp "{saved}" "$3"; fi\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "t.zip"
    result = run_script(
        "--output", str(out), "--version", "2.0.0", env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    )
    assert result.returncode == 0, result.stderr
    build, save = calls.read_text().splitlines()
    assert build == f"{ROOT} | build --platform linux/amd64 -f deploy/Dockerfile -t tocsin:2.0.0 ."
    assert save.startswith(f"{ROOT} | save -o ") and save.endswith(" tocsin:2.0.0")
    with zipfile.ZipFile(out) as zf:
        assert zf.read("image.tar") == saved.read_bytes()
        assert json.loads(zf.read("cumulocity.json"))["version"] == "2.0.0"


def test_docker_build_failure_is_reported(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\nexit 7\n")
    (bin_dir / "docker").chmod(0o755)
    result = run_script(
        "--output", str(tmp_path / "t.zip"), env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    )
    assert result.returncode == 2
    assert "docker build failed (exit status 7)" in result.stderr


def test_shipped_manifest_passes_the_checks_and_declares_what_the_service_needs() -> None:
    m = manifest()
    assert pkg.check_manifest(m) == []
    assert (m["apiVersion"], m["name"], m["contextPath"], m["isolation"]) == (
        "2",
        "tocsin",
        "tocsin",
        "MULTI_TENANT",
    )
    assert m["roles"] == ["ROLE_TOCSIN_READ", "ROLE_TOCSIN_ADMIN"]  # other code checks these names
    assert set(m["requiredRoles"]) == {
        "ROLE_ALARM_READ",
        "ROLE_ALARM_ADMIN",  # acknowledging alarms
        "ROLE_NOTIFICATION_2_ADMIN",
        "ROLE_INVENTORY_READ",
        "ROLE_INVENTORY_ADMIN",  # registrations as managed objects
        "ROLE_OPTION_MANAGEMENT_READ",
        "ROLE_USER_MANAGEMENT_READ",  # the push gateway API checks that users exist
    }
    assert m["livenessProbe"]["httpGet"] == {"path": "/health", "port": 80}
    assert m["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": 80}


def test_probe_paths_are_routes_the_service_serves() -> None:
    app: web.Application = build_app(Mock(), Metrics())
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    m = manifest()
    assert {m["livenessProbe"]["httpGet"]["path"], m["readinessProbe"]["httpGet"]["path"]} <= routes


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for word in shlex.split(line[4:]):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def _final_stage() -> list[str]:
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    return [line for line in lines[starts[-1] :] if line and not line.startswith("#")]


def test_image_serves_on_port_80_with_the_cumulocity_rules() -> None:
    stage = _final_stage()
    assert "EXPOSE 80" in stage
    assert 'ENTRYPOINT ["tocsin", "run"]' in stage
    # user 0: apiVersion 2 grants NET_BIND_SERVICE only, which a non-root user does not hold effectively
    assert not any(line.startswith("USER ") for line in stage)
    env = {k: v for k, v in _dockerfile_env().items() if k.startswith("TOCSIN_")}
    config = load_config(None, env)
    assert (config.http.host, config.http.port, config.data_dir) == ("0.0.0.0", 80, Path("/data"))
    # on the platform (no broker there) MQTT is off and the alarm app's rule runs
    assert config.rules.paths == [] and not mqtt_enabled(config, on_cumulocity=True)
    ruleset = load_rules(rule_paths(config, on_cumulocity=True))
    assert [rule.id for rule in ruleset.rules] == ["c8y-alarm"]


def test_image_copies_files_that_exist_and_installs_the_locked_runtime_dependencies() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    syncs = [line for line in text.splitlines() if "uv sync" in line]
    # the dependencies first (a layer of their own), then the project, not editable: both from uv.lock
    assert len(syncs) == 2 and all("--frozen" in s and "--no-dev" in s for s in syncs)
    assert "--no-install-project" in syncs[0] and "--no-editable" in syncs[1]
    assert "ARG UV_VERSION=0.13.9" in text  # the version scripts/_env.sh uses, whose sync flags these are
    assert "UV_VERSION=0.13.9" in (ROOT / "scripts" / "_env.sh").read_text()


def test_dockerignore_keeps_local_environments_and_tests_out_of_the_build_context() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"
    }
    assert {".venv", ".tools", ".git", "tests", "data"} <= ignored
    copies = [line.split() for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY ")]
    sources = {word.split("/")[0] for words in copies if "--from=build" not in words for word in words[1:-1]}
    assert sources and not sources & ignored
