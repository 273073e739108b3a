-- Nothing to change on PostgreSQL. SQLite drops the movements' index by level, whose mid-tree
-- inserts were a quarter of the pages its one writer wrote per checkout; PostgreSQL's writers
-- do not queue behind one another, and a level's movements stay an index look-up here.
SELECT 1;
