# Redis for the CI stack (deploy/compose/check.sh): the compose file's redis:7.4-alpine cannot be pulled where no
# registry is reachable, so this is Debian's redis-server on the locally made base image, run the way the official
# image runs it: data in /data (the compose file's redis-data volume), as the unprivileged `redis` user.
ARG BASE=visionpipe-ci-base:bookworm
FROM ${BASE}

# The official image's entrypoint adds `--protected-mode no` when it is started without a config file: its clients
# come over the container network, which protected mode (on by default in Debian's binary) would refuse.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown redis:redis /data \
    && printf '%s\n' '#!/bin/sh' \
        'if [ "$1" = redis-server ]; then shift; set -- redis-server --protected-mode no "$@"; fi' \
        'exec "$@"' > /usr/local/bin/redis-entrypoint \
    && chmod 755 /usr/local/bin/redis-entrypoint

VOLUME /data
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]
