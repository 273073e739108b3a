-- Failed logins per email, to slow down password guessing: after a few failures in a window
-- the email is locked for a while, and a login for it is refused before any hashing. Kept for
-- unknown emails as well, so that being throttled says nothing about which emails have an
-- account. A successful login deletes its row; the maintenance sweep deletes stale ones.
CREATE TABLE login_throttle (
    email TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    first_failed_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);
