//! Server-side encryption of written objects, against the local stack's SeaweedFS, whose S3
//! gateway `ops/stack` configures with an SSE-S3 key, so it honours `AES256` and reports it in
//! HEAD responses. SeaweedFS has no KMS here, so `aws:kms` is not exercised end to end.

mod common;

use bytes::Bytes;
use common::{Deployment, Stack, sample_pngs};
use rfo_core::config::StorageUrl;
use rfo_core::s3::{Encryption, S3Settings};
use rfo_core::storage::ObjectStore;
use uuid::Uuid;

/// Encryption that the server reports for an object of the output bucket.
async fn reported_encryption(stack: &Stack, key: &str) -> Option<String> {
    let head = stack
        .s3()
        .await
        .head_object()
        .bucket(&stack.output_bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("HEAD {key}: {e:?}"));
    head.server_side_encryption()
        .map(|sse| sse.as_str().to_owned())
}

/// Writes a small object (one PUT) and a 6 MiB one (a multipart upload of two parts) with
/// `encryption`; returns their keys.
async fn write_pair(stack: &Stack, encryption: Encryption) -> [String; 2] {
    let prefix = format!("test-sse-{}/", Uuid::now_v7().simple());
    let url = StorageUrl::parse(
        "RFO_OUTPUT_URL",
        &format!("s3://{}/{prefix}", stack.output_bucket),
    )
    .expect("output URL");
    let settings = S3Settings {
        force_path_style: true,
        multipart_threshold: 5 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        encryption,
        ..S3Settings::default()
    };
    let store = ObjectStore::open(&url, &settings)
        .await
        .expect("open store");
    store
        .put("small.png", Bytes::from_static(b"small"), "image/png")
        .await
        .expect("single PUT");
    store
        .put(
            "large.png",
            Bytes::from(vec![7u8; 6 * 1024 * 1024]),
            "image/png",
        )
        .await
        .expect("multipart upload");
    [format!("{prefix}small.png"), format!("{prefix}large.png")]
}

#[tokio::test]
async fn store_requests_sse_s3() {
    let stack = Stack::from_env();
    for key in write_pair(&stack, Encryption::S3Managed).await {
        assert_eq!(
            reported_encryption(&stack, &key).await.as_deref(),
            Some("AES256"),
            "{key} written with RFO_S3_SSE=AES256"
        );
    }
    // Without the setting the same server stores plain objects, so the check above can fail.
    for key in write_pair(&stack, Encryption::BucketDefault).await {
        assert_eq!(
            reported_encryption(&stack, &key).await,
            None,
            "{key} written with RFO_S3_SSE=none"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_encrypts_overlays() {
    let stack = Stack::from_env();
    let topic = stack.new_topic(1).await;
    let overrides = vec![("RFO_S3_SSE", "AES256".to_owned())];
    let deployment = Deployment::start_with_env("worker_encrypts_overlays", topic, overrides).await;
    let sample = sample_pngs()
        .into_iter()
        .min_by_key(|path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX))
        .expect("a sample");
    let key = format!("test-sse-{}/input.png", Uuid::now_v7().simple());
    deployment
        .stack
        .put_input(&key, std::fs::read(&sample).unwrap())
        .await;
    let (status, body) = deployment.submit(&key).await;
    assert_eq!(status, 202, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let job = deployment.wait_for(&job_id, &["done", "failed"]).await;
    assert_eq!(job["status"], "done", "{job}");
    for key in [
        format!("overlays/{job_id}.png"),
        format!("overlays/{job_id}.preview.png"),
    ] {
        assert_eq!(
            reported_encryption(&deployment.stack, &key)
                .await
                .as_deref(),
            Some("AES256"),
            "{key}"
        );
    }
}
