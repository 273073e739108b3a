-- Nothing to change on SQLite. PostgreSQL drops the foreign keys of the rows every checkout
-- writes (reservations to stock levels, order lines and payments to orders), which cost it a
-- query each; here a check is an index probe inside the statement, and dropping one would
-- mean rebuilding the table. PostgreSQL also gains `cartridge_refuse`, with which its
-- checkout statements that run outside a transaction undo themselves; SQLite's checkout
-- runs in transactions on its one writer.
SELECT 1;
