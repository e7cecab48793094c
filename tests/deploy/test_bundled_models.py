"""Compose and Kubernetes start with the bundled models and no network: checked offline, without Docker or a cluster.

How a container gets the files: the image. The Dockerfile's build stage runs ``visionpipe models fetch`` (the one
step that needs the registries) into a folder, the runtime stage copies that folder and names it in
``VISIONPIPE_MODELS__CACHE_DIR``. These tests check each link of that chain, that no deployment mounts a volume
over the folder (which would hide the files), and then start each DNN stage the way a container would — the
image's environment plus the deployment's — with the network cut off.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.deploy.helpers import OVERLAYS, ROOT, environment_dict, load_compose, load_settings_from_env
from tests.deploy.manifests import Objects, configmap_env, objects_of, pod_spec
from tests.deploy.test_dockerfile import Instruction, parse
from visionpipe.services.commands.models import models
from visionpipe.services.models.registry import BUNDLED
from visionpipe.settings import Settings

DNN_STAGES = ("detector", "classifier")
DEPLOYMENTS = ("compose", *OVERLAYS)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse((ROOT / "Dockerfile").read_text())


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    final = instructions[-1].stage
    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV" and i.stage == final:
            env.update(dict(pair.split("=", 1) for pair in shlex.split(i.args)))
    return {k: v for k, v in env.items() if k.startswith("VISIONPIPE_")}


def models_commands(instructions: list[Instruction]) -> list[list[str]]:
    """Every ``visionpipe models …`` command the build runs, as argv after ``visionpipe models``."""
    out = []
    for i in instructions:
        if i.keyword == "RUN" and i.stage == "build" and "visionpipe models" in i.args:
            for part in i.args.split("&&"):
                words = [w for w in shlex.split(part) if not w.startswith("--mount=")]
                words = words[1:] if words[:1] == ["with-ca"] else words  # the optional-CA wrapper (Dockerfile)
                if words[:2] == ["visionpipe", "models"]:
                    out.append(words[2:])
    return out


def test_the_image_bakes_the_fetched_models_where_the_stages_look(instructions: list[Instruction]) -> None:
    models_dir = image_env(instructions)["VISIONPIPE_MODELS__CACHE_DIR"]
    commands = models_commands(instructions)
    assert [c[0] for c in commands] == ["fetch", "verify"], "the build fetches, then verifies what it baked"
    assert commands[-1] == ["verify", "--cache-dir", models_dir]
    for argv in commands:  # the flags are the CLI's own: a renamed option fails here, not in a Docker build
        sub = models.commands[argv[0]]
        sub.make_context(argv[0], argv[1:])
    copies = [i.args.split() for i in instructions if i.stage == instructions[-1].stage and i.keyword == "COPY"]
    assert ["--from=build", models_dir, models_dir] in copies
    venv = copies.index(["--from=build", "/opt/venv", "/opt/venv"])
    assert copies.index(["--from=build", models_dir, models_dir]) < venv, "the models' layer before the code's"
    assert not PurePosixPath(models_dir).is_relative_to("/cache"), "the /cache volume would hide the baked files"


def stage_env(deployment: str, stage: str, rendered: dict[str, Objects]) -> dict[str, str]:
    if deployment == "compose":
        return environment_dict(load_compose()["services"][stage])
    return configmap_env(objects_of(rendered, deployment))


def stage_mounts(deployment: str, stage: str, rendered: dict[str, Objects]) -> list[str]:
    if deployment == "compose":
        svc: dict[str, Any] = load_compose()["services"][stage]
        volumes = [v if isinstance(v, str) else v["target"] for v in svc.get("volumes", [])]
        return [v.split(":")[1] if ":" in v else v for v in volumes] + list(svc.get("tmpfs", []))
    deployment_obj = next(
        o for o in objects_of(rendered, deployment) if o["kind"] == "Deployment" and o["metadata"]["name"] == stage
    )
    return [m["mountPath"] for c in pod_spec(deployment_obj)["containers"] for m in c.get("volumeMounts", [])]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
@pytest.mark.parametrize("stage", DNN_STAGES)
def test_deployments_use_the_baked_models_and_hide_nothing(
    instructions: list[Instruction], rendered: dict[str, Objects], deployment: str, stage: str
) -> None:
    env = {**image_env(instructions), **stage_env(deployment, stage, rendered)}
    settings = load_settings_from_env(env)
    section = getattr(settings, stage)
    assert section.model in BUNDLED and section.weights == "DEFAULT", f"{deployment} {stage}: not the bundled model"
    models_dir = PurePosixPath(str(settings.models.cache_dir))
    assert str(models_dir) == image_env(instructions)["VISIONPIPE_MODELS__CACHE_DIR"]
    hidden = [m for m in stage_mounts(deployment, stage, rendered) if models_dir.is_relative_to(m)]
    assert hidden == [], f"{deployment} {stage} mounts {hidden} over the baked models"


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
async def test_dnn_stages_start_offline_as_a_container_would(
    instructions: list[Instruction],
    rendered: dict[str, Objects],
    deployment: str,
    bundled_models: Path,
    offline: None,
) -> None:
    """The image's and the deployment's environment, the baked folder (here: the fetched one), no network: ready."""
    from visionpipe.services.classifier.stage import ClassifierStage
    from visionpipe.services.detector.stage import DetectorStage

    for stage_cls, name in ((DetectorStage, "detector"), (ClassifierStage, "classifier")):
        env = {**image_env(instructions), **stage_env(deployment, name, rendered)}
        container: Settings = load_settings_from_env(env)
        assert container.models.cache_dir == Path(image_env(instructions)["VISIONPIPE_MODELS__CACHE_DIR"])
        settings = container.model_copy(
            update={
                "models": container.models.model_copy(update={"cache_dir": bundled_models}),
                "service": container.service.model_copy(update={"device": "cpu"}),  # no GPU in CI
                "executor": container.executor.model_copy(update={"warmup_repeats": 1}),
            }
        )
        stage = stage_cls(settings)
        await stage.start()
        try:
            assert stage.ready and stage.weights is not None and getattr(settings, name).model in stage.weights
        finally:
            await stage.stop()
