"""The Apache Kafka test broker: where Java or Maven is missing it says what to install; when started it is the
pinned release, answers on loopback, and its start time is printed (it is paid once per session)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.kafka.apache import FETCH, KafkaCluster, kafka_home, kafka_version


def _path_without(tool: str, tmp_path: Path) -> str:
    """A PATH of one folder holding every program of ``tool``'s folder (/usr/bin) but ``tool``."""
    found = shutil.which(tool)
    assert found is not None
    here = Path(found).parent
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for entry in here.iterdir():
        if entry.name != tool:
            (bin_dir / entry.name).symlink_to(entry)
    return str(bin_dir)


def test_without_java_it_says_which_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _path_without("java", tmp_path))
    with pytest.raises(RuntimeError, match=r"Java 17\+.*apt-get install openjdk-17-jre-headless"):
        kafka_home()


def test_without_maven_a_first_fetch_says_to_install_it(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": _path_without("mvn", tmp_path), "VISIONPIPE_KAFKA_HOME": str(tmp_path / "empty")}
    done = subprocess.run(["sh", str(FETCH)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        f"fetching Apache Kafka {kafka_version()} needs Maven: install it (Debian: apt-get install maven)"
    ]


def test_the_fetched_folder_is_printed_and_holds_the_pinned_broker() -> None:
    home = kafka_home()
    assert home.name == f"kafka-{kafka_version()}"
    assert (home / "libs" / f"kafka_2.13-{kafka_version()}.jar").is_file()
    assert (home / "VERSION").read_text().strip() == kafka_version()


def test_the_session_broker_answers_on_loopback(apache_kafka: KafkaCluster) -> None:
    md = AdminClient({"bootstrap.servers": apache_kafka.url.removeprefix("kafka://")}).list_topics(timeout=10)
    assert [b.host for b in md.brokers.values()] == ["127.0.0.1"]
    print(
        f"\nApache Kafka {apache_kafka.version} (KRaft, 1 node): formatted and started in {apache_kafka.start_s:.1f}s"
    )
