//! The embedded MQTT broker (rumqttd) for `mizuban demo` and tests: no broker to
//! install. It binds loopback only. Port 1883 is tried first so field
//! simulators and tools find it where they expect; when 1883 is taken (a
//! Mosquitto already running, say) an ephemeral port is used instead. Clients
//! need a user name and password: a local process cannot publish as a device.

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no free loopback port for the embedded broker: {0}")]
    NoPort(std::io::Error),
    #[error("embedded broker did not accept connections on {addr} within {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
    #[error("cannot start broker thread: {0}")]
    Thread(std::io::Error),
}

pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

fn free_port(preferred: Option<u16>) -> Result<u16, BrokerError> {
    if let Some(p) = preferred {
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(BrokerError::NoPort)?;
    let port = l.local_addr().map_err(BrokerError::NoPort)?.port();
    Ok(port)
}

impl EmbeddedBroker {
    /// Starts the broker on `preferred` if free, else on an ephemeral port, and
    /// returns once it accepts TCP connections. Only clients with one of
    /// `credentials` (user, password) may connect; none given: anyone may
    /// (kept for tools pointed at it by hand, never used by demo or tests).
    pub fn start(preferred: Option<u16>, credentials: &[(String, String)]) -> Result<Self, BrokerError> {
        let port = free_port(preferred)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let server = ServerSettings {
            name: "v4-loopback".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                // Larger than the service's own limit so that an oversized
                // payload reaches the collector and is quarantined with a reason.
                max_payload_size: 4 * 1024 * 1024,
                max_inflight_count: 200,
                auth: (!credentials.is_empty()).then(|| credentials.iter().cloned().collect()),
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_000,
                max_outgoing_packet_count: 1000,
                max_segment_size: 16 * 1024 * 1024,
                max_segment_count: 10,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(HashMap::from([("1".to_string(), server)])),
            v5: None,
            ws: None,
            cluster: None,
            console: None,
            bridge: None,
            prometheus: None,
            metrics: None,
        };
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;
        // Ready when it accepts a TCP handshake; bounded wait.
        let waited = Duration::from_secs(10);
        let deadline = std::time::Instant::now() + waited;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(BrokerError::NotReady { addr, waited });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { addr })
    }
}
