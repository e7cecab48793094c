#!/bin/sh
# Fetch Apache Kafka's jars (the release pinned in pom.xml beside this script) once, and print the folder that
# holds them: <folder>/libs/*.jar is a complete classpath for the broker (kafka.Kafka), the storage tool
# (kafka.tools.StorageTool) and the admin tools (org.apache.kafka.tools.*). Any script or Dockerfile can call it:
#
#   jars=$(tests/kafka/fetch.sh)        # e.g. ~/.cache/visionpipe/kafka-4.4.0
#   java -cp "$jars/libs/*" kafka.Kafka server.properties
#
# The folder is $VISIONPIPE_KAFKA_HOME when set, else $XDG_CACHE_HOME/visionpipe/kafka-<version> (~/.cache by
# default). Needs Maven and a JDK 17+ the first time only; later calls print the folder and touch nothing.
# Exit 3 with one line on stderr saying what to install when a tool is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
dest=${VISIONPIPE_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/visionpipe/kafka-$version}
if [ ! -f "$dest/.complete" ]; then
    if ! command -v java >/dev/null 2>&1; then
        echo "Apache Kafka needs Java 17+: install a JRE (Debian: apt-get install openjdk-17-jre-headless)" >&2
        exit 3
    fi
    if ! command -v mvn >/dev/null 2>&1; then
        echo "fetching Apache Kafka $version needs Maven: install it (Debian: apt-get install maven)" >&2
        exit 3
    fi
    # Into a fresh folder, renamed into place at the end: a fetch cut short (or two at once) leaves no half set.
    tmp="$dest.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >&2
    echo "$version" > "$tmp/VERSION"
    touch "$tmp/.complete"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    trap - EXIT
fi
echo "$dest"
