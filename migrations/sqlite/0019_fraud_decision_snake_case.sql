-- The fraud decision an order records (`decisions.fraud.decision`) was written as the contract
-- enum's Rust name ("Allow", "Review"); every other name the API shows is snake_case, and so is
-- this one from now on. Orders already stored are rewritten to match. serde_json writes the
-- object without spaces, so the key and its value are always adjacent as matched here.
UPDATE orders
SET decisions = replace(replace(replace(decisions,
        '"decision":"Allow"', '"decision":"allow"'),
        '"decision":"Review"', '"decision":"review"'),
        '"decision":"Deny"', '"decision":"deny"')
WHERE decisions LIKE '%"decision":"%';
