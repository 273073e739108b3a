-- A counter of catalog changes: every statement that inserts, updates or deletes what a cart
-- line reads from the catalog (products, variants, prices, categories, options) adds one, in
-- the same transaction, whichever host or tool ran it. A host caches the catalog's answer for
-- a SKU and uses it only while the counter it reads is the one the answer was read at
-- (catalog::Prices).
CREATE TABLE catalog_generation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  BIGINT NOT NULL
);
INSERT INTO catalog_generation (id, generation) VALUES (1, 0);

CREATE FUNCTION catalog_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER products_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_changed();
CREATE TRIGGER variants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON variants
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_changed();
CREATE TRIGGER variant_prices_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON variant_prices
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_changed();
CREATE TRIGGER product_categories_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON product_categories
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_changed();
CREATE TRIGGER variant_options_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON variant_options
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_changed();
