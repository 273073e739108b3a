-- A cart becomes at most one live order: a second checkout of the same cart (a double click
-- with a fresh idempotency key, a retry after the first answer was lost) cannot charge twice.
-- A cancelled order frees its cart.
CREATE UNIQUE INDEX orders_one_live_per_cart ON orders (cart_id) WHERE status <> 'cancelled';
