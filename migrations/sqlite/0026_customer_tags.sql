-- Segments a merchant assigns to customers ("vip", "wholesale"): the pricing and fraud hooks
-- are given the tags of the customer who owns the cart. Replaced as a set by
-- `PUT /admin/customers/{id}/tags`; read with every cart of a signed-in customer, by the key.
CREATE TABLE customer_tags (
    customer_id  TEXT NOT NULL REFERENCES customers (id),
    tag          TEXT NOT NULL,
    PRIMARY KEY (customer_id, tag)
) WITHOUT ROWID;
-- The customers of a segment (`GET /admin/customers?tag=`).
CREATE INDEX customer_tags_by_tag ON customer_tags (tag, customer_id);
