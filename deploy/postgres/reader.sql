-- A demo schema owned by the admin, and the reader role the query service connects as
-- (docs/query-account.md). Run once, as the database owner, in a new database: the
-- postgres image runs it from /docker-entrypoint-initdb.d on its first start.
CREATE SCHEMA demo;
CREATE TABLE demo.customers (id int PRIMARY KEY, name text NOT NULL, country text NOT NULL);
CREATE TABLE demo.orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES demo.customers, total numeric(10, 2) NOT NULL, placed_at timestamptz NOT NULL);
INSERT INTO demo.customers VALUES (1, 'Ada', 'GB'), (2, 'Grace', 'US'), (3, 'Edsger', 'NL');
INSERT INTO demo.orders SELECT g, 1 + g % 3, round((g * 7.31)::numeric % 500, 2), timestamptz '2024-01-01' + g * interval '7 hours' FROM generate_series(1, 500) g;

-- Dev-only password; a real deployment takes it from a secret.
CREATE ROLE dbgenie_reader LOGIN PASSWORD 'reader-dev-only' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT USAGE ON SCHEMA demo TO dbgenie_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA demo TO dbgenie_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA demo GRANT SELECT ON TABLES TO dbgenie_reader;
-- PostgreSQL 14 and older let every role create in schema public; 15+ does not.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
