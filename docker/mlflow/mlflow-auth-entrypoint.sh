#!/bin/sh
# Entrypoint of the compose service mlflow: writes MLflow's auth config (basic_auth.ini) from the environment,
# then runs the service's command (`mlflow server --app-name basic-auth ...`).
#
# The config holds the auth database's URL, so it is written at start-up into a private temporary folder
# instead of being committed; its password comes from docker/.env like every other secret. The admin user and
# its password are NOT in the file: MLflow reads them from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD
# (used once, when the user store is empty). Same content as evertune_airflow.stack_mlflow_auth.auth_config_text.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?}" "${MLFLOW_AUTH_ADMIN_PASSWORD:?}" "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}"

# Users and grants live in the MLflow database itself (their own tables and migration table,
# alembic_version_auth), so the Postgres backup covers them.
database_uri="${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}"
umask 077
config_dir="$(mktemp -d)"
# configparser interpolates "%": double it so a URL-encoded password reaches MLflow unchanged.
cat > "$config_dir/basic_auth.ini" <<INI
[mlflow]
# Signed-in users read everything and change nothing without a grant; anonymous requests get 401.
default_permission = READ
database_uri = $(printf '%s' "$database_uri" | sed 's/%/%%/g')
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A checked password is trusted for 60 s per worker (scrypt on every request costs 0.1-1 s of CPU).
auth_cache_ttl_seconds = 60
INI
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
exec "$@"
