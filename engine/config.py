"""The node configuration: typed, frozen, validated once, every problem reported together.

A node's YAML names the node, its databases and its pipelines. Validation runs
in two layers: the shape (pydantic, with the YAML line of each problem) and
the cross-references (a pipeline naming a database that is not declared, a
mapping for a table that is not captured). Checks against live schemas are in
:mod:`engine.preflight`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError
from .ruleconfig import CAST_NAMES as CAST_NAMES  # re-exported for older imports
from .ruleconfig import ColumnRule, DiscriminatorConfig, LookupConfig, SurrogateKeyConfig, ValueMapConfig
from .yamlsource import LoadedYaml, load_yaml

SyncMode = Literal["mirror", "upsert", "append"]
Tier = Literal["county", "city", "province", "national", "enterprise", "department"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Strict):
    id: str = Field(min_length=1)
    tier: Tier
    region: str = Field(pattern=r"^\d{6}$", description="6-digit administrative region code")
    name: str = ""
    parent: str | None = Field(default=None, description="node id of the next tier up (its link has role parent)")
    state_dir: str | None = Field(default=None, description="directory of the running node's pid and reload files "
                                                            "(default: .tiersync next to the config file)")


class DatabaseConfig(_Strict):
    url: str
    state_schema: str = Field(default="tiersync", description="schema of tiersync's own tables (PostgreSQL)")

    @field_validator("url")
    @classmethod
    def _has_scheme(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("a database URL looks like postgresql://user@host:5432/db or sqlite:///path/to.db")
        return value

    def redacted_url(self) -> str:
        return redact_url(self.url)


class MetadataColumns(_Strict):
    """Target columns filled from the change itself rather than from the row."""

    op: str | None = None
    captured_at: str | None = None
    origin: str | None = None
    source_table: str | None = None
    seq: str | None = None  # the change's sequence number in its source
    tier: str | None = None  # the tier of the node where the change happened (conflict: higher_tier_wins)


class MappingConfig(_Strict):
    source: str
    target: str | None = None
    columns: dict[str, str | ColumnRule] = Field(default_factory=dict)
    drop: list[str] = Field(default_factory=list)
    constants: dict[str, Any] = Field(default_factory=dict)
    key: list[str] | None = Field(default=None, description="target key columns")
    source_key: list[str] | None = Field(default=None,
                                         description="source key columns for tables without a primary key")
    mode: SyncMode | None = None
    include_unlisted: bool = True
    metadata: MetadataColumns = MetadataColumns()
    # the rules vocabulary (engine/ruleconfig.py, README "Rules")
    computed: dict[str, str] = Field(default_factory=dict, description="target column → expression")
    filter: str | None = Field(default=None, description="expression; rows for which it is false are not sent")
    lookups: list[LookupConfig] = Field(default_factory=list)
    discriminator: DiscriminatorConfig | None = None
    surrogate_key: SurrogateKeyConfig | None = None
    conflict: Literal["source_wins", "newer_wins", "higher_tier_wins", "reject"] = Field(
        default="source_wins", description="when the target row was changed by someone else (engine.conflict): "
                                           "newer_wins needs metadata.captured_at, higher_tier_wins metadata.tier")


class SourceConfig(_Strict):
    database: str
    capture: Literal["trigger", "logical", "binlog", "inbox"] = Field(
        default="trigger", description="inbox: what other nodes sent (source database = the exchange database)")
    tables: list[str] = Field(min_length=1)
    slot: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,63}$",
                             description="logical capture: replication slot (default tiersync_<pipeline>)")
    publication: str | None = Field(default=None, description="logical capture: publication (default as the slot)")
    split_transactions: bool = Field(default=False, description="let a source transaction larger than a "
                                                                 "batch commit in parts")
    max_retained_wal_mb: int = Field(default=1024, ge=1, description="status warns above this much held WAL")

    def slot_name(self, pipeline: str, database: str) -> str:
        """The slot's name; by default unique per database and pipeline (slots are cluster-wide)."""
        if self.slot:
            return self.slot
        name = re.sub(r"[^a-z0-9_]", "_", f"tiersync_{database}_{pipeline}".lower())
        if len(name) > 63:
            name = name[:54] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
        return name

    def publication_name(self, pipeline: str) -> str:
        """The publication's name (publications belong to one database)."""
        return self.publication or re.sub(r"[^a-z0-9_]", "_", f"tiersync_{pipeline}".lower())[:63]


