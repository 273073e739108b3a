-- The amount a capture asked for when it moved the order to `capturing`. A capture whose
-- outcome is unknown may be retried under the same gateway operation id; the retry must ask
-- for the same amount (or name none and get this one), or the gateway would see one operation
-- with two amounts. Left as it was when a definite refusal hands the order back to
-- `authorized`: the next capture's claim sets it again.
ALTER TABLE orders ADD COLUMN capture_amount BIGINT;
