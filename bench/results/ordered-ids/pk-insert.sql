\set QUIET on
DROP TABLE IF EXISTS pk_r, pk_o, ids_r, ids_o;
CREATE TABLE pk_r (id text PRIMARY KEY, v bigint);
CREATE TABLE pk_o (id text PRIMARY KEY, v bigint);
INSERT INTO pk_r SELECT 'msg_' || substr(md5(random()::text), 1, 23), i FROM generate_series(1, :n) i;
INSERT INTO pk_o SELECT 'msg_0g' || lpad(to_hex(i), 9, '0') || substr(md5(random()::text),1,12), i FROM generate_series(1, :n) i;
VACUUM ANALYZE pk_r; VACUUM ANALYZE pk_o;
CREATE TABLE ids_r AS SELECT 'msg_' || substr(md5(random()::text), 1, 23) id, g r, i FROM generate_series(1,5) g, generate_series(1,10000) i;
CREATE TABLE ids_o AS SELECT 'msg_0h' || lpad(to_hex(g * 100000 + i), 9, '0') || substr(md5(random()::text),1,12) id, g r, i FROM generate_series(1,5) g, generate_series(1,10000) i ORDER BY g, i;
\timing on
INSERT INTO pk_r SELECT id, i FROM ids_r WHERE r = 1;
INSERT INTO pk_o SELECT id, i FROM ids_o WHERE r = 1;
INSERT INTO pk_r SELECT id, i FROM ids_r WHERE r = 2;
INSERT INTO pk_o SELECT id, i FROM ids_o WHERE r = 2;
INSERT INTO pk_r SELECT id, i FROM ids_r WHERE r = 3;
INSERT INTO pk_o SELECT id, i FROM ids_o WHERE r = 3;
INSERT INTO pk_r SELECT id, i FROM ids_r WHERE r = 4;
INSERT INTO pk_o SELECT id, i FROM ids_o WHERE r = 4;
INSERT INTO pk_r SELECT id, i FROM ids_r WHERE r = 5;
INSERT INTO pk_o SELECT id, i FROM ids_o WHERE r = 5;
