#!/usr/bin/env bash
# One-shot (compose service airflow-init), before any other Airflow component starts. Idempotent.
set -euo pipefail
: "${AIRFLOW_ADMIN_USER:?}" "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in docker/.env}"

echo "airflow-init: migrating the metadata database"
# With the FAB auth manager configured, this also migrates the FAB user tables.
airflow db migrate

# Pool names, slots and descriptions come from the code (evertune_airflow.defaults.POOLS), so the DAGs and
# the deployment cannot disagree; only the gpu pool is sized here: one slot per GPU worker.
python - >/tmp/pools.tsv <<'PY'
import os

from evertune_airflow.defaults import GPU_POOL, POOLS

for name, (slots, description) in POOLS.items():
    if name == GPU_POOL:
        slots = int(os.environ.get("GPU_COUNT") or slots)
    print(f"{name}\t{slots}\t{description}")
PY
while IFS=$'\t' read -r name slots description; do
  echo "airflow-init: pool $name = $slots"
  airflow pools set "$name" "$slots" "$description" </dev/null >/dev/null
done </tmp/pools.tsv

# `users create` leaves an existing user as it is; reset-password then makes docker/.env the source of truth.
airflow users create --username "$AIRFLOW_ADMIN_USER" --password "$AIRFLOW_ADMIN_PASSWORD" --role Admin \
  --firstname Evertune --lastname Admin --email "${AIRFLOW_ADMIN_EMAIL:-admin@example.invalid}"
airflow users reset-password --username "$AIRFLOW_ADMIN_USER" --password "$AIRFLOW_ADMIN_PASSWORD" >/dev/null

# Shared state: convert the base model once into the volume, before workers race for it.
echo "airflow-init: bootstrapping models into $EVERTUNE_HOME"
evertune check-config
evertune bootstrap
echo "airflow-init: done"