class TargetConfig(_Strict):
    database: str
    node: str | None = Field(default=None, description="node id behind the target; its own changes are never sent back")
    tier: Tier | None = Field(default=None, description="tier of the node behind the target: what a row written there "
                                                        "locally counts as (higher_tier_wins); default this node's")
    mode: SyncMode = "mirror"
    truncate: Literal["apply", "ignore"] = Field(default="ignore", description="what a captured TRUNCATE does")
    outbox: bool = Field(default=False, description="send to other nodes by the exchange routes (database = the "
                                                    "exchange database; mapping targets name exchange tables)")


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: SourceConfig
    target: TargetConfig
    mappings: list[MappingConfig] = Field(default_factory=list)
    initial_load: bool = Field(default=False, description="copy current rows on first start, then stream")
    batch_size: int = Field(default=10000, ge=1, le=1_000_000)
    poll_interval: float = Field(default=1.0, gt=0, le=3600)
    value_maps: dict[str, ValueMapConfig] = Field(default_factory=dict, description="code tables by name")
    mask_key: str | None = Field(default=None, description="HMAC key for mask: hash (use ${ENV_VAR})")

    def mapping_for(self, table: str) -> MappingConfig | None:
        for mapping in self.mappings:
            if mapping.source == table:
                return mapping
        return None

    def mappings_for(self, table: str) -> list[MappingConfig]:
        """Every mapping of ``table``: several when one source table is split into several targets."""
        return [m for m in self.mappings if m.source == table]


class LinkConfig(_Strict):
    """A link to another node: which way it points and the transport that carries batches over it."""

    role: Literal["parent", "child", "peer"]
    transport: Literal["exchange-db", "http", "kafka", "directory", "bundle"] = Field(
        description="bundle: offline, moved only by `tiersync bundle export/import`; directory: bundles written to "
                    "and read from directories automatically")
    region: str | None = Field(default=None, pattern=r"^\d{6}$", description="the child's region code")
    brokers: list[str] = Field(default_factory=list, description="kafka: bootstrap servers, host:port")
    format: Literal["json", "avro"] = Field(default="json", description="kafka: message values as Debezium JSON "
                                                                       "or Avro in the Confluent wire format")
    partitions: int = Field(default=1, ge=1, le=1000, description="kafka: partitions of topics tiersync creates")
    compact: bool = Field(default=False, description="kafka: create topics with cleanup.policy=compact")
    compression: Literal["none", "lz4", "zstd", "gzip"] = Field(
        default="lz4", description="kafka: how the producer compresses each record batch (a receiving node reads all "
                                   "three codecs; lz4 costs the least CPU)")
    helper_from: int = Field(default=2000, ge=0, description="kafka: a send of at least this many changes, or a "
                             "poll of at least this many Avro messages, is encoded or read in a helper process "
                             "while the link goes on (a second core); 0: never")
    inbox: str | None = Field(default=None, description="exchange-db: URL of the receiving node's exchange database")
    url: str | None = Field(default=None, description="http: the receiving node's endpoint, http(s)://host:port")
    key: SecretStr | None = Field(default=None, description="http: per-link HMAC key, the same at both ends")
    tls_ca: str | None = Field(default=None, description="http, sending: CA file the receiver's certificate must be "
                                                         "signed by (default: the system's CAs)")
    tls_cert: str | None = Field(default=None, description="http, sending: client certificate (PEM) for mutual TLS; "
                                                           "its subject CN or a DNS name is this node's id")
    tls_key: str | None = Field(default=None, description="http, sending: the client certificate's private key")
    client_cert: bool | None = Field(default=None, description="http, receiving: require a client certificate from "
                                                               "this sender (default: when the link has no key)")
    batch_size: int = Field(default=1000, ge=1, le=1_000_000, description="events per transport batch")
    timeout: float = Field(default=30.0, gt=0, le=3600)
    # offline bundles (transport bundle or directory; engine/bundle.py)
    cipher: Literal["aes-256-gcm", "sm4-gcm"] = Field(default="aes-256-gcm", description="bundle encryption")
    bundle_key: SecretStr | None = Field(default=None, description="bundle: the link's secret key in hex, the same at "
                                                                   "both ends (use ${ENV_VAR})")
    bundle_key_file: str | None = Field(default=None, description="bundle: a file holding the secret key in hex")
    signing_key: str | None = Field(default=None, description="bundle: this node's Ed25519 private key (PEM file) "
                                                              "that signs its bundles and receipts on this link")
    peer_public_key: str | None = Field(default=None, description="bundle: the other node's Ed25519 public key "
                                                                  "(PEM file)")
    volume_size: int = Field(default=64 * 1024 * 1024, ge=1024, description="bundle: bytes per volume file")
    directory: str | None = Field(default=None, description="directory: bundles for the other node are written here "
                                                            "(a path, or ftp://user:password@host/path)")
    watch: str | None = Field(default=None, description="directory: bundles and receipts from the other node "
                                                        "arrive here (a path, or an ftp:// URL)")
    spool: str | None = Field(default=None, description="directory with ftp:// locations: the local spool "
                                                        "(default spool/<link> beside the YAML)")
    complete_timeout: float = Field(default=3600.0, gt=0, description="directory: seconds a bundle may wait for "
                                                                      "missing volumes before it is rejected")
    resend_after: float = Field(default=600.0, gt=0, description="directory: seconds after an export with no "
                                "receipt covering its oldest batch before every undelivered batch is exported again "
                                "(a lost or rejected bundle); the wait doubles with each resend, up to 16 times this")


