//! Object keys travel byte for byte: through `POST /submit`, the job message, the worker's
//! download, the database row and `GET /jobs/{id}`, on S3 and on the folder backend, against
//! the real Kafka and PostgreSQL of `ops/stack`.
//!
//! Each key gets an image of its own size, so a job that read the object of another key (one
//! decoded or normalised once too often) reports the wrong width and height.

mod common;

use std::path::Path;

use common::Deployment;
use serde_json::Value;
use uuid::Uuid;

/// Key suffixes that S3 clients, URL encoders and Unicode normalisation handle differently.
/// The two accented names are the NFC and the NFD form of the same text, which are different
/// byte strings and so different objects.
fn tricky_keys() -> Vec<String> {
    let prefix = format!("keys-{}", Uuid::now_v7().simple());
    [
        "with space.png",
        "trailing space.png ",
        "plus+sign.png",
        "plus%2Bencoded.png",
        "question?mark.png",
        "hash#mark.png",
        "caf\u{e9}.png",
        "cafe\u{301}.png",
        "Снимок грудной клетки.png",
    ]
    .iter()
    .map(|name| format!("{prefix}/{name}"))
    .collect()
}

/// Encodes a grayscale PNG of the given size.
fn small_png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("PNG header");
    let pixels: Vec<u8> = (0..width * height).map(|i| (i % 251) as u8).collect();
    writer.write_image_data(&pixels).expect("PNG pixels");
    writer.finish().expect("PNG end");
    bytes
}

fn size_of(index: usize) -> (u32, u32) {
    (40 + 8 * index as u32, 30 + 4 * index as u32)
}

/// Submits every key, waits for the jobs and checks that each job names its key exactly and
/// read its own object. Returns the job ids.
async fn submit_and_check(deployment: &Deployment, keys: &[String]) -> Vec<String> {
    let mut jobs = Vec::new();
    for key in keys {
        let (status, body) = deployment.submit(key).await;
        assert_eq!(status, 202, "submit {key:?}: {body}");
        assert_eq!(body["image_key"].as_str(), Some(key.as_str()), "{body}");
        jobs.push(body["job_id"].as_str().expect("job_id").to_owned());
    }
    let db = deployment.stack.db().await;
    for (index, (key, job_id)) in keys.iter().zip(&jobs).enumerate() {
        let job = deployment.wait_for(job_id, &["done", "failed"]).await;
        assert_eq!(job["status"], "done", "job of {key:?}: {job}");
        assert_eq!(
            job["image_key"].as_str(),
            Some(key.as_str()),
            "GET /jobs/{job_id} returns the key byte for byte"
        );
        let (width, height) = size_of(index);
        assert_eq!(
            job["width"], width,
            "job of {key:?} read another object: {job}"
        );
        assert_eq!(
            job["height"], height,
            "job of {key:?} read another object: {job}"
        );
        let (stored,): (String,) =
            sqlx::query_as("SELECT image_key FROM jobs WHERE job_id = $1::uuid")
                .bind(job_id)
                .fetch_one(&db)
                .await
                .expect("job row");
        assert_eq!(stored.as_bytes(), key.as_bytes(), "row of job {job_id}");
    }
    jobs
}

async fn assert_blank_keys_rejected(deployment: &Deployment) {
    for (key, expected) in [("", "empty"), ("   ", "whitespace")] {
        let (status, body) = deployment.submit(key).await;
        assert_eq!(status, 400, "key {key:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_key", "key {key:?}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected) && message.contains("image_key"),
            "the message for {key:?} names the field and the problem: {message:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_round_trip_through_s3() {
    let deployment = Deployment::start("keys_round_trip_through_s3").await;
    let keys = tricky_keys();
    for (index, key) in keys.iter().enumerate() {
        let (width, height) = size_of(index);
        deployment
            .stack
            .put_input(key, small_png(width, height))
            .await;
    }
    let jobs = submit_and_check(&deployment, &keys).await;
    for job_id in &jobs {
        let overlay = deployment
            .stack
            .get_output(&format!("overlays/{job_id}.png"))
            .await;
        assert!(
            overlay.is_some(),
            "overlay of job {job_id} is in the bucket"
        );
    }
    assert_blank_keys_rejected(&deployment).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_round_trip_through_folders() {
    let root = std::env::temp_dir().join(format!("rfo-keys-{}", Uuid::now_v7().simple()));
    let (input, output) = (root.join("input"), root.join("output"));
    let keys = tricky_keys();
    for (index, key) in keys.iter().enumerate() {
        // The folder backend maps a key to a path by splitting it at '/'.
        let path = key
            .split('/')
            .fold(input.clone(), |path, part| path.join(part));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let (width, height) = size_of(index);
        std::fs::write(&path, small_png(width, height)).unwrap();
    }
    let stack = common::Stack::from_env();
    let topic = stack.new_topic(2).await;
    let deployment = Deployment::start_with_env(
        "keys_round_trip_through_folders",
        topic,
        vec![
            ("RFO_INPUT_URL", format!("file://{}", input.display())),
            ("RFO_OUTPUT_URL", format!("file://{}", output.display())),
        ],
    )
    .await;
    let jobs = submit_and_check(&deployment, &keys).await;
    let names: Vec<Value> = std::fs::read_dir(input.join(keys[0].split('/').next().unwrap()))
        .unwrap()
        .map(|e| Value::from(e.unwrap().file_name().into_string().unwrap()))
        .collect();
    assert_eq!(names.len(), keys.len(), "one input file per key: {names:?}");
    for job_id in &jobs {
        let overlay = output.join("overlays").join(format!("{job_id}.png"));
        assert!(
            Path::new(&overlay).is_file(),
            "overlay {} is in the output folder",
            overlay.display()
        );
    }
    assert_blank_keys_rejected(&deployment).await;
    drop(deployment);
    let _ = std::fs::remove_dir_all(&root);
}
