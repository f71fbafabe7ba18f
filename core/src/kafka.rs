//! Kafka client configuration: the project's defaults, then the operator's `RFO_KAFKA_*`
//! settings, which win.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// Builds the configuration of a producer that waits for every in-sync replica and never
/// writes a record twice. `delivery_timeout_ms` bounds how long a send may take in all.
pub fn producer_config(
    brokers: &str,
    delivery_timeout_ms: u64,
    overrides: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", delivery_timeout_ms.to_string())
        .set("socket.connection.setup.timeout.ms", "3000")
        .set("compression.type", "zstd");
    apply(&mut config, overrides);
    config
}

/// Builds the configuration of a group consumer that commits only what the worker asks for.
pub fn consumer_config(
    brokers: &str,
    group: &str,
    overrides: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("socket.connection.setup.timeout.ms", "3000");
    apply(&mut config, overrides);
    config
}

fn apply(config: &mut ClientConfig, overrides: &BTreeMap<String, String>) {
    for (key, value) in overrides {
        config.set(key, value);
    }
}
