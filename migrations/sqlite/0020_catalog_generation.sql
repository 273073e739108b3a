-- A counter of catalog changes: every insert, update or delete of what a cart line reads from
-- the catalog (products, variants, prices, categories, options) adds one, in the same
-- transaction, whichever host or tool made it. A host caches the catalog's answer for a SKU
-- and uses it only while the counter it reads, in the snapshot it prices in, is the one the
-- answer was read at (catalog::Prices).
CREATE TABLE catalog_generation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  BIGINT NOT NULL
);
INSERT INTO catalog_generation (id, generation) VALUES (1, 0);

CREATE TRIGGER products_changed_insert AFTER INSERT ON products
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER products_changed_update AFTER UPDATE ON products
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER products_changed_delete AFTER DELETE ON products
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;

CREATE TRIGGER variants_changed_insert AFTER INSERT ON variants
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER variants_changed_update AFTER UPDATE ON variants
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER variants_changed_delete AFTER DELETE ON variants
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;

CREATE TRIGGER variant_prices_changed_insert AFTER INSERT ON variant_prices
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER variant_prices_changed_update AFTER UPDATE ON variant_prices
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER variant_prices_changed_delete AFTER DELETE ON variant_prices
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;

CREATE TRIGGER product_categories_changed_insert AFTER INSERT ON product_categories
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER product_categories_changed_update AFTER UPDATE ON product_categories
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER product_categories_changed_delete AFTER DELETE ON product_categories
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;

CREATE TRIGGER variant_options_changed_insert AFTER INSERT ON variant_options
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER variant_options_changed_update AFTER UPDATE ON variant_options
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER variant_options_changed_delete AFTER DELETE ON variant_options
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