class RouteConfig(_Strict):
    """Where changes of one exchange table go."""

    key: list[str] = Field(min_length=1, description="the exchange table's key columns")
    up: bool = False
    down: bool = False
    down_match: str | None = Field(default=None, description="send down only to the child whose region code "
                                                             "is a prefix of this column (trailing 00s dropped)")
    across: list[str] = Field(default_factory=list, description="peer node ids")
    region_column: str | None = Field(default=None, description="send only rows whose column starts with "
                                                                "region_prefix")
    region_prefix: str | None = Field(default=None, pattern=r"^\d{1,6}$",
                                      description="default: this node's region code, trailing 00s dropped")


class BacklogWarningConfig(_Strict):
    """`tiersync status` warns about a link's outbox or an inbox whose backlog passes one of these."""

    batches: int | None = Field(default=1000, ge=1, description="batches waiting (none: no warning by count)")
    age: float | None = Field(default=600.0, gt=0, description="seconds the oldest waiting batch has waited")


class RetentionConfig(_Strict):
    """How long the running node keeps what it no longer needs; it prunes every ``interval`` seconds."""

    trace_days: float = Field(default=30.0, gt=0, description="trace rows (`tiersync trace`) older than this go")
    outbox_days: float = Field(default=7.0, gt=0, description="outbox batches acknowledged longer ago than this go")
    bundle_days: float = Field(default=7.0, gt=0, description="directory links: imported bundles and receipts "
                               "(kept in watch/imported/) older than this go; rejected ones stay for a person")
    interval: float = Field(default=600.0, gt=0, le=86400, description="seconds between prunings")


class ExchangeConfig(_Strict):
    database: str = Field(description="this node's exchange database (inbox, outbox, trace)")
    listen: str | None = Field(default=None, pattern=r"^[^:]+:\d+$", description="http: host:port to receive on")
    tls_cert: str | None = Field(default=None, description="http: the endpoint's certificate (PEM): HTTPS")
    tls_key: str | None = Field(default=None, description="http: the endpoint's private key")
    tls_client_ca: str | None = Field(default=None, description="http: CA file that signs senders' client "
                                                                "certificates (mutual TLS)")
    max_clock_skew: float = Field(default=300.0, gt=0, description="http: seconds a signed request stays valid")
    poll_interval: float = Field(default=0.5, gt=0, le=3600, description="how often idle links and relays look")
    links: dict[str, LinkConfig] = Field(default_factory=dict)
    tables: dict[str, RouteConfig] = Field(default_factory=dict)
    backlog_warning: BacklogWarningConfig = Field(default_factory=BacklogWarningConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)


def _http_link_problems(name: str, link: LinkConfig, exchange: ExchangeConfig) -> list[str]:
    """What an http link lacks: a way to prove each request (HMAC key, client certificate, or both)."""
    problems = []
    mutual = bool(link.tls_cert)
    if not (link.url or link.key or mutual or exchange.tls_client_ca):
        problems.append("transport http needs url: (to send) and key: or tls_cert/tls_key (to authenticate)")
    if bool(link.tls_cert) != bool(link.tls_key):
        problems.append("tls_cert and tls_key go together (the client certificate and its key)")
    if link.url and not (link.key or mutual):
        problems.append("transport http needs key: (the per-link HMAC key), or tls_cert/tls_key for mutual TLS")
    if link.url and (link.tls_ca or mutual) and not link.url.startswith("https://"):
        problems.append("tls_ca/tls_cert need an https:// url")
    needs_cert = link.client_cert if link.client_cert is not None else not link.key
    if exchange.listen and needs_cert and not exchange.tls_client_ca:
        what = "a client certificate" if link.key else "key: or a client certificate"
        problems.append(f"receiving from {name} needs {what}: set exchange.tls_client_ca (the CA that signs "
                        f"senders' certificates)")
    return problems


