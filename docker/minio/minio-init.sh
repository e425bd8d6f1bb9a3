#!/bin/sh
# One-shot (compose service minio-init): create the buckets and a user that may use only them.
# Services get this user's keys (S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY), never the MinIO root credentials.
# Safe to re-run: existing buckets, policy and user are updated in place.
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${S3_ACCESS_KEY_ID:?}" "${S3_SECRET_ACCESS_KEY:?}" "${BUCKETS:?}"

# mc keeps its config under $HOME; the image's HOME may not be writable.
export MC_CONFIG_DIR=/tmp/.mc
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

resources=""
for bucket in $BUCKETS; do
  mc mb --ignore-existing "local/$bucket"
  resources="$resources\"arn:aws:s3:::$bucket\",\"arn:aws:s3:::$bucket/*\","
done

cat > /tmp/evertune-policy.json <<JSON
{"Version": "2012-10-17",
 "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": [${resources%,}]}]}
JSON
mc admin policy create local evertune-rw /tmp/evertune-policy.json
mc admin user add local "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY"
# Attaching an already attached policy is an error for mc; that case is fine here.
if ! mc admin policy attach local evertune-rw --user "$S3_ACCESS_KEY_ID" >/tmp/attach.log 2>&1; then
  grep -qi "already" /tmp/attach.log || { cat /tmp/attach.log >&2; exit 1; }
fi
echo "minio-init: buckets [$BUCKETS] ready for user $S3_ACCESS_KEY_ID"
