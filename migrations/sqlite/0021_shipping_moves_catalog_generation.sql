-- Shipping methods and their rates move the catalog generation too (0020): a host caches the
-- shipping offers in each currency beside the catalog's answers, and uses them only while the
-- generation it reads is the one they were read at (catalog::Prices).
CREATE TRIGGER shipping_methods_changed_insert AFTER INSERT ON shipping_methods
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER shipping_methods_changed_update AFTER UPDATE ON shipping_methods
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER shipping_methods_changed_delete AFTER DELETE ON shipping_methods
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;

CREATE TRIGGER shipping_rates_changed_insert AFTER INSERT ON shipping_rates
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER shipping_rates_changed_update AFTER UPDATE ON shipping_rates
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER shipping_rates_changed_delete AFTER DELETE ON shipping_rates
BEGIN UPDATE catalog_generation SET generation = generation + 1 WHERE id = 1; END;