class Config(_Strict):
    node: NodeConfig
    databases: dict[str, DatabaseConfig]
    pipelines: list[PipelineConfig] = Field(default_factory=list)
    base_dir: str = Field(default=".", exclude=True, description="set by load_config: relative paths start here")
    source_file: str = Field(default="", exclude=True, description="set by load_config: the YAML it came from")
    exchange: ExchangeConfig | None = None

    def pipeline(self, name: str) -> PipelineConfig:
        for pipeline in self.pipelines:
            if pipeline.name == name:
                return pipeline
        names = [p.name for p in self.pipelines]
        raise ConfigError([f"no pipeline named {name!r}{_suggest(name, names)}; "
                           f"pipelines: {', '.join(names) or 'none'}"])


def redact_url(url: str) -> str:
    """The URL with its password replaced, for printing."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The config model that owns the mapping at ``path``, for 'did you mean' on unknown keys."""
    models: dict[tuple, type[BaseModel]] = {
        (): Config,
        ("node",): NodeConfig,
        ("databases", "*"): DatabaseConfig,
        ("pipelines", "*"): PipelineConfig,
        ("pipelines", "*", "source"): SourceConfig,
        ("pipelines", "*", "target"): TargetConfig,
        ("pipelines", "*", "mappings", "*"): MappingConfig,
        ("pipelines", "*", "mappings", "*", "metadata"): MetadataColumns,
        ("pipelines", "*", "mappings", "*", "columns", "*"): ColumnRule,
        ("pipelines", "*", "value_maps", "*"): ValueMapConfig,
        ("pipelines", "*", "mappings", "*", "lookups", "*"): LookupConfig,
        ("pipelines", "*", "mappings", "*", "discriminator"): DiscriminatorConfig,
        ("pipelines", "*", "mappings", "*", "surrogate_key"): SurrogateKeyConfig,
        ("exchange",): ExchangeConfig,
        ("exchange", "links", "*"): LinkConfig,
        ("exchange", "tables", "*"): RouteConfig,
    }
    generic = tuple("*" if isinstance(p, int) or (i == 1 and path[0] == "databases") or
                    (i == 5 and len(path) > 4 and path[4] == "columns") or
                    (i == 3 and len(path) > 2 and path[2] == "value_maps") or
                    (i == 2 and path[0] == "exchange" and path[1] in ("links", "tables")) else p
                    for i, p in enumerate(path))
    return models.get(generic)


def _describe(error: dict, source: LoadedYaml) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in {"str", "ColumnRule"}))
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        hint = _suggest(loc[-1], _field_names(model)) if model else ""
        parent = ".".join(str(p) for p in loc[:-1]) or "top level"
        return f"{source.where(loc)}: unknown key {loc[-1]!r} in {parent}{hint}"
    if kind == "missing":
        return f"{source.where(loc[:-1])}: {dotted} is required"
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    if isinstance(given, (str, int, float)) and not isinstance(given, bool) and kind != "value_error":
        message += f" (got {given!r})"
    return f"{source.where(loc)}: {dotted}: {message}"


def _raw_reference_problems(data: dict, source: LoadedYaml) -> list[str]:
    """Database references checked on the raw file, so they are reported along with shape errors."""
    databases = data.get("databases") if isinstance(data.get("databases"), dict) else {}
    problems = []
    pipelines = data.get("pipelines") if isinstance(data.get("pipelines"), list) else []
    for i, pipeline in enumerate(pipelines):
        for side in ("source", "target"):
            part = pipeline.get(side) if isinstance(pipeline, dict) else None
            name = part.get("database") if isinstance(part, dict) else None
            if isinstance(name, str) and name not in databases:
                problems.append(f"{source.where(('pipelines', i, side, 'database'))}: {side} database {name!r} "
                                f"is not declared under databases{_suggest(name, list(databases))}")
    return problems


