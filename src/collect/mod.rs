//! Collectors: connect to the field (MQTT subscriptions, Modbus TCP polls), decode
//! each message with its device profile and hand it to the pipeline. Also the
//! embedded MQTT broker used by `mizuban demo` and the tests.

pub mod broker;
pub mod modbus;
pub mod mqtt;
