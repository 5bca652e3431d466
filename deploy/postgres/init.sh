#!/bin/sh
# Runs once, when the Postgres container initializes an empty data volume (docker-entrypoint-initdb.d).
# Creates the roles and databases the stack needs; every statement is skipped when its object
# already exists, so running it again is harmless.
#   creditflow          owned by role creditflow: the service's own database (creditflow migrate)
#   temporal            owned by role temporal: Temporal's persistence
#   temporal_visibility owned by role temporal: Temporal's visibility store
# The temporal role keeps CREATEDB: temporalio/auto-setup runs `temporal-sql-tool create` on every
# start, which Postgres refuses without that privilege even when the database already exists.
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v cf_password="${CREDITFLOW_DB_PASSWORD:?}" \
  -v temporal_password="${TEMPORAL_DB_PASSWORD:?}" <<'SQL'
SELECT format('CREATE ROLE creditflow LOGIN PASSWORD %L', :'cf_password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'creditflow') \gexec
SELECT format('CREATE ROLE temporal LOGIN CREATEDB PASSWORD %L', :'temporal_password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'temporal') \gexec
SELECT 'CREATE DATABASE creditflow OWNER creditflow'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'creditflow') \gexec
SELECT 'CREATE DATABASE temporal OWNER temporal'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'temporal') \gexec
SELECT 'CREATE DATABASE temporal_visibility OWNER temporal'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'temporal_visibility') \gexec
SQL
