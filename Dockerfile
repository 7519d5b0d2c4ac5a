# tiersync node image: the engine with every driver; databases run elsewhere.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/tiersync

COPY setup.cfg pyproject.toml README.md ./
COPY engine ./engine
COPY connectors ./connectors
COPY ops ./ops
COPY schemas ./schemas
COPY transports ./transports
RUN pip install ".[postgres,mysql,kafka,bundle]" \
 && useradd --system --create-home --home-dir /var/lib/tiersync tiersync

USER tiersync
WORKDIR /var/lib/tiersync
VOLUME ["/etc/tiersync", "/var/lib/tiersync"]
ENTRYPOINT ["tiersync"]
CMD ["run", "--config", "/etc/tiersync/node.yaml"]
