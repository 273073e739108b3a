-- Shipping methods and their rates move the catalog generation too (0020): a host caches the
-- shipping offers in each currency beside the catalog's answers, and uses them only while the
-- generation it reads is the one they were read at (catalog::Prices).
CREATE TRIGGER shipping_methods_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON shipping_methods
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_changed();
CREATE TRIGGER shipping_rates_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON shipping_rates
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_changed();
