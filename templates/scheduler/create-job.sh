#!/usr/bin/env bash
# Creates a Cloud Scheduler job that launches the Flex Template every night through
# the flexTemplates.launch REST method, with a request body from this folder (PROJECT, REGION, BUCKET,
# REPOSITORY, TAG and, for BigQuery, DATASET filled in from the environment):
#   launch-request.json           (default) each launch writes run={run_id} (the launch time) and updates the newest
#                                 complete earlier run (run={latest}), so it embeds only what changed since.
#   launch-request-bigquery.json  each launch reads PROJECT:DATASET.embeddings, embeds only what changed since and
#                                 MERGEs the complete set back into it: the table is always the current set.
#
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket REPOSITORY=dataflow TAG=2026-11-24 \
#   SERVICE_ACCOUNT=scheduler@my-project.iam.gserviceaccount.com bash templates/scheduler/create-job.sh
#
#   BODY=launch-request-bigquery.json DATASET=embeddings JOB=embed-corpus-nightly-bigquery PROJECT=... \
#   bash templates/scheduler/create-job.sh
#
# To change it: gcloud scheduler jobs delete JOB --location REGION, then run this again.
# SERVICE_ACCOUNT needs roles/dataflow.developer and roles/iam.serviceAccountUser on the job's worker account.
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${BUCKET:?}" "${REPOSITORY:?}" "${TAG:?}" "${SERVICE_ACCOUNT:?}"
BODY=${BODY:-launch-request.json}
JOB=${JOB:-embed-corpus-nightly}
SCHEDULE=${SCHEDULE:-0 2 * * *}
template="$(dirname "$0")/${BODY}"
if grep -q DATASET "$template"; then
  : "${DATASET:?${BODY} names a BigQuery dataset: set DATASET}"
fi
body=$(mktemp)
trap 'rm -f "$body"' EXIT
sed -e "s|PROJECT|${PROJECT}|g" -e "s|REGION|${REGION}|g" -e "s|BUCKET|${BUCKET}|g" \
    -e "s|REPOSITORY|${REPOSITORY}|g" -e "s|DATASET|${DATASET:-}|g" -e "s|:TAG\"|:${TAG}\"|g" \
    "$template" > "$body"
gcloud scheduler jobs create http "$JOB" \
    --project="$PROJECT" --location="$REGION" \
    --schedule="$SCHEDULE" --time-zone=UTC \
    --uri="https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch" \
    --http-method=POST \
    --headers=Content-Type=application/json \
    --message-body-from-file="$body" \
    --oauth-service-account-email="$SERVICE_ACCOUNT" \
    --oauth-token-scope=https://www.googleapis.com/auth/cloud-platform
