-- The plugin registry: every uploaded version with its component, which version of each
-- plugin is active, its place in its hook, the operator's configuration and grants, and an audit
-- log. Every host serves what these tables say; `registry_state.generation` moves on every change
-- so that hosts notice cheaply.
CREATE TABLE plugins (
    name              TEXT PRIMARY KEY,
    hook              TEXT NOT NULL,
    active_version    TEXT,
    previous_version  TEXT,
    enabled           BIGINT NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    position          BIGINT NOT NULL DEFAULT 0,
    config            TEXT NOT NULL DEFAULT '{}',
    tripped_at        BIGINT,
    tripped_reason    TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE plugin_versions (
    plugin_name  TEXT NOT NULL REFERENCES plugins (name),
    version      TEXT NOT NULL,
    digest       TEXT NOT NULL,
    manifest     TEXT NOT NULL,
    component    BLOB NOT NULL,
    size         BIGINT NOT NULL,
    source       TEXT NOT NULL,
    uploaded_by  TEXT NOT NULL,
    uploaded_at  BIGINT NOT NULL,
    PRIMARY KEY (plugin_name, version)
);

CREATE TABLE plugin_grants (
    plugin_name  TEXT NOT NULL REFERENCES plugins (name),
    capability   TEXT NOT NULL,
    granted_by   TEXT NOT NULL,
    granted_at   BIGINT NOT NULL,
    PRIMARY KEY (plugin_name, capability)
);

CREATE TABLE plugin_audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    plugin_name  TEXT NOT NULL,
    action       TEXT NOT NULL,
    detail       TEXT NOT NULL
);
CREATE INDEX plugin_audit_by_plugin ON plugin_audit (plugin_name, id);

-- Sampled hook calls, the inputs that shadow runs replay. Bounded per plugin by the host.
CREATE TABLE plugin_calls (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    plugin_name  TEXT NOT NULL,
    version      TEXT NOT NULL,
    hook         TEXT NOT NULL,
    at           BIGINT NOT NULL,
    input        TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    duration_us  BIGINT NOT NULL
);
CREATE INDEX plugin_calls_by_plugin ON plugin_calls (plugin_name, id);

CREATE TABLE registry_state (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    generation  BIGINT NOT NULL
);
INSERT INTO registry_state (id, generation) VALUES (1, 0);
