#!/usr/bin/env bash
# Create the demo buckets on a local S3 endpoint and upload the demo inputs (prompts and images) to it.
# Works against MinIO (docker compose) or any S3 API; uses the project's own s3fs, no extra client.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENDPOINT="${S3_ENDPOINT:-http://127.0.0.1:9000}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-minioadmin}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-minioadmin}"
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" - "$ENDPOINT" <<'PY'
import sys
from pathlib import Path

import s3fs

fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": sys.argv[1]})
for bucket in ("unidiffuser-inputs", "unidiffuser-outputs", "unidiffuser-models"):
    if not fs.exists(bucket):
        fs.mkdir(bucket)
fs.put("jobs/demo/prompts.txt", "unidiffuser-inputs/prompts.txt")
for image in sorted(Path("jobs/demo/images").iterdir()):
    fs.put(str(image), f"unidiffuser-inputs/images/{image.name}")
print("loaded:", *fs.find("unidiffuser-inputs"), sep="\n  ")
PY
