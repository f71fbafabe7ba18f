//! Records that are not valid job messages go to the dead-letter topic with their key and
//! value unchanged, their offsets are committed, and the worker goes on with the jobs behind
//! them, on the real Kafka of `ops/stack`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Deployment, WAIT};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

/// Record keys and values that no worker can run. `None` is a record without a value.
fn invalid_records() -> Vec<(String, Option<Vec<u8>>)> {
    let job_id = Uuid::now_v7();
    let at = "2026-02-01T05:36:26.470485+00:00";
    let values: Vec<Option<Vec<u8>>> = vec![
        Some(b"{not json".to_vec()),
        Some(
            format!(
                r#"{{"v": 2, "job_id": "{job_id}", "image_key": "a.png", "submitted_at": "{at}"}}"#
            )
            .into_bytes(),
        ),
        Some(format!(r#"{{"v": 1, "job_id": "{job_id}", "submitted_at": "{at}"}}"#).into_bytes()),
        Some(
            format!(r#"{{"v": 1, "job_id": "{job_id}", "image_key": "", "submitted_at": "{at}"}}"#)
                .into_bytes(),
        ),
        Some(
            br#"{"v": 1, "job_id": "not a uuid", "image_key": "a.png", "submitted_at": "x"}"#
                .to_vec(),
        ),
        Some(vec![0xff, 0xfe, 0x00]),
        None,
    ];
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| (format!("invalid-{index}"), value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_records_go_to_dead_letters() {
    let stack = common::Stack::from_env();
    // One partition, so the valid job sits behind every invalid record.
    let topic = stack.new_topic(1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("create a producer");
    let invalid = invalid_records();
    for (key, value) in &invalid {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .unwrap_or_else(|(error, _)| panic!("produce {key}: {error}"));
    }

    let mut deployment =
        Deployment::start_with_env("invalid_records_go_to_dead_letters", topic, vec![]).await;
    let (_, job_id) = deployment.submit_sample("dead-letters").await;
    let job = deployment.wait_for(&job_id, &["done", "failed"]).await;
    assert_eq!(
        job["status"], "done",
        "the job behind the invalid records ran: {job}"
    );

    let letters = read_dead_letters(
        &deployment.stack.brokers,
        &format!("{}.dlq", deployment.topic),
        invalid.len(),
    )
    .await;
    for (key, value) in &invalid {
        let letter = letters.get(key).unwrap_or_else(|| {
            panic!(
                "record {key} is in the dead-letter topic; found {:?}",
                letters.keys()
            )
        });
        assert_eq!(&letter.value, value, "record {key} keeps its value");
        assert_eq!(
            letter.headers.get("rfo-error-code").map(String::as_str),
            Some("invalid_message"),
            "record {key}: {:?}",
            letter.headers
        );
        assert!(letter.headers.contains_key("rfo-failed-at"), "record {key}");
        assert!(letter.headers.contains_key("rfo-attempts"), "record {key}");
    }
    assert_eq!(
        letters.len(),
        invalid.len(),
        "only the invalid records are dead letters"
    );

    // Every record of the job topic, valid or not, is committed.
    let end = invalid.len() as i64 + 1;
    let committed = wait_for_commit(&deployment, end).await;
    assert!(
        committed >= end,
        "the group committed {committed}, not past every record (offset {end})"
    );
    assert!(
        deployment.workers[0].child.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
}

struct Letter {
    value: Option<Vec<u8>>,
    headers: HashMap<String, String>,
}

async fn read_dead_letters(brokers: &str, topic: &str, expected: usize) -> HashMap<String, Letter> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("dead-letter-reader-{}", Uuid::now_v7().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create a consumer");
    consumer
        .subscribe(&[topic])
        .expect("subscribe to the dead-letter topic");
    let mut letters = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while letters.len() < expected && Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = result.expect("read the dead-letter topic");
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let mut headers = HashMap::new();
        if let Some(list) = message.headers() {
            for header in list.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                headers.insert(header.key.to_owned(), value);
            }
        }
        letters.insert(
            key,
            Letter {
                value: message.payload().map(<[u8]>::to_vec),
                headers,
            },
        );
    }
    letters
}

/// Waits until the deployment's group has committed offset `end` on partition 0, and returns
/// the last committed offset seen.
async fn wait_for_commit(deployment: &Deployment, end: i64) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &deployment.stack.brokers)
        .set("group.id", &deployment.group)
        .create()
        .expect("create a consumer of the worker group");
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(&deployment.topic, 0);
    let deadline = Instant::now() + WAIT;
    let mut last = -1;
    while Instant::now() < deadline {
        let committed = consumer
            .committed_offsets(partitions.clone(), Timeout::After(Duration::from_secs(10)))
            .expect("read committed offsets");
        if let Some(Offset::Offset(offset)) = committed
            .find_partition(&deployment.topic, 0)
            .map(|p| p.offset())
        {
            last = offset;
            if offset >= end {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}
