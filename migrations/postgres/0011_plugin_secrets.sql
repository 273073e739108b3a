-- Where a plugin's secrets are: references (an environment variable or a file) that the host
-- resolves at each call. The values themselves are never stored.
CREATE TABLE plugin_secrets (
    plugin_name  TEXT NOT NULL REFERENCES plugins (name),
    name         TEXT NOT NULL,
    reference    TEXT NOT NULL,
    set_by       TEXT NOT NULL,
    set_at       BIGINT NOT NULL,
    PRIMARY KEY (plugin_name, name)
);
