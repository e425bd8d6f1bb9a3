#!/usr/bin/env bash
# First start of the postgres container only (docker-entrypoint-initdb.d): one server, two databases,
# each owned by its own login role. Passwords come from the environment (docker/.env), never from here.
set -euo pipefail
: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD in docker/.env}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in docker/.env}"

# psql variables (:'name') quote the passwords as SQL literals, so any character is safe here.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set airflow_password="$AIRFLOW_DB_PASSWORD" --set mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
-- Neither role may touch the other's database.
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
SQL
