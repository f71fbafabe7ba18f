"""Reference worker: the Python worker that rfo replaces, kept to measure rfo against it.

It works the way the reference deployment's worker did. One process takes one job at a
time from a Kafka consumer with auto-commit and reads the image into memory with boto3
get_object. Pillow opens it, converts it to RGB and draws the box, and the PNG is saved
with Pillow's defaults and written with boto3 put_object. One psycopg upsert and commit
per job records the result. The box is drawn at a position seeded by the job id, as rfo's
`random` detector does.

It reads the same environment as rfo-worker: RFO_QUEUE_URL (kafka://HOST:PORT/TOPIC),
RFO_INPUT_URL and RFO_OUTPUT_URL (s3://BUCKET), RFO_DATABASE_URL, RFO_CONSUMER_GROUP,
RFO_S3_FORCE_PATH_STYLE and the standard AWS variables. It runs until SIGTERM.
"""

import io
import json
import logging
import os
import random
import signal
import sys
import time
import uuid
from urllib.parse import urlparse

import boto3
import psycopg
from botocore.config import Config
from kafka import KafkaConsumer
from PIL import Image, ImageDraw

UPSERT = """
INSERT INTO jobs (job_id, image_key, status, overlay_key, boxes, width, height,
                  detector, detector_version, attempts, created_at, processed_at)
VALUES (%s, %s, 'done', %s, %s, %s, %s, 'peer', '1', 1, now(), now())
ON CONFLICT (job_id) DO UPDATE SET
    status = 'done', overlay_key = EXCLUDED.overlay_key, boxes = EXCLUDED.boxes,
    width = EXCLUDED.width, height = EXCLUDED.height, detector = EXCLUDED.detector,
    detector_version = EXCLUDED.detector_version, attempts = jobs.attempts + 1,
    processed_at = EXCLUDED.processed_at
"""


def bucket_of(url, variable):
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        sys.exit(f"{variable}={url!r} is invalid: expected s3://BUCKET")
    return parsed.netloc


def random_box(job_id, width, height):
    """Returns a box inside the image, at least 4 pixels a side, seeded by the job id."""
    rng = random.Random(uuid.UUID(job_id).int)

    def span(side):
        length = rng.randint(min(4, side), side)
        start = rng.randint(0, side - length)
        return start, start + length

    x1, x2 = span(width)
    y1, y2 = span(height)
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": "finding", "score": 0.5}


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    queue = urlparse(os.environ["RFO_QUEUE_URL"])
    if queue.scheme != "kafka":
        sys.exit(f"RFO_QUEUE_URL={os.environ['RFO_QUEUE_URL']!r} is invalid: expected kafka://")
    topic = queue.path.lstrip("/")
    input_bucket = bucket_of(os.environ["RFO_INPUT_URL"], "RFO_INPUT_URL")
    output_bucket = bucket_of(os.environ["RFO_OUTPUT_URL"], "RFO_OUTPUT_URL")
    path_style = os.environ.get("RFO_S3_FORCE_PATH_STYLE", "false") == "true"
    s3 = boto3.client(
        "s3",
        config=Config(s3={"addressing_style": "path" if path_style else "auto"}),
    )
    database = psycopg.connect(os.environ["RFO_DATABASE_URL"])
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=queue.netloc.split(","),
        group_id=os.environ.get("RFO_CONSUMER_GROUP", "rfo-peer"),
        enable_auto_commit=True,
        auto_offset_reset="earliest",
    )
    stopping = False

    def stop(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    logging.info("peer worker started on topic %s", topic)
    while not stopping:
        batch = consumer.poll(timeout_ms=500, max_records=1)
        for records in batch.values():
            for record in records:
                process(record, s3, database, input_bucket, output_bucket)
    consumer.close()
    database.close()
    logging.info("peer worker stopped")


def process(record, s3, database, input_bucket, output_bucket):
    started = time.monotonic()
    job = json.loads(record.value)
    job_id = job["job_id"]
    body = s3.get_object(Bucket=input_bucket, Key=job["image_key"])["Body"].read()
    downloaded = time.monotonic()

    image = Image.open(io.BytesIO(body)).convert("RGB")
    box = random_box(job_id, image.width, image.height)
    thickness = max(2, min(image.width, image.height) // 256)
    ImageDraw.Draw(image).rectangle(
        [box["x1"], box["y1"], box["x2"] - 1, box["y2"] - 1], outline=(255, 0, 0), width=thickness
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    rendered = time.monotonic()

    overlay_key = f"overlays/{job_id}.png"
    s3.put_object(Bucket=output_bucket, Key=overlay_key, Body=out.getvalue())
    uploaded = time.monotonic()

    with database.cursor() as cursor:
        cursor.execute(
            UPSERT,
            (job_id, job["image_key"], overlay_key, json.dumps([box]), image.width, image.height),
        )
    database.commit()
    finished = time.monotonic()
    logging.info(
        "job done job_id=%s download_ms=%d render_ms=%d upload_ms=%d insert_ms=%d total_ms=%d",
        job_id,
        (downloaded - started) * 1000,
        (rendered - downloaded) * 1000,
        (uploaded - rendered) * 1000,
        (finished - uploaded) * 1000,
        (finished - started) * 1000,
    )


if __name__ == "__main__":
    main()
