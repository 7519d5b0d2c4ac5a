# tiersync node image: the engine with every driver; databases run elsewhere.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/tiersync

COPY setup.cfg setup.py pyproject.toml README.md ./
COPY engine ./engine
COPY connectors ./connectors
COPY ops ./ops
COPY schemas ./schemas
COPY transports ./transports
# gcc only while installing: it compiles connectors/postgres/_copytext.c, then goes
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && pip install ".[postgres,mysql,kafka,bundle]" \
 && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/tiersync tiersync

USER tiersync
WORKDIR /var/lib/tiersync
VOLUME ["/etc/tiersync", "/var/lib/tiersync"]
ENTRYPOINT ["tiersync"]
CMD ["run", "--config", "/etc/tiersync/node.yaml"]
