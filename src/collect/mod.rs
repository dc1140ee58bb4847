//! Collectors: connect to the field (MQTT today; Modbus TCP is issue 3), decode
//! each message with its device profile and hand it to the pipeline. Also the
//! embedded MQTT broker used by `mizuban demo` and the tests.

pub mod broker;
pub mod mqtt;
