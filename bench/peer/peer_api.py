"""Reference API: the Flask service that rfo-api replaces, kept to measure rfo-api against it.

It works the way the reference deployment's API did. gunicorn runs the Flask app in sync
worker processes, each with its own boto3 client, psycopg connection and kafka-python
producer. For every POST /submit the worker checks the input object with boto3 head_object,
inserts the queued row with psycopg and commits, then sends one Kafka record and waits for
the broker's acknowledgement before it responds 202. The record is the job message that
rfo-worker reads.

It reads RFO_QUEUE_URL (kafka://HOST:PORT/TOPIC), RFO_INPUT_URL (s3://BUCKET),
RFO_DATABASE_URL, RFO_S3_FORCE_PATH_STYLE and the standard AWS variables. Run it with
`gunicorn --workers N --bind HOST:PORT peer_api:app` from this folder.
"""

import datetime
import json
import os
import sys
import uuid
from urllib.parse import urlparse

import boto3
import psycopg
from botocore.config import Config
from botocore.exceptions import ClientError
from flask import Flask, jsonify, request
from kafka import KafkaProducer

INSERT = """
INSERT INTO jobs (job_id, image_key, input_etag, status, created_at)
VALUES (%s, %s, %s, 'queued', %s)
"""

queue = urlparse(os.environ["RFO_QUEUE_URL"])
if queue.scheme != "kafka":
    sys.exit(f"RFO_QUEUE_URL={os.environ['RFO_QUEUE_URL']!r} is invalid: expected kafka://")
topic = queue.path.lstrip("/")
input_url = urlparse(os.environ["RFO_INPUT_URL"])
if input_url.scheme != "s3" or not input_url.netloc:
    sys.exit(f"RFO_INPUT_URL={os.environ['RFO_INPUT_URL']!r} is invalid: expected s3://BUCKET")
input_bucket = input_url.netloc
path_style = os.environ.get("RFO_S3_FORCE_PATH_STYLE", "false") == "true"

s3 = boto3.client(
    "s3", config=Config(s3={"addressing_style": "path" if path_style else "auto"})
)
database = psycopg.connect(os.environ["RFO_DATABASE_URL"])
producer = KafkaProducer(
    bootstrap_servers=queue.netloc.split(","),
    acks="all",
    linger_ms=2,
)
app = Flask(__name__)


def error(status, code, message):
    return jsonify({"error": {"code": code, "message": message}}), status


@app.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@app.post("/submit")
def submit():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("image_key"), str):
        return error(400, "invalid_request", 'send {"image_key": "..."}')
    image_key = body["image_key"]
    try:
        head = s3.head_object(Bucket=input_bucket, Key=image_key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return error(404, "input_not_found", f"no object {image_key!r}; upload it first")
        return error(503, "storage_unavailable", "the input store could not be reached")
    job_id = uuid.uuid4()
    created_at = datetime.datetime.now(datetime.timezone.utc)
    database.execute(INSERT, (job_id, image_key, head.get("ETag"), created_at))
    database.commit()
    message = {
        "v": 1,
        "job_id": str(job_id),
        "image_key": image_key,
        "submitted_at": created_at.isoformat(),
    }
    future = producer.send(
        topic, key=str(job_id).encode(), value=json.dumps(message).encode()
    )
    future.get(timeout=30)
    return (
        jsonify({"job_id": str(job_id), "image_key": image_key, "queued": True, "topic": topic}),
        202,
    )