def _cross_check(config: Config, source: LoadedYaml) -> list[str]:
    problems: list[str] = []
    names = list(config.databases)
    seen: set[str] = set()
    for i, pipeline in enumerate(config.pipelines):
        base = ("pipelines", i)
        if pipeline.name in seen:
            problems.append(f"{source.where(base + ('name',))}: pipeline name {pipeline.name!r} is used twice")
        seen.add(pipeline.name)
        for side in ("source", "target"):
            db = getattr(pipeline, side).database
            if db not in config.databases:
                problems.append(
                    f"{source.where(base + (side, 'database'))}: {side} database {db!r} is not declared "
                    f"under databases{_suggest(db, names)}")
        if pipeline.source.database == pipeline.target.database and not pipeline.target.outbox:
            problems.append(f"{source.where(base + ('target', 'database'))}: source and target are the same database")
        tables = pipeline.source.tables
        if len(set(tables)) != len(tables):
            problems.append(f"{source.where(base + ('source', 'tables'))}: a table is listed twice")
        mapped: set[str] = set()
        for j, mapping in enumerate(pipeline.mappings):
            where = source.where(base + ("mappings", j, "source"))
            if mapping.source not in tables:
                problems.append(f"{where}: mapping source {mapping.source!r} is not in the pipeline's "
                                f"source tables{_suggest(mapping.source, tables)}")
            target = (mapping.source, mapping.target or mapping.source)
            if target in mapped:
                problems.append(f"{where}: a second mapping of {mapping.source!r} to the same target "
                                f"(a split names a different target for each)")
            mapped.add(target)
            problems += rule_problems(pipeline, j, mapping, config, source)
            dropped_and_renamed = set(mapping.drop) & set(mapping.columns)
            if dropped_and_renamed:
                problems.append(f"{where}: columns both dropped and mapped: {', '.join(sorted(dropped_and_renamed))}")
    return problems + exchange_problems(config, source)


def exchange_problems(config: Config, source: LoadedYaml) -> list[str]:
    """Links, routes and the pipelines that use them must agree with each other and with the node."""
    problems: list[str] = []
    exchange = config.exchange
    uses = [(i, p) for i, p in enumerate(config.pipelines) if p.source.capture == "inbox" or p.target.outbox]
    if exchange is None:
        for i, _ in uses:
            problems.append(f"{source.where(('pipelines', i))}: an inbox source or an outbox target needs an "
                            f"exchange section (exchange: {{database: …, links: …, tables: …}})")
        return problems
    at = ("exchange",)
    if exchange.database not in config.databases:
        problems.append(f"{source.where(at + ('database',))}: exchange database {exchange.database!r} is not "
                        f"declared under databases{_suggest(exchange.database, list(config.databases))}")
    parents = [n for n, link in exchange.links.items() if link.role == "parent"]
    if len(parents) > 1:
        problems.append(f"{source.where(at + ('links',))}: more than one parent link: {', '.join(parents)}")
    if parents and config.node.parent != parents[0]:
        problems.append(f"{source.where(('node',))}: node.parent is {config.node.parent!r} but the parent link "
                        f"is {parents[0]!r}")
    for name, link in exchange.links.items():
        where = source.where(at + ("links", name))
        if name == config.node.id:
            problems.append(f"{where}: a link to the node itself")
        if link.role == "child" and not link.region:
            problems.append(f"{where}: a child link needs the child's region code (region: \"110101\")")
        problems += [f"{where}: {p}" for p in _bundle_link_problems(link)]
        if link.transport == "exchange-db" and not link.inbox:
            problems.append(f"{where}: transport exchange-db needs inbox: <URL of {name}'s exchange database>")
        if link.transport == "kafka" and not link.brokers:
            problems.append(f"{where}: transport kafka needs brokers: [host:port, …]")
        if link.transport == "http":
            problems += [f"{where}: {p}" for p in _http_link_problems(name, link, exchange)]
    if bool(exchange.tls_cert) != bool(exchange.tls_key):
        problems.append(f"{source.where(at)}: tls_cert and tls_key go together (the endpoint's certificate and key)")
    if exchange.tls_client_ca and not exchange.tls_cert:
        problems.append(f"{source.where(at + ('tls_client_ca',))}: client certificates need HTTPS: set tls_cert and "
                        f"tls_key too")
    for table, route in exchange.tables.items():
        where = source.where(at + ("tables", table))
        for peer in route.across:
            link = exchange.links.get(peer)
            if link is None or link.role != "peer":
                problems.append(f"{where}: across names {peer!r}, which is not a peer link"
                                f"{_suggest(peer, list(exchange.links))}")
        if route.down_match and not route.down:
            problems.append(f"{where}: down_match without down: true")
        if route.region_prefix and not route.region_column:
            problems.append(f"{where}: region_prefix without region_column")
    for i, pipeline in uses:
        base = ("pipelines", i)
        if pipeline.source.capture == "inbox":
            if pipeline.source.database != exchange.database:
                problems.append(f"{source.where(base + ('source', 'database'))}: an inbox source reads the exchange "
                                f"database {exchange.database!r}")
            for table in pipeline.source.tables:
                if table not in exchange.tables:
                    problems.append(f"{source.where(base + ('source', 'tables'))}: {table!r} is not an exchange "
                                    f"table{_suggest(table, list(exchange.tables))}")
        if pipeline.target.outbox:
            if pipeline.source.split_transactions:
                problems.append(f"{source.where(base + ('source', 'split_transactions'))}: an outbox target "
                                f"queues whole source transactions; split_transactions is not supported")
            if pipeline.target.database != exchange.database:
                problems.append(f"{source.where(base + ('target', 'database'))}: an outbox target is the exchange "
                                f"database {exchange.database!r}")
            for j, mapping in enumerate(pipeline.mappings):
                name = mapping.target or mapping.source
                if name not in exchange.tables:
                    problems.append(f"{source.where(base + ('mappings', j))}: mapping target {name!r} is not an "
                                    f"exchange table{_suggest(name, list(exchange.tables))}")
    return problems


