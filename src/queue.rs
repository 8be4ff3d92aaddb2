//! RabbitMQ: the topology (names derived from the namespace) and a supervised
//! publisher that only reports success once the broker has confirmed a persistent,
//! routed message.
//!
//! Topology, all durable:
//! - exchange `{ns}.batches` (direct) → quorum queue `{ns}.batches` (routing key
//!   `batch`), with `x-delivery-limit`, `x-max-length` + `x-overflow: reject-publish`
//!   and dead-lettering to
//! - exchange `{ns}.batches.dlx` (fanout) → quorum queue `{ns}.batches.dead`.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ConnectionStatus, ExchangeKind,
};
use tokio::sync::Mutex;

/// Routing key of batch messages.
const BATCH_ROUTING_KEY: &str = "batch";
/// How long one connection attempt or one confirm may take before the publish is
/// reported as unavailable (keeps the API's 503 well inside 10 s).
const BROKER_TIMEOUT: Duration = Duration::from_secs(4);

/// Names and limits of the queues of one deployment.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub max_length: u32,
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(namespace: &str, max_length: u32, delivery_limit: u32) -> Self {
        Self {
            exchange: format!("{namespace}.batches"),
            queue: format!("{namespace}.batches"),
            dead_letter_exchange: format!("{namespace}.batches.dlx"),
            dead_letter_queue: format!("{namespace}.batches.dead"),
            max_length,
            delivery_limit,
        }
    }

    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(
            &config.namespace,
            config.queue_max_length,
            config.queue_delivery_limit,
        )
    }

    /// Declares every exchange, queue and binding (idempotent).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;

        let mut batch_args = quorum_args();
        batch_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        batch_args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.max_length.into()),
        );
        batch_args.insert("x-overflow".into(), long_string("reject-publish"));
        batch_args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.dead_letter_exchange),
        );
        let queue_options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(self.queue.as_str().into(), queue_options, batch_args)
            .await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                BATCH_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                queue_options,
                quorum_args(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Deletes every queue and exchange (test clean-up).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in [&self.queue, &self.dead_letter_queue] {
            channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await?;
        }
        for exchange in [&self.exchange, &self.dead_letter_exchange] {
            channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await?;
        }
        Ok(())
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Opens a connection (bounded in time).
pub async fn connect(url: &str, name: &str) -> Result<Connection, PublishError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    match tokio::time::timeout(BROKER_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(PublishError::Unavailable(error.to_string())),
        Err(_) => Err(PublishError::Unavailable("connection timed out".into())),
    }
}

/// Why a batch could not be handed to the broker. Every variant means "not
/// accepted": the API answers 503 and records nothing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker refused the message (queue full)")]
    Refused,
    #[error("the broker blocks publishing (memory or disk alarm)")]
    Blocked,
    #[error("message was not routed to any queue")]
    Unroutable,
}

/// A publisher with publisher confirms that reconnects on demand: a broken
/// connection is dropped and the next publish opens a new one (and re-declares
/// the topology).
pub struct Publisher {
    url: String,
    topology: Topology,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    pub fn new(url: String, topology: Topology) -> Self {
        Self {
            url,
            topology,
            channel: Mutex::new(None),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Returns a connected confirm channel (and its connection's status),
    /// opening one if needed.
    async fn channel(&self) -> Result<(Channel, ConnectionStatus), PublishError> {
        let mut guard = self.channel.lock().await;
        if let Some((connection, channel)) = guard.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok((channel.clone(), connection.status().clone()));
        }
        *guard = None;
        let connection = connect(&self.url, "studentsync-api").await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| PublishError::Unavailable(error.to_string()))?;
        let setup = async {
            self.topology.declare(&channel).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
        };
        match tokio::time::timeout(BROKER_TIMEOUT, setup).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(PublishError::Unavailable(error.to_string())),
            Err(_) => {
                return Err(PublishError::Unavailable(
                    "topology set-up timed out".into(),
                ));
            }
        }
        let status = connection.status().clone();
        *guard = Some((connection, channel.clone()));
        Ok((channel, status))
    }

    /// Publishes one persistent batch message and waits for the broker's confirm.
    /// While the broker has told this connection it is blocked (a memory or
    /// disk alarm) publishes fail at once, and the connection is kept so that
    /// its `connection.unblocked` is seen.
    pub async fn publish(&self, payload: &[u8], message_id: &str) -> Result<(), PublishError> {
        let (channel, connection) = self.channel().await?;
        if connection.blocked() {
            return Err(PublishError::Blocked);
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmed = async {
            let confirm = channel
                .basic_publish(
                    self.topology.exchange.as_str().into(),
                    BATCH_ROUTING_KEY.into(),
                    options,
                    payload,
                    properties,
                )
                .await?;
            confirm.await
        };
        let result = tokio::time::timeout(BROKER_TIMEOUT, confirmed).await;
        match result {
            Ok(Ok(confirmation)) => {
                if confirmation.is_nack() {
                    return Err(PublishError::Refused);
                }
                if confirmation.take_message().is_some() {
                    return Err(PublishError::Unroutable);
                }
                Ok(())
            }
            Ok(Err(error)) => {
                self.reset().await;
                Err(PublishError::Unavailable(error.to_string()))
            }
            Err(_) if connection.blocked() => Err(PublishError::Blocked),
            Err(_) => {
                // A dead peer: drop the connection so the next publish starts afresh.
                self.reset().await;
                Err(PublishError::Unavailable(
                    "no confirm from the broker in time".into(),
                ))
            }
        }
    }

    /// Whether the broker answers (for `/readyz`).
    pub async fn is_ready(&self) -> bool {
        self.channel().await.is_ok()
    }

    /// Closes the broker connection (graceful shutdown).
    pub async fn close(&self) {
        self.reset().await;
    }

    async fn reset(&self) {
        if let Some((connection, _)) = self.channel.lock().await.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                connection.close(0, "reconnecting".into()),
            )
            .await;
        }
    }
}
