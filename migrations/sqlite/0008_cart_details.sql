-- What the shopper entered for checkout before checking out: email and addresses (JSON).
ALTER TABLE carts ADD COLUMN details TEXT;