def _bundle_link_problems(link: LinkConfig) -> list[str]:
    """What a bundle or directory link lacks: its keys, and for a directory link where to write or watch."""
    problems = []
    if link.transport in ("bundle", "directory") and \
            not ((link.bundle_key or link.bundle_key_file) and link.signing_key and link.peer_public_key):
        problems.append(f"transport {link.transport} needs bundle_key (or bundle_key_file), signing_key and "
                        f"peer_public_key (see `tiersync bundle keygen`)")
    if link.transport == "directory" and not (link.directory or link.watch):
        problems.append("transport directory needs directory: (to send) and/or watch: (to receive)")
    return problems


def rule_problems(pipeline: PipelineConfig, index: int, mapping: MappingConfig, config: Config,
                  source: LoadedYaml) -> list[str]:
    """Expressions, value-map and database names of one mapping (engine.rules does the work)."""
    from .rules import offline_problems
    return offline_problems(pipeline, index, mapping, config, source)


def _line_order(problem: str) -> tuple:
    file, _, rest = problem.partition(":")
    line = rest.partition(":")[0]
    return (file, int(line) if line.isdigit() else 0)


def load_config(path: str | Path) -> Config:
    """Load and validate a node YAML; raise :class:`ConfigError` with every problem at once."""
    if not Path(path).is_file():
        raise ConfigError([f"{path}: no such configuration file"])
    source = load_yaml(path)
    problems = list(source.problems)
    if source.data is None and not problems:
        problems.append(f"{source.file}: the file is empty")
    if problems:
        raise ConfigError(problems)
    if not isinstance(source.data, dict):
        raise ConfigError([f"{source.file}:1: the top level must be a mapping with node, databases and pipelines"])
    try:
        config = Config.model_validate(source.data)
    except ValidationError as exc:
        errors = [{**e, "loc": tuple("ColumnRule" if isinstance(p, str) and p.startswith("function-") and
                                     "ColumnRule" in p else p for p in e["loc"])} for e in exc.errors()]
        union_parts = {tuple(e["loc"][:e["loc"].index("ColumnRule")]) for e in errors if "ColumnRule" in e["loc"]}
        errors = [e for e in errors
                  if not ("str" in e["loc"] and tuple(e["loc"][:e["loc"].index("str")]) in union_parts)]
        problems = [_describe(e, source) for e in errors] + _raw_reference_problems(source.data, source)
        from .rules import raw_expression_problems
        problems += raw_expression_problems(source.data, source)
        raise ConfigError(sorted(problems, key=_line_order)) from None
    config = config.model_copy(update={"base_dir": str(Path(path).resolve().parent),
                                       "source_file": str(Path(path).resolve())})
    problems = _cross_check(config, source)
    if problems:
        raise ConfigError(problems)
    return config
