-- Segments a merchant assigns to customers (see the SQLite migration of the same name).
CREATE TABLE customer_tags (
    customer_id  TEXT NOT NULL REFERENCES customers (id),
    tag          TEXT NOT NULL,
    PRIMARY KEY (customer_id, tag)
);
CREATE INDEX customer_tags_by_tag ON customer_tags (tag, customer_id);
